"""Shared fixtures for the image tokenizer tests: one tiny official-layout checkpoint per session."""

import numpy as np
import pytest
from PIL import Image

from unimask.tokenizers.image_tokenizer import SigLIPVQTokenizer
from unimask.tokenizers.tiny_image_tokenizer_checkpoint import write_tiny_official_image_tokenizer


@pytest.fixture(scope="session")
def tiny_checkpoint_root(tmp_path_factory):
    """A checkpoint root holding only ``image_tokenizer/`` (tiny, random, official layout)."""
    root = tmp_path_factory.mktemp("tiny_llada2_uni")
    write_tiny_official_image_tokenizer(root / "image_tokenizer")
    return root


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_checkpoint_root):
    return SigLIPVQTokenizer.from_pretrained(tiny_checkpoint_root)


@pytest.fixture
def random_images():
    """Four random RGB PIL images: two 128 x 128, one 200 x 100 (W x H), one 90 x 150."""
    rng = np.random.default_rng(0)
    sizes = [(128, 128), (128, 128), (200, 100), (90, 150)]
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in sizes]
