"""Shared fixtures for the Shapes World tests: seeded scenes and an image degrader."""

import io
import random

import numpy as np
import pytest
from PIL import Image, ImageFilter

from unimask.shapes.scene import sample_scene


@pytest.fixture
def rng():
    return random.Random(1234)


@pytest.fixture(scope="session")
def random_scenes():
    """2000 scenes with held-out pairs allowed, so every object kind is covered."""
    generator = random.Random(2024)
    return [sample_scene(generator, allow_held_out=True) for _ in range(2000)]


def _degrade(image, rng, blur=1.0, drift=15.0, noise=4.0, jpeg_quality=75):
    """What a generated image looks like: gaussian blur, a global colour drift of up to
    ``drift`` per channel, gaussian noise, then JPEG compression."""
    image = image.filter(ImageFilter.GaussianBlur(blur))
    pixels = np.asarray(image).astype(np.float32)
    pixels += np.array([rng.uniform(-drift, drift) for _ in range(3)], dtype=np.float32)
    pixels += np.random.default_rng(rng.randrange(2**32)).normal(0.0, noise, pixels.shape)
    image = Image.fromarray(np.clip(np.round(pixels), 0, 255).astype(np.uint8))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=jpeg_quality)
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")


@pytest.fixture
def degrade():
    return _degrade
