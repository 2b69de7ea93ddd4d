"""Backbone training sequences of Shapes World tasks: they parse back, and only the response is maskable."""

import random

import numpy as np
import pytest

from unimask.shapes.backbone_samples import (
    backbone_records,
    backbone_sequence,
    interleaved_round_records,
    interleaved_round_sequences,
)
from unimask.shapes.language import caption
from unimask.shapes.scene import BACKGROUNDS, COLOURS
from unimask.shapes.tasks import TASKS, iter_samples, sample_scenes, sample_task, sample_texts, sample_to_json
from unimask.tokenizers.sequence_builders import ImageGrid
from unimask.tokenizers.sequence_parser import TextSpan, parse_sequence
from unimask.tokenizers.token_layout import encode_plain


def _grids(sample, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(len(sample_scenes(sample)), 8, 8))


def _sample(task, seed=0):
    return sample_to_json(sample_task(task, random.Random(seed)))


def test_understanding_response_is_answer_then_eos(shapes_builder, shapes_text_tokenizer):
    sample = _sample("understanding")
    grids = _grids(sample_task("understanding", random.Random(0)))
    ids, start = backbone_sequence(sample, grids, shapes_builder, answer_length=32)
    layout = shapes_builder.layout
    answer = encode_plain(shapes_text_tokenizer, sample["answer"])
    assert len(ids) - start == 32
    assert ids[start : start + len(answer)] == answer
    assert set(ids[start + len(answer) :]) == {layout.eos_id}
    # The prompt holds the input image block and the question, before the response.
    parts = parse_sequence(ids[:start], layout, stop_at_eos=False)
    grids_in_prompt = [p for p in parts if isinstance(p, ImageGrid)]
    assert len(grids_in_prompt) == 1 and np.array_equal(grids_in_prompt[0].codes, grids[0])
    assert sample["question"] in shapes_text_tokenizer.decode(ids[:start])


@pytest.mark.parametrize("task", ["text_to_image", "editing", "multi_reference_editing"])
def test_image_tasks_response_is_target_codes(shapes_builder, task):
    sample = _sample(task, seed=3)
    grids = _grids(sample_task(task, random.Random(3)), seed=1)
    ids, start = backbone_sequence(sample, grids, shapes_builder, uncondition_rate=0.0)
    layout = shapes_builder.layout
    assert ids[start - 4 : start] == [layout.image_start_id, layout.size_token(8), layout.size_token(8), layout.boi_id]
    assert ids[start : start + 64] == (grids[-1].reshape(-1) + layout.image_token_offset).tolist()
    assert ids[start + 64 :] == [layout.image_end_id]
    prompt_grids = [p for p in parse_sequence(ids[: start - 4], layout, stop_at_eos=False) if isinstance(p, ImageGrid)]
    assert len(prompt_grids) == len(grids) - 1  # every source image, never the target
    for parsed, source in zip(prompt_grids, grids[:-1]):
        assert np.array_equal(parsed.codes, source)


def test_unconditional_variant_drops_the_text(shapes_builder, shapes_text_tokenizer):
    sample = _sample("text_to_image", seed=5)
    grids = _grids(sample_task("text_to_image", random.Random(5)))
    ids, start = backbone_sequence(sample, grids, shapes_builder, uncondition_rate=1.0)
    assert shapes_builder.layout.uncondition_ids[0] in ids[:start]
    assert sample["prompt"] not in shapes_text_tokenizer.decode(ids[:start])
    assert ids[start : start + 64] == (grids[0].reshape(-1) + shapes_builder.layout.image_token_offset).tolist()


def test_interleaved_response_parses_into_steps(shapes_builder, shapes_text_tokenizer):
    raw = sample_task("interleaved", random.Random(7))
    sample = sample_to_json(raw)
    grids = _grids(raw)
    ids, start = backbone_sequence(sample, grids, shapes_builder, tail_eos=16)
    layout = shapes_builder.layout
    assert ids[-16:] == [layout.eos_id] * 16
    parts = parse_sequence(ids[start:], layout, tokenizer=shapes_text_tokenizer)
    texts = [shapes_text_tokenizer.decode(list(p.ids)) for p in parts if isinstance(p, TextSpan)]
    images = [p for p in parts if isinstance(p, ImageGrid)]
    assert texts == [step["text"] for step in sample["steps"]]
    assert len(images) == len(grids) and all(np.array_equal(a.codes, b) for a, b in zip(images, grids))
    assert sample["prompt"] in shapes_text_tokenizer.decode(ids[:start])


