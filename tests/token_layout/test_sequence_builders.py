"""Sequence builders: exact templates, round trips for every task, CFG inputs and input checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from unimask.tokenizers.sequence_builders import (
    ChatMessage,
    ImageGrid,
    ImageSlot,
    SequenceBuilder,
    collate,
    fill_masks,
)
from unimask.tokenizers.sequence_parser import TextSpan, image_grids, parse_sequence, split_thinking
from unimask.tokenizers.token_layout import TokenKind, TokenLayout

RNG = np.random.default_rng(0)


def random_grid(h: int, w: int, codebook: int = 256) -> np.ndarray:
    return RNG.integers(0, codebook, size=(h, w))


def fill_plausibly(spec, layout, tokenizer, text: str = "a red circle", images=()) -> list[int]:
    """Fill TEXT masks with ``text`` (then EOS) and IMAGE slots with the given grids' codes."""
    values: list[int] = []
    text_ids = tokenizer.encode(text, add_special_tokens=False)
    slot_codes = iter(images)
    slot_starts = {slot.start: slot for slot in spec.image_slots}
    position_values: dict[int, int] = {}
    for slot in spec.image_slots:
        codes = next(slot_codes).reshape(-1)
        for offset, code in enumerate(codes):
            position_values[slot.start + offset] = layout.image_code_to_token(int(code))
    assert slot_starts.keys() <= set(spec.generated_positions())
    text_iter = iter(text_ids)
    for position in spec.generated_positions():
        if position in position_values:
            values.append(position_values[position])
        else:
            values.append(next(text_iter, layout.eos_id))
    return fill_masks(spec, values)


def kinds_of(spec, start, stop):
    return set(spec.token_kinds[start:stop])


def test_text_to_image_template_is_exactly_the_official_string(official_tokenizer):
    layout = TokenLayout.official(official_tokenizer)
    builder = SequenceBuilder(layout, official_tokenizer, max_length=8192)
    spec = builder.text_to_image("a red circle", h=16, w=16)
    expected = official_tokenizer.encode(
        "<role>SYSTEM</role> You are a text-to-image generation assistant. <role>HUMAN</role>a red circle"
        "<role>ASSISTANT</role><|image|><|reserved_token_16|><|reserved_token_16|><boi>",
        add_special_tokens=False,
    )
    slot = spec.image_slots[0]
    assert spec.input_ids[: slot.start] == expected
    assert spec.input_ids[slot.start : slot.end] == [156895] * 256
    assert spec.input_ids[slot.end :] == [156902]
    uncond_expected = official_tokenizer.encode(
        "<role>SYSTEM</role> You are a text-to-image generation assistant. <role>HUMAN</role><uncondition>"
        "<role>ASSISTANT</role><|image|><|reserved_token_16|><|reserved_token_16|><boi>",
        add_special_tokens=False,
    )
    assert spec.uncond.input_ids[: spec.uncond.image_slots[0].start] == uncond_expected
    assert spec.uncond.image_slots[0].h == 16 and spec.uncond.uncond is None


def test_chat_template_matches_whole_string_encoding(builder, shapes_tokenizer):
    grid = random_grid(2, 3)
    spec = builder.chat(
        [ChatMessage("user", "what color is the square?", (grid,)), ChatMessage("assistant", "red"),
         ChatMessage("user", "and the circle?")],
        answer_length=5,
    )
    layout = builder.layout
    image_ids = [layout.image_code_to_token(int(c)) for c in grid.reshape(-1)]
    head = shapes_tokenizer.encode(
        "<role>SYSTEM</role> detailed thinking off <role>HUMAN</role><|image|><|reserved_token_2|><|reserved_token_3|><boi>",
        add_special_tokens=False,
    )
    tail = shapes_tokenizer.encode(
        "<|/image|>what color is the square?<role>ASSISTANT</role>red<role>HUMAN</role>and the circle?<role>ASSISTANT</role>",
        add_special_tokens=False,
    )
    assert spec.input_ids == head + image_ids + tail + [layout.mask_id] * 5
    assert spec.token_kinds == [TokenKind.PROMPT] * (len(spec) - 5) + [TokenKind.TEXT] * 5
    assert spec.image_slots == [] and spec.uncond is None


