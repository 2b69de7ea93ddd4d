"""Split a generated sequence back into text spans and image code grids.

A sequence is text interleaved with image blocks
``<|image|> <|reserved_token_h|> <|reserved_token_w|> <boi> h*w codes <|/image|>`` and ends at the
first end-of-sequence token. Well-formed blocks become :class:`ImageGrid`; a block that breaks
the grammar (bad size tokens, missing ``<boi>`` or ``<|/image|>``, a non-code id or a code count
other than ``h * w``) becomes a :class:`MalformedImageBlock` that says why, so it is reported
rather than silently dropped (``strict=True`` raises instead).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from unimask.tokenizers.sequence_builders import ImageGrid
from unimask.tokenizers.token_layout import TokenLayout


@dataclasses.dataclass(frozen=True)
class TextSpan:
    """A run of text ids (``ids``) and, when a tokenizer was given, its decoded ``text``."""

    ids: tuple[int, ...]
    text: str | None = None


@dataclasses.dataclass(frozen=True)
class MalformedImageBlock:
    """An image block that breaks the grammar: its ``ids``, its ``start`` position and the ``reason``."""

    start: int
    ids: tuple[int, ...]
    reason: str


ParsedPart = TextSpan | ImageGrid | MalformedImageBlock


def _as_id_list(ids: Sequence[int] | np.ndarray | torch.Tensor) -> list[int]:
    if isinstance(ids, torch.Tensor):
        if ids.dim() != 1:
            raise ValueError(f"ids must be one sequence (1-D), got shape {tuple(ids.shape)}")
        return [int(i) for i in ids.tolist()]
    array = np.asarray(ids)
    if array.ndim != 1:
        raise ValueError(f"ids must be one sequence (1-D), got shape {array.shape}")
    return [int(i) for i in array.tolist()]


def _parse_image_block(ids: list[int], start: int, layout: TokenLayout) -> tuple[ImageGrid | MalformedImageBlock, int]:
    """Parse the block starting at ``ids[start] == <|image|>``; returns the part and the index after it."""
    end = start + 1
    while end < len(ids) and ids[end] not in (layout.image_end_id, layout.image_start_id):
        end += 1
    closed = end < len(ids) and ids[end] == layout.image_end_id
    block = ids[start : end + 1] if closed else ids[start:end]
    next_index = end + 1 if closed else end

    def malformed(reason: str) -> tuple[MalformedImageBlock, int]:
        return MalformedImageBlock(start, tuple(block), reason), next_index

    if not closed:
        return malformed("image block has no closing <|/image|>")
    if len(block) < 5:
        return malformed(f"image block of {len(block)} tokens is too short for a header and codes")
    h, w = layout.token_to_size(block[1]), layout.token_to_size(block[2])
    if h is None or w is None:
        return malformed(f"ids {block[1]}, {block[2]} after <|image|> are not size tokens")
    if h < 1 or w < 1:
        return malformed(f"grid {h}x{w} is empty")
    if block[3] != layout.boi_id:
        return malformed(f"expected <boi> after the size tokens, got id {block[3]}")
    codes = block[4:-1]
    non_codes = [token for token in codes if not layout.is_image_token(token)]
    if non_codes:
        return malformed(f"image block holds non-code ids {non_codes[:5]}")
    if len(codes) != h * w:
        return malformed(f"grid {h}x{w} needs {h * w} codes, block holds {len(codes)}")
    grid = ImageGrid.from_flat(np.asarray(codes, dtype=np.int64) - layout.image_token_offset, h, w)
    return grid, next_index


def parse_sequence(
    ids: Sequence[int] | np.ndarray | torch.Tensor,
    layout: TokenLayout,
    tokenizer: Any | None = None,
    strict: bool = False,
    stop_at_eos: bool = True,
) -> list[ParsedPart]:
    """Split ``ids: (seq,) int`` (one unpadded sequence) into text spans and image grids.

    Parsing stops at the first end-of-sequence token (excluded). With ``stop_at_eos=False``
    end-of-sequence tokens are dropped as padding instead, which is how a fixed-length span that
    the model closed early (e.g. the thinking span before the image) is read. Text spans are decoded with
    ``tokenizer.decode`` when a tokenizer is given. Ids outside ``[0, vocab_size)`` raise
    ``ValueError``; malformed image blocks become :class:`MalformedImageBlock` parts, or raise
    ``ValueError`` when ``strict``. ``<|/image|>`` outside a block is kept as text.
    """
    sequence = _as_id_list(ids)
    bad = [token for token in sequence if not 0 <= token < layout.vocab_size]
    if bad:
        raise ValueError(f"ids {bad[:5]} are outside the vocabulary [0, {layout.vocab_size})")
    if not stop_at_eos:
        sequence = [token for token in sequence if token != layout.eos_id]
    elif layout.eos_id in sequence:
        sequence = sequence[: sequence.index(layout.eos_id)]

    parts: list[ParsedPart] = []
    text: list[int] = []

    def flush_text() -> None:
        if text:
            decoded = tokenizer.decode(text) if tokenizer is not None else None
            parts.append(TextSpan(tuple(text), decoded))
            text.clear()

    index = 0
    while index < len(sequence):
        token = sequence[index]
        if token != layout.image_start_id:
            text.append(token)
            index += 1
            continue
        flush_text()
        part, index = _parse_image_block(sequence, index, layout)
        if strict and isinstance(part, MalformedImageBlock):
            raise ValueError(f"malformed image block at position {part.start}: {part.reason}")
        parts.append(part)
    flush_text()
    return parts


def image_grids(parts: Sequence[ParsedPart]) -> list[ImageGrid]:
    """The well-formed image grids among parsed parts, in order."""
    return [part for part in parts if isinstance(part, ImageGrid)]


def split_thinking(ids: Sequence[int], layout: TokenLayout) -> tuple[list[int], list[int]]:
    """Split text ids at the thinking markers: returns (thinking ids, the rest).

    The thinking ids are those between the first ``<think>`` and the next ``</think>`` (or the
    end); without a ``<think>`` the thinking part is empty.
    """
    sequence = list(ids)
    if layout.think_start_id is None or layout.think_start_id not in sequence:
        return [], sequence
    start = sequence.index(layout.think_start_id)
    rest_start = len(sequence)
    end = len(sequence)
    if layout.think_end_id is not None and layout.think_end_id in sequence[start + 1 :]:
        end = sequence.index(layout.think_end_id, start + 1)
        rest_start = end + 1
    return sequence[start + 1 : end], sequence[:start] + sequence[rest_start:]
