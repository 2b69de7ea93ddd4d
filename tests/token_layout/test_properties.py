"""Property tests: any grids, texts and image counts survive build -> fill -> parse."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from unimask.tokenizers.sequence_builders import ChatMessage, ImageGrid, SequenceBuilder, fill_masks
from unimask.tokenizers.sequence_parser import MalformedImageBlock, TextSpan, image_grids, parse_sequence

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def grids(max_side: int = 6):
    shapes = st.tuples(st.integers(1, max_side), st.integers(1, max_side))
    return shapes.flatmap(lambda shape: arrays(np.int64, shape, elements=st.integers(0, 255)))


texts = st.text(alphabet=st.sampled_from(list("abcdefghij ,?.")), min_size=1, max_size=30)


@SETTINGS
@given(sources=st.lists(grids(), min_size=1, max_size=3), target=grids(), instruction=texts)
def test_edit_round_trip(shapes_layout, shapes_tokenizer, sources, target, instruction):
    builder = SequenceBuilder(shapes_layout, shapes_tokenizer, max_length=4096)
    spec = builder.edit(sources, instruction, h=target.shape[0], w=target.shape[1])
    slot = spec.image_slots[0]
    assert slot.end - slot.start == target.size
    filled = fill_masks(spec, shapes_layout.image_code_to_token(target.reshape(-1)).tolist())
    parts = parse_sequence(filled, shapes_layout, shapes_tokenizer)
    assert image_grids(parts) == [ImageGrid(g) for g in sources] + [ImageGrid(target)]
    assert not any(isinstance(part, MalformedImageBlock) for part in parts)
    assert parts[-2].text.startswith(instruction)  # instruction, then the assistant tag


@SETTINGS
@given(images=st.lists(grids(), min_size=0, max_size=3), answer=texts, question=texts)
def test_understanding_round_trip(shapes_layout, shapes_tokenizer, images, answer, question):
    builder = SequenceBuilder(shapes_layout, shapes_tokenizer, max_length=4096)
    answer_ids = shapes_tokenizer.encode(answer, add_special_tokens=False)
    spec = builder.chat(
        [ChatMessage("user", question, tuple(images))],
        answer_length=len(answer_ids) + 3,
    )
    filled = fill_masks(spec, answer_ids + [shapes_layout.eos_id] * 3)
    parts = parse_sequence(filled, shapes_layout, shapes_tokenizer)
    assert image_grids(parts) == [ImageGrid(g) for g in images]
    assert isinstance(parts[-1], TextSpan)
    assert parts[-1].text.endswith(question + "<role>ASSISTANT</role>" + answer)


@SETTINGS
@given(steps=st.lists(st.tuples(texts, grids(4)), min_size=1, max_size=3), prompt=texts)
def test_interleaved_round_trip(shapes_layout, shapes_tokenizer, steps, prompt):
    builder = SequenceBuilder(shapes_layout, shapes_tokenizer, max_length=4096)
    layout = shapes_layout
    prefix = builder.interleaved(prompt, text_length=1).input_ids[:-1]
    for sentence, grid in steps:
        header = [layout.image_start_id, layout.size_token(grid.shape[0]), layout.size_token(grid.shape[1]), layout.boi_id]
        prefix = prefix + shapes_tokenizer.encode(sentence, add_special_tokens=False) + header
        spec = builder.continue_after_image_open(prefix)
        prefix = fill_masks(spec, layout.image_code_to_token(grid.reshape(-1)).tolist())
        for branch in (spec.uncond, spec.uncond_image):
            if branch is not None:
                assert branch.image_slots[0].end - branch.image_slots[0].start == grid.size
    parts = parse_sequence(prefix, layout, shapes_tokenizer)
    assert image_grids(parts) == [ImageGrid(grid) for _, grid in steps]
    assert [part.text for part in parts[2::2]] == [sentence for sentence, _ in steps[1:]]


@SETTINGS
@given(grid=grids(), drop=st.integers(1, 3))
def test_missing_codes_are_reported(shapes_layout, grid, drop):
    ids = [shapes_layout.image_start_id, shapes_layout.size_token(grid.shape[0]), shapes_layout.size_token(grid.shape[1]),
           shapes_layout.boi_id]
    codes = shapes_layout.image_code_to_token(grid.reshape(-1)).tolist()
    ids += codes[: max(len(codes) - drop, 0)] + [shapes_layout.image_end_id]
    parts = parse_sequence(ids, shapes_layout)
    assert len(parts) == 1 and isinstance(parts[0], MalformedImageBlock)
    with pytest.raises(ValueError, match="malformed"):
        parse_sequence(ids, shapes_layout, strict=True)