def test_understanding_round_trip(builder, shapes_tokenizer):
    layout = builder.layout
    grids = [random_grid(8, 8), random_grid(4, 6)]
    spec = builder.understanding(grids, "how many objects are there?", answer_length=8)
    filled = fill_plausibly(spec, layout, shapes_tokenizer, text="two")
    parts = parse_sequence(filled, layout, shapes_tokenizer)
    assert [type(part) for part in parts] == [TextSpan, ImageGrid, ImageGrid, TextSpan]
    assert image_grids(parts) == [ImageGrid(g) for g in grids]
    assert parts[-1].text.endswith("how many objects are there?<role>ASSISTANT</role>two")


def test_text_to_image_round_trip_with_uncond(builder, shapes_tokenizer):
    layout = builder.layout
    target = random_grid(8, 8)
    spec = builder.text_to_image("a large red circle at the top left", h=8, w=8)
    assert spec.image_slots == [ImageSlot(spec.image_slots[0].start, 8, 8)]
    slot = spec.image_slots[0]
    assert kinds_of(spec, slot.start, slot.end) == {TokenKind.IMAGE}
    assert spec.input_ids[slot.start - 4 : slot.start] == [
        layout.image_start_id, layout.size_token(8), layout.size_token(8), layout.boi_id]
    for sequence in (spec, spec.uncond):
        parts = parse_sequence(fill_plausibly(sequence, layout, shapes_tokenizer, images=[target]), layout)
        assert image_grids(parts) == [ImageGrid(target)]
    assert layout.uncondition_ids[0] in spec.uncond.input_ids
    assert layout.uncondition_ids[0] not in spec.input_ids
    assert builder.text_to_image("a red circle", h=2, w=2, cfg=False).uncond is None


def test_thinking_text_to_image_lays_out_thinking_then_image(builder, shapes_tokenizer):
    layout = builder.layout
    spec = builder.thinking_text_to_image("a red circle", h=4, w=5, thinking_length=12)
    start = spec.input_ids.index(layout.think_start_id)
    end = spec.input_ids.index(layout.think_end_id)
    assert end - start - 1 == 12
    assert kinds_of(spec, start + 1, end) == {TokenKind.TEXT}
    slot = spec.image_slots[0]
    assert slot.start == end + 5 and (slot.h, slot.w) == (4, 5)
    assert layout.think_start_id not in spec.uncond.input_ids
    assert spec.uncond.image_slots[0].h == 4
    target = random_grid(4, 5)
    filled = fill_plausibly(spec, layout, shapes_tokenizer, text="red circle top", images=[target])
    # the thinking closed early: the rest of its span is EOS padding, so read past it
    assert image_grids(parse_sequence(filled, layout)) == []
    parts = parse_sequence(filled, layout, shapes_tokenizer, stop_at_eos=False)
    assert image_grids(parts) == [ImageGrid(target)]
    thinking, _ = split_thinking(parts[0].ids, layout)
    assert shapes_tokenizer.decode(thinking) == "red circle top"


@pytest.mark.parametrize("num_sources", [1, 2])
def test_edit_round_trip_and_three_way_cfg(builder, shapes_tokenizer, num_sources):
    layout = builder.layout
    sources = [random_grid(8, 8) for _ in range(num_sources)]
    target = random_grid(8, 8)
    spec = builder.edit(sources, "make the circle green", h=8, w=8)
    filled = fill_plausibly(spec, layout, shapes_tokenizer, images=[target])
    assert image_grids(parse_sequence(filled, layout)) == [ImageGrid(g) for g in sources + [target]]
    uncond_parts = parse_sequence(fill_plausibly(spec.uncond, layout, shapes_tokenizer, images=[target]), layout, shapes_tokenizer)
    assert image_grids(uncond_parts) == [ImageGrid(g) for g in sources + [target]]
    assert "make the circle green" not in uncond_parts[-2].text and "<uncondition>" in uncond_parts[-2].text
    no_image_parts = parse_sequence(fill_plausibly(spec.uncond_image, layout, shapes_tokenizer, images=[target]), layout, shapes_tokenizer)
    assert image_grids(no_image_parts) == [ImageGrid(target)]
    assert "make the circle green" in no_image_parts[0].text


