"""parse_sequence: EOS handling, malformed blocks reported (or raised), id range checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from unimask.tokenizers.sequence_builders import ImageGrid
from unimask.tokenizers.sequence_parser import (
    MalformedImageBlock,
    TextSpan,
    image_grids,
    parse_sequence,
    split_thinking,
)


def block(layout, h, w, codes, *, boi=True, close=True):
    ids = [layout.image_start_id, layout.size_token(h), layout.size_token(w)]
    ids += [layout.boi_id] if boi else []
    ids += [layout.image_code_to_token(c) for c in codes]
    ids += [layout.image_end_id] if close else []
    return ids


def test_text_and_images_split_and_eos_stops(shapes_layout, shapes_tokenizer):
    hello = shapes_tokenizer.encode("a red circle", add_special_tokens=False)
    tail = shapes_tokenizer.encode(" on white", add_special_tokens=False)
    ids = hello + block(shapes_layout, 2, 2, [0, 1, 2, 3]) + tail + [shapes_layout.eos_id] + hello
    parts = parse_sequence(torch.tensor(ids), shapes_layout, shapes_tokenizer)
    assert parts[0] == TextSpan(tuple(hello), "a red circle")
    assert parts[1] == ImageGrid(np.array([[0, 1], [2, 3]]))
    assert parts[1].codes.dtype == np.int64 and (parts[1].h, parts[1].w) == (2, 2)
    assert parts[2].text == " on white" and len(parts) == 3


@pytest.mark.parametrize(
    "make, reason",
    [
        (lambda L: block(L, 2, 2, [0, 1, 2]), "needs 4 codes, block holds 3"),
        (lambda L: block(L, 2, 2, [0, 1, 2, 3, 4]), "needs 4 codes, block holds 5"),
        (lambda L: block(L, 2, 2, [0, 1, 2, 3], boi=False), "expected <boi>"),
        (lambda L: block(L, 2, 2, [0, 1, 2, 3], close=False), "no closing"),
        (lambda L: [L.image_start_id, 300, 301, L.boi_id, 512, L.image_end_id], "not size tokens"),
        (lambda L: block(L, 1, 2, [0])[:-2] + [40, L.image_end_id], "non-code ids"),
        (lambda L: block(L, 0, 2, []), "empty"),
    ],
)
def test_malformed_blocks_are_reported_with_a_reason(shapes_layout, make, reason):
    bad = make(shapes_layout)
    after = block(shapes_layout, 1, 1, [7])
    parts = parse_sequence([100] + bad + after, shapes_layout)
    malformed = [part for part in parts if isinstance(part, MalformedImageBlock)]
    assert len(malformed) == 1 and reason in malformed[0].reason
    assert malformed[0].start == 1 and malformed[0].ids[0] == shapes_layout.image_start_id
    assert image_grids(parts) == [ImageGrid(np.array([[7]]))]  # the next good block still parses
    with pytest.raises(ValueError, match="malformed image block at position 1"):
        parse_sequence([100] + bad + after, shapes_layout, strict=True)


def test_out_of_range_ids_raise(shapes_layout):
    with pytest.raises(ValueError, match=r"outside the vocabulary \[0, 768\)"):
        parse_sequence([1, 768], shapes_layout)
    with pytest.raises(ValueError, match="1-D"):
        parse_sequence(torch.zeros(2, 3, dtype=torch.long), shapes_layout)


def test_split_thinking(shapes_layout):
    layout = shapes_layout
    ids = [20, layout.think_start_id, 30, 31, layout.think_end_id, 40]
    assert split_thinking(ids, layout) == ([30, 31], [20, 40])
    assert split_thinking([20, 40], layout) == ([], [20, 40])
    assert split_thinking([layout.think_start_id, 30], layout) == ([30], [])
