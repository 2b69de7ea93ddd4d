"""Side-by-side benchmarks printing JSON."""
