"""Shapes World: the embedded default domain (scenes, renderer, language, checker)."""
