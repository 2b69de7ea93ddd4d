"""Model presets and training recipes (YAML), shipped as package data."""
