"""Fixtures for the trainer tests: toy shards and a recipe-file writer."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml

from unimask.data.writer import write_shards
from unimask.training.stage_toy import toy_regression_samples

BASE_RECIPE = {
    "stage": "toy",
    "model": {"preset": "tiny"},
    "data": {"shards": [], "seed": 1, "split": "sample", "resampled": False, "shuffle_buffer": 8},
    "steps": 8,
    "micro_batch_size": 4,
    "optim": {"lr": 0.01, "grad_clip": 1.0},
    "schedule": {"kind": "cosine", "warmup_steps": 2},
    "checkpoint": {"every": 4, "keep_last": 10},
    "logging": {"progress_bar": False},
    "export": False,
}


def _merge(base: dict, overrides: dict) -> dict:
    merged = copy.deepcopy(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


@pytest.fixture
def toy_shard_dir(tmp_path) -> Path:
    """4 shards x 16 toy samples."""
    folder = tmp_path / "shards"
    write_shards(toy_regression_samples(64, seed=0), folder, max_count=16)
    return folder


@pytest.fixture
def make_recipe(tmp_path, toy_shard_dir):
    """``make_recipe(name, **overrides) -> path`` of a YAML recipe (toy stage, out_dir tmp/name)."""

    def make(name: str = "run", **overrides) -> Path:
        recipe = _merge(BASE_RECIPE, {"out_dir": str(tmp_path / name), "data": {"shards": [str(toy_shard_dir)]}})
        recipe = _merge(recipe, overrides)
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(recipe))
        return path

    return make


def _read_losses(out_dir: Path) -> dict[int, float]:
    losses = {}
    for line in (Path(out_dir) / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        losses[record["step"]] = record["loss"]
    return losses


@pytest.fixture
def read_losses():
    """``read_losses(out_dir) -> {step: loss}`` from a run's metrics.jsonl (the last record wins)."""
    return _read_losses
