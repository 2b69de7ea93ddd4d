"""Semantic-token diffusion image decoder."""