def test_interleaved_rounds_end_where_the_pipeline_rounds_end(shapes_builder, shapes_text_tokenizer):
    raw = sample_task("interleaved", random.Random(7))
    sample = sample_to_json(raw)
    grids = _grids(raw)
    rounds = interleaved_round_sequences(sample, grids, shapes_builder, text_length=96)
    layout = shapes_builder.layout
    steps = sample["steps"]
    assert len(rounds) == 2 * len(steps) + 1
    whole, whole_start = backbone_sequence(sample, grids, shapes_builder, tail_eos=16)
    prompt = whole[:whole_start]
    header = [layout.image_start_id, layout.size_token(8), layout.size_token(8), layout.boi_id]
    history = prompt
    for index, (step, grid) in enumerate(zip(steps, grids)):
        (text_ids, text_start), (image_ids, image_start) = rounds[2 * index], rounds[2 * index + 1]
        sentence = encode_plain(shapes_text_tokenizer, step["text"])
        # Text round: the history, then 96 positions = sentence, header, end-of-sequence padding.
        assert text_ids[:text_start] == history and len(text_ids) - text_start == 96
        assert text_ids[text_start:] == sentence + header + [layout.eos_id] * (96 - len(sentence) - 4)
        # Image round: the codes after the header, and nothing after <|/image|>.
        assert image_ids[:image_start] == history + sentence + header
        assert image_ids[image_start:] == (grid.reshape(-1) + layout.image_token_offset).tolist() + [layout.image_end_id]
        history = image_ids
    last, last_start = rounds[-1]
    assert last[:last_start] == whole[: len(whole) - 16] and last[last_start:] == [layout.eos_id] * 96
    with pytest.raises(ValueError, match="text_length"):
        interleaved_round_sequences(sample, grids, shapes_builder, text_length=8)
    with pytest.raises(ValueError, match="grids of shape"):
        interleaved_round_sequences(sample, grids[:1], shapes_builder, text_length=96)
    with pytest.raises(ValueError, match="interleaved"):
        interleaved_round_sequences(_sample("editing"), grids, shapes_builder, text_length=96)


def test_interleaved_round_records_skip_other_tasks(tmp_path, shapes_builder):
    from unimask.data.loader import expand_shard_paths
    from unimask.data.tokenize_shards import add_image_codes
    from unimask.data.writer import write_shards

    samples = list(iter_samples(10, seed=4, kind="tasks"))
    write_shards(samples, tmp_path / "tasks", max_count=10)
    shards = expand_shard_paths([str(tmp_path / "tasks")])
    add_image_codes(shards, lambda images: [np.full((8, 8), 5) for _ in images])
    records = list(interleaved_round_records(shards, shapes_builder, text_length=96))
    expected = sum(2 * len(s["json"]["steps"]) + 1 for s in samples if s["json"]["task"] == "interleaved")
    assert expected > 0 and len(records) == expected
    assert len({record["__key__"] for record in records}) == expected
    assert all(record["json"]["task"] == "interleaved" for record in records)


def test_wrong_grid_count_and_long_answer_raise(shapes_builder):
    sample = _sample("editing")
    with pytest.raises(ValueError, match="grids of shape"):
        backbone_sequence(sample, np.zeros((1, 8, 8), dtype=np.int64), shapes_builder)
    understanding = _sample("understanding")
    understanding["answer"] = caption(sample_task("text_to_image", random.Random(1))["target"])
    with pytest.raises(ValueError, match="answer_length"):
        backbone_sequence(understanding, np.zeros((1, 8, 8), dtype=np.int64), shapes_builder, answer_length=4)
    with pytest.raises(ValueError, match="task"):
        backbone_sequence({"task": "nope"}, np.zeros((1, 8, 8)), shapes_builder)


