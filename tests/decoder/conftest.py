"""Shared fixtures for the decoder tests: one tiny official-layout checkpoint per session."""

import pytest
import torch

from unimask.decoders.semantic_decoder import SemanticImageDecoder
from unimask.decoders.tiny_decoder_checkpoint import write_tiny_official_decoder

TINY_VOCAB = 64


@pytest.fixture(autouse=True)
def single_thread():
    # The tiny models run ~10x faster on one thread than on two contended ones; restored after.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory):
    return write_tiny_official_decoder(tmp_path_factory.mktemp("tiny_llada2_uni"))


@pytest.fixture(scope="session")
def turbo_decoder(tiny_root):
    return SemanticImageDecoder.from_pretrained(tiny_root, variant="turbo")


@pytest.fixture(scope="session")
def normal_decoder(tiny_root):
    return SemanticImageDecoder.from_pretrained(tiny_root, variant="normal")


def seeded(*seeds):
    """One CPU generator per seed."""
    return [torch.Generator().manual_seed(seed) for seed in seeds]


@pytest.fixture
def make_generators():
    return seeded


def random_grids(batch=2, height=2, width=2, seed=0):
    """(batch, height, width) int64 token grids over the tiny vocabulary, drawn from `seed`."""
    return torch.randint(0, TINY_VOCAB, (batch, height, width), generator=torch.Generator().manual_seed(seed))


@pytest.fixture
def make_grids():
    return random_grids
