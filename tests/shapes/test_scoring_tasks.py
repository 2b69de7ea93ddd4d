"""Scores give 1.0 on ground truth and less on perturbed outputs; task samples are
deterministic, well formed, and never show a held-out pair in training."""

import dataclasses
import json
import re
from collections import Counter

import pytest

from unimask.shapes.language import EDIT_KINDS, QUESTION_KINDS, allowed_edit_kinds, sample_edit
from unimask.shapes.render import render
from unimask.shapes.scene import Scene, ShapeObject
from unimask.shapes.scoring import editing_score, interleaved_score, text_to_image_score, understanding_score
from unimask.shapes.tasks import (
    TASKS,
    evaluation_set,
    sample_from_json,
    sample_scenes,
    sample_texts,
    sample_to_json,
    training_samples,
)

SOURCE = Scene("white", (ShapeObject("circle", "red", "large", "top left"),
                         ShapeObject("square", "blue", "small", "center")))


def test_understanding_score():
    answers = ["red", "top left", "three", "a small red circle at the top on a white background"]
    assert understanding_score(answers, answers) == {"accuracy": 1.0, "count": 4}
    assert understanding_score([" Red.", "Top  left", "three", answers[3] + "."], answers)["accuracy"] == 1.0
    assert understanding_score(["blue", "top left", "two", answers[3]], answers)["accuracy"] == 0.5
    with pytest.raises(ValueError, match="lengths"):
        understanding_score(["red"], answers)


def test_text_to_image_score():
    prompted = [SOURCE, SOURCE]
    assert text_to_image_score(prompted, prompted) == {"strict": 1.0, "soft": 1.0, "background": 1.0, "extra_objects": 0.0,
                                                       "count": 2}
    assert text_to_image_score([render(SOURCE)] * 2, prompted)["strict"] == 1.0  # images are read
    recoloured = Scene("white", (ShapeObject("circle", "green", "large", "top left"), SOURCE.objects[1]))
    score = text_to_image_score([SOURCE, recoloured], prompted)
    assert score["strict"] == 0.5 and score["soft"] == pytest.approx(17 / 18)  # 1 of 2 x 9 attributes
    missing = Scene("black", SOURCE.objects[:1])
    assert text_to_image_score([missing], [SOURCE])["soft"] == pytest.approx(4 / 9)
    assert text_to_image_score([missing], [SOURCE])["background"] == 0.0
    # recall does not see extra objects; extra_objects counts them (per image, in cells the prompt leaves empty)
    extra = Scene("white", SOURCE.objects + (ShapeObject("triangle", "red", "small", "bottom"),
                                             ShapeObject("square", "blue", "small", "left")))
    assert text_to_image_score([extra, SOURCE], [SOURCE, SOURCE]) == {
        "strict": 0.5, "soft": 1.0, "background": 1.0, "extra_objects": 1.0, "count": 2}


def test_editing_score():
    target = Scene("white", (dataclasses.replace(SOURCE.objects[0], colour="green"), SOURCE.objects[1]))
    assert editing_score([target], [SOURCE], [target]) == {
        "accuracy": 1.0, "edit_applied": 1.0, "rest_preserved": 1.0, "count": 1}
    unchanged = editing_score([SOURCE], [SOURCE], [target])
    assert unchanged == {"accuracy": 0.0, "edit_applied": 0.0, "rest_preserved": 1.0, "count": 1}
    collateral = Scene("black", target.objects)  # edit done, but the background changed too
    assert editing_score([collateral], [SOURCE], [target]) == {
        "accuracy": 0.0, "edit_applied": 1.0, "rest_preserved": 0.0, "count": 1}
    moved_other = Scene("white", (target.objects[0], dataclasses.replace(SOURCE.objects[1], cell="bottom")))
    assert editing_score([moved_other], [SOURCE], [target])["rest_preserved"] == 0.0


def test_editing_score_on_every_edit_kind(rng):
    sources, targets = [], []
    for _ in range(300):
        source = Scene("gray", SOURCE.objects)
        edit = sample_edit(rng, source)
        sources.append(source)
        targets.append(edit.target)
    assert editing_score(targets, sources, targets)["accuracy"] == 1.0
    assert editing_score(sources, sources, targets)["edit_applied"] == 0.0


def test_interleaved_score():
    steps = [SOURCE, Scene("black", SOURCE.objects), Scene("black", SOURCE.objects[:1])]
    assert interleaved_score([steps], [steps]) == {"all_steps": 1.0, "step_accuracy": 1.0, "count": 1}
    wrong_last = steps[:2] + [SOURCE]
    assert interleaved_score([wrong_last], [steps]) == pytest.approx(
        {"all_steps": 0.0, "step_accuracy": 2 / 3, "count": 1})
    assert interleaved_score([steps[:2]], [steps])["all_steps"] == 0.0  # a step missing


HELD_OUT_TEXT = re.compile(r"purple triangle|orange circle|make the triangle purple|make the circle orange")


