"""Build the Shapes World text tokenizer: a byte-level BPE trained on the world's whole grammar.

The special tokens of the compact layout (:data:`unimask.tokenizers.token_layout.SHAPES_SPECIAL_TOKENS`)
take ids ``0 ..``; the rest of the vocabulary is bytes and merges learned from
:func:`unimask.shapes.language.training_corpus`, which never names a held-out pair.
"""

from __future__ import annotations

import os
from pathlib import Path

from transformers import PreTrainedTokenizerFast

from unimask.shapes.language import training_corpus
from unimask.tokenizers.text_tokenizer import TOKENIZER_FILE, shapes_special_tokens, train_text_tokenizer

__all__ = ["SHAPES_TEXT_VOCAB_SIZE", "build_shapes_text_tokenizer", "save_shapes_text_tokenizer"]

# Specials (76) + bytes (256) + merges: 512 leaves ~180 merges, enough for every grammar word.
SHAPES_TEXT_VOCAB_SIZE = 512


def build_shapes_text_tokenizer(
    vocab_size: int = SHAPES_TEXT_VOCAB_SIZE, num_sampled: int = 2000, seed: int = 0
) -> PreTrainedTokenizerFast:
    """Train the tokenizer on ``training_corpus(num_sampled, seed)``; deterministic for fixed arguments.

    Returns a ``PreTrainedTokenizerFast`` with at most ``vocab_size`` ids (special tokens first).
    Raises ``ValueError`` when ``vocab_size`` cannot hold the specials and the 256 byte symbols.
    """
    return train_text_tokenizer(training_corpus(num_sampled, seed), shapes_special_tokens(), vocab_size)


def save_shapes_text_tokenizer(directory: str | os.PathLike, vocab_size: int = SHAPES_TEXT_VOCAB_SIZE) -> Path:
    """Build the tokenizer and ``save_pretrained`` it into ``directory``; returns its ``tokenizer.json`` path."""
    tokenizer = build_shapes_text_tokenizer(vocab_size)
    tokenizer.save_pretrained(os.fspath(directory))
    return Path(directory) / TOKENIZER_FILE
