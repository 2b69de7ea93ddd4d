"""TokenLayout: documented official ids, the compact layout, persistence, conversions, vocab masks."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from unimask.tokenizers.sequence_builders import SequenceBuilder
from unimask.tokenizers.token_layout import (
    SHAPES_SPECIAL_TOKENS,
    TOKEN_LAYOUT_FILE,
    TokenKind,
    TokenLayout,
)


def test_token_kind_codes_are_fixed():
    assert [int(kind) for kind in TokenKind] == [0, 1, 2, 3]
    assert [kind.name for kind in TokenKind] == ["PROMPT", "TEXT", "IMAGE", "SIZE"]


def test_official_layout_has_the_documented_ids():
    layout = TokenLayout.official()
    assert layout.vocab_size == 173568
    assert layout.image_token_offset == layout.text_vocab_size == 157184
    assert layout.codebook_size == 16384
    assert layout.image_token_offset + layout.codebook_size == layout.vocab_size
    assert (layout.eos_id, layout.pad_id, layout.mask_id) == (156892, 156892, 156895)
    assert (layout.image_start_id, layout.image_end_id, layout.boi_id) == (156901, 156902, 156904)
    assert layout.image_code_to_token(0) == 157184
    assert layout.image_code_to_token(16383) == 173567


def test_official_layout_without_tokenizer_refuses_what_it_cannot_know(shapes_tokenizer):
    layout = TokenLayout.official()
    with pytest.raises(ValueError, match="no size tokens"):
        layout.size_token(16)
    with pytest.raises(ValueError, match="role"):
        SequenceBuilder(layout, shapes_tokenizer)


def test_official_layout_resolves_undocumented_ids_from_the_tokenizer(official_tokenizer, official_ids):
    layout = TokenLayout.official(official_tokenizer)
    assert layout.mask_id == 156895 and layout.boi_id == 156904
    assert layout.size_token(16) == official_ids["<|reserved_token_16|>"]
    assert layout.max_grid_side == 100  # the stand-in stops at <|reserved_token_100|>
    assert layout.role_human_ids == (official_ids["<role>HUMAN</role>"],)
    assert layout.uncondition_ids == (official_ids["<uncondition>"],)
    assert layout.think_start_id == official_ids["<think>"]


def test_official_layout_rejects_a_tokenizer_with_other_image_marker_ids(make_official_tokenizer):
    with pytest.raises(ValueError, match="<boi>"):
        TokenLayout.official(make_official_tokenizer({"<boi>": 156903}))


def test_shapes_layout_matches_the_trained_tokenizer(shapes_tokenizer, shapes_layout):
    assert TokenLayout.from_tokenizer(shapes_tokenizer, 512, 256, 768, max_grid_side=64) == shapes_layout
    assert shapes_layout.image_token_offset == 512 and shapes_layout.vocab_size == 768
    for index, token in enumerate(SHAPES_SPECIAL_TOKENS):
        assert shapes_tokenizer.convert_tokens_to_ids(token) == index
    assert shapes_layout.size_token(8) == shapes_tokenizer.convert_tokens_to_ids("<|reserved_token_8|>")


def test_from_tokenizer_requires_the_image_markers(make_official_tokenizer):
    broken = make_official_tokenizer({"<|image|>": None})
    with pytest.raises(ValueError, match=r"<\|image\|>"):
        TokenLayout.from_tokenizer(broken, 157184, 16384, 173568)


def test_dict_and_json_round_trip(tmp_path, shapes_layout, official_tokenizer):
    for layout in (shapes_layout, TokenLayout.official(), TokenLayout.official(official_tokenizer)):
        assert TokenLayout.from_dict(json.loads(json.dumps(layout.to_dict()))) == layout
    path = shapes_layout.save_pretrained(tmp_path)
    assert path.endswith(TOKEN_LAYOUT_FILE)
    assert TokenLayout.from_pretrained(tmp_path) == shapes_layout


def test_from_dict_rejects_unknown_and_missing_keys(shapes_layout):
    data = shapes_layout.to_dict()
    with pytest.raises(ValueError, match="unknown keys"):
        TokenLayout.from_dict({**data, "bogus": 1})
    del data["boi_id"]
    with pytest.raises(ValueError, match="incomplete"):
        TokenLayout.from_dict(data)


def test_inconsistent_layouts_are_rejected(shapes_layout):
    data = shapes_layout.to_dict()
    with pytest.raises(ValueError, match="overlaps"):
        TokenLayout.from_dict({**data, "image_token_offset": 100})
    with pytest.raises(ValueError, match="vocab_size"):
        TokenLayout.from_dict({**data, "vocab_size": 700})
    with pytest.raises(ValueError, match="mask_id"):
        TokenLayout.from_dict({**data, "mask_id": 600})


def test_image_code_conversions_round_trip_and_check_range(shapes_layout):
    codes = np.arange(256).reshape(16, 16)
    tokens = shapes_layout.image_code_to_token(codes)
    assert tokens.min() == 512 and tokens.max() == 767
    np.testing.assert_array_equal(shapes_layout.token_to_image_code(tokens), codes)
    as_tensor = shapes_layout.image_code_to_token(torch.tensor([0, 255]))
    assert as_tensor.tolist() == [512, 767]
    with pytest.raises(ValueError, match="codebook"):
        shapes_layout.image_code_to_token(256)
    with pytest.raises(ValueError, match="codebook"):
        shapes_layout.image_code_to_token(np.array([3, -1]))
    with pytest.raises(ValueError, match="not an image code"):
        shapes_layout.token_to_image_code(511)
    with pytest.raises(ValueError, match="outside the image code"):
        shapes_layout.token_to_image_code(torch.tensor([512, 768]))


def test_size_tokens_round_trip_and_range(shapes_layout):
    for n in range(65):
        assert shapes_layout.token_to_size(shapes_layout.size_token(n)) == n
    assert shapes_layout.token_to_size(shapes_layout.boi_id) is None
    with pytest.raises(ValueError, match=r"\[0, 64\]"):
        shapes_layout.size_token(65)


def test_vocab_masks_select_each_kind(shapes_layout):
    text = shapes_layout.vocab_mask(TokenKind.TEXT)
    image = shapes_layout.vocab_mask(TokenKind.IMAGE)
    size = shapes_layout.vocab_mask(TokenKind.SIZE)
    assert text.shape == image.shape == size.shape == (768,)
    assert text.dtype == torch.bool
    assert not text[shapes_layout.mask_id] and not text[shapes_layout.uncondition_ids[0]]
    assert text[shapes_layout.image_start_id] and text[shapes_layout.eos_id] and not text[512:].any()
    assert image[512:].all() and not image[:512].any()
    assert size.sum() == 65 and size[shapes_layout.size_token(8)]
    assert not shapes_layout.vocab_mask(TokenKind.PROMPT).any()
    official = TokenLayout.official()
    assert official.vocab_mask(2).sum() == 16384
    with pytest.raises(ValueError, match="size tokens"):
        official.vocab_mask(TokenKind.SIZE)