def test_interleaved_text_then_image_continuation(builder, shapes_tokenizer):
    layout = builder.layout
    spec = builder.interleaved("draw a red circle then move it", text_length=20)
    assert spec.token_kinds[-20:] == [TokenKind.TEXT] * 20
    # the model writes a sentence and opens a 4x4 image
    sentence = shapes_tokenizer.encode("a red circle", add_special_tokens=False)
    header = [layout.image_start_id, layout.size_token(4), layout.size_token(4), layout.boi_id]
    prefix = spec.input_ids[:-20] + sentence + header
    first = builder.continue_after_image_open(prefix, text_length=6)
    slot = first.image_slots[0]
    assert (slot.start, slot.h, slot.w) == (len(prefix), 4, 4)
    assert first.input_ids[slot.end] == layout.image_end_id
    assert first.token_kinds[-6:] == [TokenKind.TEXT] * 6
    assert first.uncond.input_ids[-(16 + 1 + 6 + 4) : -(16 + 1 + 6)] == header
    assert first.uncond_image is None
    grid_one = random_grid(4, 4)
    filled = fill_plausibly(first, layout, shapes_tokenizer, text="now move it", images=[grid_one])
    # second image: opened after more text
    second_prefix = [i for i in filled if i != layout.eos_id] + header
    second = builder.continue_after_image_open(second_prefix, text_length=0)
    assert second.uncond is not None and second.uncond_image is not None
    history = second_prefix[: len(prefix) + 16 + 1]
    assert second.uncond.input_ids[: len(history)] == history
    assert layout.uncondition_ids[0] in second.uncond_image.input_ids
    grid_two = random_grid(4, 4)
    final = parse_sequence(fill_plausibly(second, layout, shapes_tokenizer, images=[grid_two]), layout, shapes_tokenizer)
    assert image_grids(final) == [ImageGrid(grid_one), ImageGrid(grid_two)]
    assert final[-2].text.strip() == "now move it"


def test_continue_after_image_open_rejects_a_bad_prefix(builder):
    layout = builder.layout
    with pytest.raises(ValueError, match="must end with the image header"):
        builder.continue_after_image_open([1, 2, layout.image_start_id, layout.size_token(4)])
    with pytest.raises(ValueError, match="not size tokens"):
        builder.continue_after_image_open([layout.image_start_id, 40 + 300, layout.size_token(4), layout.boi_id])


def test_input_checks_name_the_problem(builder, shapes_layout, shapes_tokenizer):
    with pytest.raises(ValueError, match="codebook"):
        builder.edit([np.full((2, 2), 256)], "make it red", h=2, w=2)
    with pytest.raises(ValueError, match=r"grid 2x3 needs 6 codes, got 5"):
        ImageGrid.from_flat([1, 2, 3, 4, 5], 2, 3)
    with pytest.raises(ValueError, match=r"\(h, w\) grid"):
        builder.understanding([np.arange(4)], "what?", answer_length=2)
    with pytest.raises(ValueError, match=r"h=65 must be an int in \[1, 64\]"):
        builder.text_to_image("a circle", h=65, w=8)
    with pytest.raises(ValueError, match="answer_length"):
        builder.understanding([random_grid(2, 2)], "what?", answer_length=0)
    with pytest.raises(ValueError, match="role must be"):
        builder.chat([ChatMessage("system", "hi")], answer_length=2)
    short = SequenceBuilder(shapes_layout, shapes_tokenizer, max_length=64)
    with pytest.raises(ValueError, match="longer than the model's context max_length=64"):
        short.text_to_image("a red circle", h=8, w=8)


def test_collate_left_pads(builder):
    long = builder.text_to_image("a red circle at the top left", h=4, w=4)
    short = builder.understanding([random_grid(1, 1)], "what?", answer_length=2)
    batch = collate([long, short], pad_id=builder.layout.pad_id)
    length = max(len(long), len(short))
    assert batch["input_ids"].shape == batch["token_kinds"].shape == batch["attention_valid"].shape == (2, length)
    assert batch["input_ids"].dtype == torch.int64 and batch["attention_valid"].dtype == torch.bool
    pad = length - len(short)
    assert batch["left_pad"].tolist() == [length - len(long), pad]
    assert batch["input_ids"][1, :pad].eq(builder.layout.pad_id).all()
    assert not batch["attention_valid"][1, :pad].any() and batch["attention_valid"][1, pad:].all()
    assert batch["input_ids"][1, pad:].tolist() == short.input_ids
    slot = long.image_slots[0]
    start = slot.start + int(batch["left_pad"][0])
    assert batch["token_kinds"][0, start : start + 16].eq(TokenKind.IMAGE).all()
    with pytest.raises(ValueError, match="specs"):
        collate([], pad_id=0)