def test_generated_samples_never_hold_held_out_pairs():
    for sample in iter_samples(150, seed=11, kind="tasks"):
        text = " ".join(str(v) for v in sample["json"].values())
        assert "purple triangle" not in text and "orange circle" not in text
        record = sample["json"]
        scenes = [*record["images"], *([record["target"]] if "target" in record else []), *[s["scene"] for s in record.get("steps", [])]]
        for scene in scenes:
            pairs = {(o["colour"], o["shape"]) for o in scene["objects"]} if "objects" in scene else set()
            assert ("purple", "triangle") not in pairs and ("orange", "circle") not in pairs
        assert len(sample["images"]) == record["n_images"]


def test_backbone_records_from_coded_shards(tmp_path, shapes_builder):
    from unimask.data.loader import expand_shard_paths
    from unimask.data.tokenize_shards import add_image_codes
    from unimask.data.writer import write_shards

    write_shards(iter_samples(12, seed=2, kind="tasks"), tmp_path / "tasks", max_count=6)
    # A second folder with the same shard and sample names: keys must stay unique across folders.
    write_shards(iter_samples(6, seed=3, kind="tasks", tasks=["understanding"]), tmp_path / "more", max_count=6)
    shards = expand_shard_paths([str(tmp_path / "tasks"), str(tmp_path / "more")])
    add_image_codes(shards, lambda images: [np.full((8, 8), 5) for _ in images])
    records = list(backbone_records(shards, shapes_builder))
    assert len(records) == 18 and len({record["__key__"] for record in records}) == 18
    by_key = {record["__key__"]: record["json"]["task"] for record in records}
    assert "tasks_shard-000000_00000000" in by_key
    assert [by_key[f"more_shard-000000_{index:08d}"] for index in range(6)] == ["understanding"] * 6
    for record in records:
        meta = record["json"]
        assert meta["task"] in TASKS
        assert 0 < meta["response_start"] < len(meta["input_ids"])
        assert max(meta["input_ids"]) < shapes_builder.layout.vocab_size


def test_caption_records_ground_every_object_in_its_pixels():
    plain = list(iter_samples(20, seed=5, kind="captions"))
    assert all(len(sample["json"]["regions"]) == len(sample["json"]["scene"]["objects"]) for sample in plain)
    with pytest.raises(ValueError, match="background_regions"):
        next(iter_samples(2, seed=5, kind="captions", background_regions=-1))
    for sample in iter_samples(20, seed=5, kind="captions", background_regions=4):
        record, pixels = sample["json"], np.asarray(sample["images"][0])
        objects = record["scene"]["objects"]
        object_regions, free_cells = record["regions"][: len(objects)], record["regions"][len(objects) :]
        for region, item in zip(object_regions, objects):
            assert region["text"] == f"{item['size']} {item['colour']} {item['shape']}"
            x0, y0, x1, y1 = region["box"]
            assert 0 <= x0 < x1 <= 128 and 0 <= y0 < y1 <= 128
            inside = pixels[y0:y1, x0:x1].reshape(-1, 3)
            share = (inside == np.array(COLOURS[item["colour"]])).all(axis=1).mean()
            assert share >= 0.4  # a triangle fills about half its box, a circle ~78%, a square all of it
        # then up to four 16 px cells that show nothing but the background
        assert 1 <= len(free_cells) <= 4
        for region in free_cells:
            x0, y0, x1, y1 = region["box"]
            assert region["text"] == f"{record['scene']['background']} background"
            assert x1 - x0 == y1 - y0 == 16 and x0 % 16 == 0 and y0 % 16 == 0
            assert (pixels[y0:y1, x0:x1] == np.array(BACKGROUNDS[record["scene"]["background"]])).all()


def test_interleave_evenly_spreads_every_source():
    from unimask.shapes.backbone_samples import interleave_evenly

    merged = list(interleave_evenly([(iter("aaaa"), 4), (iter("bb"), 2)]))
    assert merged == list("abaaba")
    # Every window of three holds both sources; a short source ends, a long one continues.
    assert list(interleave_evenly([(iter("aaaaaa"), 2), (iter("b"), 2)])) == list("abaaaaa")
    assert list(interleave_evenly([(iter("a"), 1), (iter(""), 3)])) == ["a"]
    with pytest.raises(ValueError, match="expected counts"):
        list(interleave_evenly([(iter("a"), 0)]))