def test_training_samples_never_show_held_out_pairs():
    tasks_seen = set()
    for sample in training_samples(seed=3, num_samples=5000):
        tasks_seen.add(sample["task"])
        assert not any(scene.held_out for scene in sample_scenes(sample)), sample
        assert not any(HELD_OUT_TEXT.search(text) for text in sample_texts(sample)), sample
    assert tasks_seen == set(TASKS)


def test_samples_are_deterministic_and_well_formed():
    first = [sample_to_json(s) for s in training_samples(seed=11, num_samples=200)]
    again = [sample_to_json(s) for s in training_samples(seed=11, num_samples=200)]
    other = [sample_to_json(s) for s in training_samples(seed=12, num_samples=200)]
    assert json.dumps(first) == json.dumps(again) != json.dumps(other)
    keys = {"understanding": {"kind", "question", "answer"}, "text_to_image": {"prompt", "target"},
            "editing": {"kind", "instruction", "target"},
            "multi_reference_editing": {"kind", "instruction", "target"},
            "interleaved": {"prompt", "steps"}}
    image_counts = {"understanding": 1, "text_to_image": 0, "editing": 1, "multi_reference_editing": 2,
                    "interleaved": 0}
    for record in first:
        assert set(record) == {"task", "images"} | keys[record["task"]]
        assert len(record["images"]) == image_counts[record["task"]]
        sample = sample_from_json(json.loads(json.dumps(record)))
        assert sample_to_json(sample) == record
    with pytest.raises(ValueError, match="tasks"):
        next(training_samples(seed=0, tasks=("painting",)))


def _assert_every_kind_is_the_default_and_bad_kinds_raise(option: str, every_kind, one_kind: str) -> None:
    """Naming every kind in ``option`` gives the default stream, sample for sample; an empty list, an unknown kind
    or a bare string (``one_kind``) raises ValueError naming ``option``."""
    default = [sample_to_json(s) for s in training_samples(seed=5, num_samples=100)]
    named = [sample_to_json(s) for s in training_samples(seed=5, num_samples=100, **{option: every_kind})]
    assert json.dumps(default) == json.dumps(named)
    for bad in ([], ["painting"], one_kind):
        with pytest.raises(ValueError, match=option):
            next(training_samples(seed=0, **{option: bad}))


def test_question_kinds_weight_the_questions_and_leave_the_default_stream_alone():
    hard = ("colour", "shape")
    kinds = Counter(s["kind"] for s in training_samples(seed=5, num_samples=300, tasks=("understanding",),
                                                        question_kinds=hard))
    # only the named kinds, about evenly (a colour question needs a shape the scene holds once)
    assert set(kinds) == set(hard) and min(kinds.values()) > 100
    _assert_every_kind_is_the_default_and_bad_kinds_raise("question_kinds", QUESTION_KINDS, "colour")


def test_edit_kinds_weight_the_edits_and_leave_the_default_stream_alone():
    hard = ("recolour", "move")
    samples = list(training_samples(seed=5, num_samples=300, tasks=("editing",), edit_kinds=hard))
    kinds = Counter(s["kind"] for s in samples)
    assert set(kinds) == set(hard) and min(kinds.values()) > 100
    # every sample is a real edit: its target differs from its source
    for sample in samples[:20]:
        assert sample["target"] != sample["images"][0]
    other_tasks = Counter(s["task"] for s in training_samples(seed=6, num_samples=200, edit_kinds=hard))
    assert set(other_tasks) == set(TASKS)  # the option changes editing samples only
    _assert_every_kind_is_the_default_and_bad_kinds_raise("edit_kinds", EDIT_KINDS, "move")


def test_allowed_edit_kinds_follow_the_scene():
    full = Scene("white", tuple(ShapeObject("circle", "red", "small", cell) for cell in
                                ("top left", "top", "top right")))
    # three circles: no shape held once, so no recolour; the edits that name colour and shape need a single pair
    assert "recolour" not in allowed_edit_kinds(full) and "move" not in allowed_edit_kinds(full)
    assert set(allowed_edit_kinds(SOURCE)) == set(EDIT_KINDS)
    assert "background" in allowed_edit_kinds(full)


def test_evaluation_set_has_both_splits_for_every_task():
    suite = evaluation_set(seed=5, n_per_type=20)
    assert len(suite) == len(TASKS) * 2 * 20
    assert suite == evaluation_set(seed=5, n_per_type=20)
    assert evaluation_set(seed=5, n_per_type=30)[:20] == suite[:20]  # extends, does not reshuffle
    for sample in suite:
        holds_held_out = any(scene.held_out for scene in sample_scenes(sample))
        assert holds_held_out == (sample["split"] == "held_out")
    pairs = {(t, split) for t in TASKS for split in ("in_distribution", "held_out")}
    assert {(s["task"], s["split"]) for s in suite} == pairs
