"""Fixtures for the evaluation, demo and default-model tests: a tiny random pipeline saved in the default
model's layout (our ``save_pretrained`` layout with the turbo and the normal decoder), and a switch that
points `unimask.default_model` at it."""

from __future__ import annotations

from pathlib import Path

import pytest

import unimask.default_model as default_model
from unimask.pipelines import UniPipeline
from unimask.pipelines.tiny_uni_checkpoint import write_tiny_official_checkpoint


@pytest.fixture(scope="session")
def tiny_default_root(tmp_path_factory) -> Path:
    """A tiny random pipeline saved like the shipped default model: ``model_index.json``, ``backbone/``,
    ``text_tokenizer/``, ``image_tokenizer/``, ``decoder/`` (turbo), ``decoder-normal/``,
    ``token_layout.json``, ``generation_defaults.json``."""
    official = write_tiny_official_checkpoint(tmp_path_factory.mktemp("tiny_official"))
    pipe = UniPipeline.from_pretrained(official)
    pipe.decoder_for("normal")
    return pipe.save_pretrained(tmp_path_factory.mktemp("unimask") / "default_model")


@pytest.fixture(scope="session")
def tiny_pipe(tiny_default_root) -> UniPipeline:
    """The tiny pipeline loaded from `tiny_default_root` (progress bars off); tests must not modify it."""
    pipe = UniPipeline.from_pretrained(tiny_default_root)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture()
def tiny_as_default(monkeypatch, tiny_default_root) -> Path:
    """Make the tiny pipeline the default model for one test; returns its directory."""
    monkeypatch.setattr(default_model, "DEFAULT_MODEL_DIR", tiny_default_root)
    return tiny_default_root


@pytest.fixture()
def no_default_model(monkeypatch, tmp_path) -> Path:
    """Point the default model at an empty directory for one test (as in a checkout before training)."""
    missing = tmp_path / "default_model"
    monkeypatch.setattr(default_model, "DEFAULT_MODEL_DIR", missing)
    return missing
