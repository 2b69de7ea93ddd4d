"""Fixtures for the data tests: tiny toy shards and image shards."""

from __future__ import annotations

import numpy as np
import pytest

from unimask.data.writer import write_shards
from unimask.training.stage_toy import toy_regression_samples


@pytest.fixture
def toy_shards(tmp_path):
    """4 shards x 12 toy samples (48 in all); returns the list of shard paths."""
    return [str(p) for p in write_shards(toy_regression_samples(48, seed=3), tmp_path / "toy", max_count=12)]


def image_sample(key: str, n_images: int = 1, size: int = 32, seed: int = 0) -> dict:
    """A sample with ``n_images`` random RGB images of ``size`` x ``size``."""
    rng = np.random.default_rng(seed)
    images = [rng.integers(0, 255, (size, size, 3), dtype=np.uint8) for _ in range(n_images)]
    return {"__key__": key, "json": {"task": "edit", "instruction": f"edit {key}"}, "images": images}


@pytest.fixture
def image_shards(tmp_path):
    """2 shards x 3 samples with 1 or 2 images of 32x32; returns shard paths."""
    samples = [image_sample(f"img{i}", n_images=1 + i % 2, seed=i) for i in range(6)]
    return [str(p) for p in write_shards(samples, tmp_path / "img", max_count=3)]
