"""The evaluation suite is balanced and split correctly; scores aggregate by task, split, type and decoder."""

from __future__ import annotations

import dataclasses
from collections import Counter

import pytest

from unimask.shapes.evaluate import (
    TASK_KINDS,
    SamplingTally,
    build_evaluation_suite,
    record_correct,
    record_to_json,
    score_records,
    summarise,
)
from unimask.shapes.language import EDIT_KINDS, QUESTION_KINDS
from unimask.shapes.scene import Scene, ShapeObject
from unimask.shapes.tasks import sample_scenes

RED_CIRCLE = ShapeObject("circle", "red", "small", "top left")
BLUE_SQUARE = ShapeObject("square", "blue", "large", "center")
SOURCE = Scene("white", (RED_CIRCLE,))
TARGET = Scene("white", (dataclasses.replace(RED_CIRCLE, colour="green"),))


def _record(task, kind, prediction, split="in_distribution", decoder=None, **sample):
    return {"task": task, "split": split, "kind": kind, "decoder": decoder,
            "sample": {"task": task, "kind": kind, **sample}, "prediction": prediction}


def test_suite_is_balanced_by_type_and_split():
    suite = build_evaluation_suite(seed=3, num_per_type=2)
    counts = Counter((s["task"], s["kind"], s["split"]) for s in suite)
    expected = {(task, kind, split) for task, kinds in TASK_KINDS.items() for kind in kinds
                for split in ("in_distribution", "held_out")}
    assert set(counts) == expected and set(counts.values()) == {2}
    draws = Counter((s["task"], s["kind"], s["split"], s["draw"]) for s in suite)
    assert {key[3] for key in draws} == {0, 1} and set(draws.values()) == {1}
    assert set(TASK_KINDS["understanding"]) == set(QUESTION_KINDS)
    assert set(TASK_KINDS["editing"]) == set(EDIT_KINDS)
    for sample in suite:
        held = any(scene.held_out for scene in sample_scenes(sample))
        assert held == (sample["split"] == "held_out"), sample


def test_suite_is_deterministic_and_extends_with_more_per_type():
    small = build_evaluation_suite(seed=1, num_per_type=1, tasks=["understanding", "editing"])
    assert small == build_evaluation_suite(seed=1, num_per_type=1, tasks=["editing", "understanding"])
    large = build_evaluation_suite(seed=1, num_per_type=2, tasks=["understanding", "editing"])
    assert all(sample in large for sample in small)
    assert build_evaluation_suite(seed=2, num_per_type=1, tasks=["editing"]) != build_evaluation_suite(
        seed=1, num_per_type=1, tasks=["editing"])


