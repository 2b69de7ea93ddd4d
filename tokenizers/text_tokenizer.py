"""The text side of the joint vocabulary: load a checkpoint's tokenizer or train a small one.

Both return a transformers ``PreTrainedTokenizerFast`` stored in the standard ``tokenizer.json``
form, so one loading path (no remote code) serves the official checkpoint and our own. The
trained tokenizer is a byte-level BPE (exact text round trip, no unknown characters) whose
special tokens take the first ids in the order given.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from unimask.tokenizers.token_layout import EOS_TOKEN, MASK_TOKEN, SHAPES_SPECIAL_TOKENS

TOKENIZER_FILE = "tokenizer.json"
_BYTE_ALPHABET_SIZE = 256


def shapes_special_tokens() -> list[str]:
    """Special token strings of the compact Shapes layout, in id order (ids 0, 1, ...).

    End-of-sequence, mask, the three role tags, ``<|image|>``, ``<|/image|>``, ``<boi>``, the
    thinking markers, ``<uncondition>`` and the size tokens ``<|reserved_token_0|>`` ..
    ``<|reserved_token_64|>`` -- the same strings as the official tokenizer.
    """
    return list(SHAPES_SPECIAL_TOKENS)


def _wrap(tokenizer: Tokenizer, special_tokens: list[str]) -> PreTrainedTokenizerFast:
    named = {}
    if EOS_TOKEN in special_tokens:
        named.update(eos_token=EOS_TOKEN, pad_token=EOS_TOKEN)
    if MASK_TOKEN in special_tokens:
        named["mask_token"] = MASK_TOKEN
    others = [token for token in special_tokens if token not in (EOS_TOKEN, MASK_TOKEN)]
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        additional_special_tokens=others,
        clean_up_tokenization_spaces=False,
        **named,
    )


def train_text_tokenizer(
    texts: Iterable[str], special_tokens: list[str], vocab_size: int
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on ``texts``.

    ``special_tokens`` get ids ``0 .. len(special_tokens) - 1`` in the given order and are never
    split; the vocabulary holds at most ``vocab_size`` entries (specials, the 256 byte symbols,
    then merges). Save with ``save_pretrained(directory)`` (writes ``tokenizer.json``) and load
    with :func:`load_text_tokenizer`.
    """
    special_tokens = list(special_tokens)
    if len(set(special_tokens)) != len(special_tokens):
        raise ValueError("special_tokens must be distinct")
    minimum = len(special_tokens) + _BYTE_ALPHABET_SIZE
    if vocab_size < minimum:
        raise ValueError(
            f"vocab_size={vocab_size} is too small: {len(special_tokens)} special tokens + "
            f"{_BYTE_ALPHABET_SIZE} byte symbols need at least {minimum}"
        )
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    for expected_id, token in enumerate(special_tokens):
        if tokenizer.token_to_id(token) != expected_id:
            raise RuntimeError(f"special token {token!r} did not land at id {expected_id}")
    return _wrap(tokenizer, special_tokens)


def load_text_tokenizer(path: str | os.PathLike) -> PreTrainedTokenizerFast:
    """Load the tokenizer saved in directory ``path`` (its ``tokenizer.json`` and, when present,
    ``tokenizer_config.json``) without running remote code."""
    if not os.path.isfile(os.path.join(path, TOKENIZER_FILE)):
        raise ValueError(f"path={os.fspath(path)!r} has no {TOKENIZER_FILE}")
    try:
        return PreTrainedTokenizerFast.from_pretrained(os.fspath(path), clean_up_tokenization_spaces=False)
    except Exception as error:  # the Rust tokenizer raises plain Exception for a malformed file
        raise ValueError(
            f"{os.path.join(os.fspath(path), TOKENIZER_FILE)} (or tokenizer_config.json) is not a valid tokenizer "
            f"file: {type(error).__name__}: {error}"
        ) from error
