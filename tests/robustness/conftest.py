"""Shared fixtures for the robustness matrix: tiny checkpoints, a tiny text tokenizer and a
pickle whose unpickling would leave a marker file (proof that nothing was unpickled)."""

from __future__ import annotations

import os
import pickle
import random
from pathlib import Path

import pytest
import torch

SMALL_WORDS = "a red green blue circle square triangle at the top left right what color is it make".split()


class _MarkerOnUnpickle:
    """Unpickling this object runs ``os.system("touch <marker>")``: a file appears iff it was unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


@pytest.fixture
def evil_pickle(tmp_path):
    """``evil_pickle() -> (payload bytes, marker path)``; the marker must never exist after a load."""

    def make(name: str = "UNPICKLED") -> tuple[bytes, Path]:
        marker = tmp_path / name
        return pickle.dumps({"weight": _MarkerOnUnpickle(marker)}), marker

    return make


@pytest.fixture(autouse=True)
def single_thread():
    # Tiny models run faster on one thread than on two contended ones; restored after.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def image_tokenizer_dir(tmp_path_factory) -> Path:
    """A tiny official-layout ``image_tokenizer/`` folder (config, preprocessor, safetensors, sigvq .pt)."""
    from unimask.tokenizers.tiny_image_tokenizer_checkpoint import write_tiny_official_image_tokenizer

    folder = tmp_path_factory.mktemp("tok") / "image_tokenizer"
    write_tiny_official_image_tokenizer(folder)
    return folder


@pytest.fixture(scope="session")
def decoder_root(tmp_path_factory) -> Path:
    """A tiny official-layout decoder checkpoint root (decoder/, decoder-turbo/, vae/, image_tokenizer/)."""
    from unimask.decoders.tiny_decoder_checkpoint import write_tiny_official_decoder

    return Path(write_tiny_official_decoder(tmp_path_factory.mktemp("dec")))


@pytest.fixture(scope="session")
def turbo_decoder(decoder_root):
    from unimask.decoders.semantic_decoder import SemanticImageDecoder

    return SemanticImageDecoder.from_pretrained(decoder_root, variant="turbo")


@pytest.fixture(scope="session")
def backbone_dir(tmp_path_factory) -> Path:
    """A tiny official-layout backbone checkpoint folder (hidden 32, 2 layers, vocab 512)."""
    from unimask.unimodal.tiny_checkpoint import write_tiny_official_backbone

    return write_tiny_official_backbone(tmp_path_factory.mktemp("backbone") / "llada")


@pytest.fixture(scope="session")
def text_tokenizer():
    """A byte-level BPE tokenizer (400 entries) with the Shapes special tokens."""
    from unimask.tokenizers.text_tokenizer import shapes_special_tokens, train_text_tokenizer

    rng = random.Random(0)
    corpus = [" ".join(rng.choice(SMALL_WORDS) for _ in range(8)) for _ in range(60)]
    return train_text_tokenizer(corpus, shapes_special_tokens(), vocab_size=400)


@pytest.fixture(scope="session")
def layout():
    from unimask.tokenizers.token_layout import TokenLayout

    return TokenLayout.shapes(text_vocab_size=400, codebook_size=256)


@pytest.fixture(scope="session")
def builder(layout, text_tokenizer):
    from unimask.tokenizers.sequence_builders import SequenceBuilder

    return SequenceBuilder(layout, text_tokenizer, max_length=512)


def copy_tree(source: Path, destination: Path) -> Path:
    """A writable copy of a checkpoint folder."""
    import shutil

    shutil.copytree(source, destination)
    return destination


@pytest.fixture
def checkpoint_copy(tmp_path):
    """``checkpoint_copy(folder) -> a fresh writable copy under tmp_path``."""
    counter = iter(range(1000))

    def make(folder: Path) -> Path:
        return copy_tree(folder, tmp_path / f"copy{next(counter)}")

    return make