@pytest.mark.parametrize("bad", [{"num_per_type": 0}, {"tasks": ["drawing"]}, {"tasks": []}])
def test_suite_rejects_bad_arguments(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        build_evaluation_suite(**{"seed": 0, "num_per_type": 1, **bad})


def test_understanding_accuracy_by_question_type_and_split():
    records = [
        _record("understanding", "colour", "Red.", answer="red"),
        _record("understanding", "colour", "blue", answer="red"),
        _record("understanding", "count", "two", answer="two"),
        _record("understanding", "count", "one", answer="one", split="held_out"),
    ]
    scores = score_records(records)["understanding"]
    in_dist = scores["in_distribution"]
    assert in_dist["accuracy"] == pytest.approx(2 / 3) and in_dist["count"] == 3
    assert in_dist["by_type"] == {"colour": {"accuracy": 0.5, "count": 2}, "count": {"accuracy": 1.0, "count": 1}}
    assert scores["held_out"] == {"accuracy": 1.0, "count": 1, "by_type": {"count": {"accuracy": 1.0, "count": 1}}}


def test_editing_pools_multi_reference_and_needs_the_edit_and_nothing_else():
    other = Scene("black", (BLUE_SQUARE,))
    put_in = Scene("white", (RED_CIRCLE, BLUE_SQUARE))
    records = [
        _record("editing", "recolour", TARGET, images=[SOURCE], target=TARGET),
        # Edit applied but the background changed too: wrong.
        _record("editing", "recolour", dataclasses.replace(TARGET, background="gray"), images=[SOURCE], target=TARGET),
        # Multi-reference: the source is the second image; returning it unchanged is not the edit.
        _record("multi_reference_editing", "multi_reference", Scene("white", (BLUE_SQUARE,)),
                images=[other, Scene("white", (BLUE_SQUARE,))], target=put_in),
        _record("multi_reference_editing", "multi_reference", put_in,
                images=[other, Scene("white", (BLUE_SQUARE,))], target=put_in),
    ]
    scores = score_records(records)["editing"]["in_distribution"]
    assert scores["accuracy"] == 0.5 and scores["count"] == 4
    recolour, multi = scores["by_type"]["recolour"], scores["by_type"]["multi_reference"]
    assert recolour == {"accuracy": 0.5, "edit_applied": 1.0, "rest_preserved": 0.5, "count": 2}
    assert multi == {"accuracy": 0.5, "edit_applied": 0.5, "rest_preserved": 1.0, "count": 2}
    assert "multi_reference_editing" not in score_records(records)
    assert summarise(score_records(records))["in_distribution"]["multi_reference_accuracy"] == 0.5


def test_text_to_image_is_scored_per_decoder_and_interleaved_needs_every_step():
    prompted = Scene("white", (RED_CIRCLE, BLUE_SQUARE))
    half = Scene("white", (RED_CIRCLE,))
    records = [
        _record("text_to_image", "text_to_image", prompted, decoder="turbo", target=prompted),
        _record("text_to_image", "text_to_image", half, decoder="normal", target=prompted),
        _record("interleaved", "interleaved", [SOURCE, TARGET], split="held_out",
                steps=[{"text": "a", "scene": SOURCE}, {"text": "b", "scene": TARGET}]),
        _record("interleaved", "interleaved", [SOURCE], split="held_out",
                steps=[{"text": "a", "scene": SOURCE}, {"text": "b", "scene": TARGET}]),
    ]
    scores = score_records(records)
    assert scores["text_to_image"]["turbo"]["in_distribution"] == {
        "strict": 1.0, "soft": 1.0, "background": 1.0, "extra_objects": 0.0, "count": 1}
    normal = scores["text_to_image"]["normal"]["in_distribution"]
    assert normal["strict"] == 0.0 and normal["soft"] == pytest.approx(5 / 9)  # background + 4 of 8 attributes
    assert scores["interleaved"] == {"held_out": {"all_steps": 0.5, "step_accuracy": 0.75, "count": 2}}
    summary = summarise(scores)
    assert summary["in_distribution"]["text_to_image_normal_soft"] == pytest.approx(5 / 9)
    assert summary["held_out"] == {"interleaved_all_steps": 0.5}
    assert [record_correct(r) for r in records] == [True, False, True, False]


def test_record_json_names_prompt_expected_and_prediction():
    record = _record("editing", "recolour", TARGET, images=[SOURCE], target=TARGET, instruction="make the circle green")
    payload = record_to_json(record)
    assert payload["prompt"] == "make the circle green"
    assert payload["expected"] == payload["predicted"] == "a small green circle at the top left on a white background"
    assert payload["correct"] is True


def test_sampling_tally_sums_stages_over_batches():
    tally = SamplingTally()
    tally.add({"nfe": {"image_tokens": 4, "decoder": 1}, "time_s": {"image_tokens": 0.5, "decoder": 0.25}}, 3, 1.0)
    tally.add({"nfe": {"image_tokens": 2}, "time_s": {"image_tokens": 0.5}}, 1, 1.0)
    stats = tally.as_dict()
    assert stats["nfe"] == 7 and stats["nfe_by_stage"] == {"image_tokens": 6, "decoder": 1}
    assert stats["nfe_per_batch"] == 3.5 and stats["time_per_sample_s"] == 0.5 and stats["samples"] == 4
