"""Diffusers-style pipelines composing tokenizer, backbone and decoder."""
