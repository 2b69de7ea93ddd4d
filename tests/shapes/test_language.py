"""Grammar: captions, questions with exactly one right answer, edits that change exactly what
they say (checked by an independent interpreter), multi-reference and interleaved requests,
and the tokenizer corpus."""

import random
import re

import pytest

from unimask.shapes.language import (
    EDIT_KINDS,
    LATER_STEP_SENTENCE,
    QUESTION_KINDS,
    caption,
    multi_reference_edit,
    possible_edits,
    questions,
    sample_edit,
    sample_interleaved,
    sample_multi_reference,
    sample_question,
    step_prompt_patterns,
    training_corpus,
)
from unimask.shapes.scene import CELLS, MAX_JITTER, Scene, ShapeObject, sample_scene

CELL = "|".join(sorted(CELLS, key=len, reverse=True))
NUMBERS = {"one": 1, "two": 2, "three": 3}


def test_caption_matches_the_documented_example():
    scene = Scene("white", (ShapeObject("square", "blue", "small", "center"),
                            ShapeObject("circle", "red", "large", "top left")))
    assert caption(scene) == ("a large red circle at the top left and a small blue square in the center "
                              "on a white background")


def test_caption_joins_three_objects_in_reading_order():
    scene = Scene("gray", (ShapeObject("triangle", "green", "small", "bottom right"),
                           ShapeObject("square", "yellow", "large", "top"),
                           ShapeObject("circle", "blue", "small", "left")))
    assert caption(scene) == ("a large yellow square at the top, a small blue circle at the left and "
                              "a small green triangle at the bottom right on a gray background")


def _right_answers(scene, text):
    """Every answer a question could rightly get in ``scene`` (an independent reading)."""
    objects = scene.objects
    if m := re.fullmatch(r"what color is the (\w+)\?", text):
        return {o.colour for o in objects if o.shape == m[1]} if m[1] != "background" else {scene.background}
    if m := re.fullmatch(rf"what shape is (?:at the|in the) ({CELL})\?", text):
        return {o.shape for o in objects if o.cell == m[1]}
    if text == "how many objects are there?":
        return {k for k, v in NUMBERS.items() if v == len(objects)}
    if m := re.fullmatch(r"where is the (\w+) (\w+)\?", text):
        return {o.cell for o in objects if (o.colour, o.shape) == (m[1], m[2])}
    if m := re.fullmatch(r"what size is the (\w+) (\w+)\?", text):
        return {o.size for o in objects if (o.colour, o.shape) == (m[1], m[2])}
    if text == "describe the image.":
        return {caption(scene)}
    raise AssertionError(f"unknown question {text!r}")


def _referents(text, scene):
    """How many objects the noun phrase ``text`` (``{shape}`` or ``{colour} {shape}``) picks."""
    words = text.split()
    return [o for o in scene.objects if o.shape == words[-1] and (len(words) == 1 or o.colour == words[0])]


def test_every_question_has_exactly_one_right_answer(rng):
    kinds = set()
    for _ in range(1500):
        scene = sample_scene(rng)
        for question in questions(scene):
            kinds.add(question.kind)
            right = _right_answers(scene, question.text)
            if question.text.startswith(("what color is the", "where is", "what size is")):
                assert len(right) == 1 or question.kind == "background", question
                noun = re.sub(r"^(what color is|where is|what size is) the |\?$", "", question.text)
                assert noun == "background" or len(_referents(noun, scene)) == 1
            assert right == {question.answer}, (scene, question)
    assert kinds == set(QUESTION_KINDS)


def test_ambiguous_questions_are_not_asked():
    scene = Scene("white", (ShapeObject("circle", "red", "small", "top"),
                            ShapeObject("circle", "red", "large", "left")))
    texts = {question.text for question in questions(scene)}
    assert "what color is the circle?" not in texts
    assert "where is the red circle?" not in texts
    assert "what shape is at the top?" in texts and "what shape is at the bottom?" not in texts
    with pytest.raises(ValueError, match="kind"):
        sample_question(random.Random(0), scene, kind="location")
    # kinds limits the draw to those kinds; a scene that allows none of them is an error
    drawn = {sample_question(random.Random(i), scene, kinds=("shape", "count")).kind for i in range(30)}
    assert drawn == {"shape", "count"}
    with pytest.raises(ValueError, match="kinds"):
        sample_question(random.Random(0), scene, kinds=("location",))


def _interpret(scene, instruction):
    """Apply an instruction by reading its words: an independent oracle for the edit grammar.
    Returns the expected target, or raises AssertionError when the edit is invalid or ambiguous."""
    objects = list(scene.objects)

    def only(noun):
        found = _referents(noun, scene)
        assert len(found) == 1, f"{instruction!r} is ambiguous or names nothing"
        return found[0]

    def replaced(old, **changes):
        fields = {"shape": old.shape, "colour": old.colour, "size": old.size, "cell": old.cell, **changes}
        return Scene(scene.background, tuple(o for o in objects if o is not old) + (ShapeObject(**fields),))

    if m := re.fullmatch(r"make the (\w+) (\w+) (small|large)", instruction):
        old = only(f"{m[1]} {m[2]}")
        assert old.size != m[3]
        return replaced(old, size=m[3])
    if m := re.fullmatch(r"make the (\w+) (\w+)", instruction):
        old = only(m[1])
        assert old.colour != m[2]
        return replaced(old, colour=m[2])
    if m := re.fullmatch(rf"move the (\w+) (\w+) to the ({CELL})", instruction):
        old = only(f"{m[1]} {m[2]}")
        assert scene.object_at(m[3]) is None
        return replaced(old, cell=m[3])
    if m := re.fullmatch(r"remove the (\w+) (\w+)", instruction):
        old = only(f"{m[1]} {m[2]}")
        assert len(objects) > 1
        return Scene(scene.background, tuple(o for o in objects if o is not old))
    if m := re.fullmatch(rf"add a (small|large) (\w+) (\w+) (?:at the|in the) ({CELL})", instruction):
        assert scene.object_at(m[4]) is None and len(objects) < 3
        return Scene(scene.background, tuple(objects) + (ShapeObject(m[3], m[2], m[1], m[4]),))
    if m := re.fullmatch(r"change the background to (\w+)", instruction):
        assert m[1] != scene.background
        return Scene(m[1], tuple(objects))
    raise AssertionError(f"unknown instruction {instruction!r}")


def _unchanged_objects_keep_jitter(source, target):
    for item in target.objects:
        before = [o for o in source.objects if o == item]
        if before:
            assert before[0].jitter == item.jitter


def test_sampled_edits_change_exactly_what_they_say(rng):
    kinds = set()
    for _ in range(3000):
        source = sample_scene(rng)
        edit = sample_edit(rng, source)
        kinds.add(edit.kind)
        assert edit.target == _interpret(source, edit.instruction), (source, edit)
        assert edit.target != source and not edit.target.held_out
        assert 1 <= len(edit.target.objects) <= 3
        _unchanged_objects_keep_jitter(source, edit.target)
        if edit.kind == "move":  # a moved object keeps its offset from the cell centre
            moved = [o for o in edit.target.objects if source.object_at(o.cell) is None][0]
            original = [o for o in source.objects if edit.target.object_at(o.cell) is None][0]
            assert moved.jitter == original.jitter
        if edit.kind == "add":
            added = [o for o in edit.target.objects if source.object_at(o.cell) is None][0]
            assert all(abs(offset) <= MAX_JITTER for offset in added.jitter)
    assert kinds == set(EDIT_KINDS)


def test_possible_edits_are_all_valid_and_complete():
    scene = Scene("black", (ShapeObject("circle", "red", "small", "top"),
                            ShapeObject("circle", "red", "large", "left"),
                            ShapeObject("triangle", "blue", "small", "center")))
    edits = possible_edits(scene)
    for edit in edits:
        assert edit.target == _interpret(scene, edit.instruction)
    texts = {edit.instruction for edit in edits}
    assert "make the triangle green" in texts
    assert "make the triangle purple" not in texts  # would create a held-out pair
    assert "make the triangle purple" in {e.instruction for e in possible_edits(scene, allow_held_out=True)}
    assert not any("red circle" in text for text in texts)  # two red circles: ambiguous
    assert not any(text.startswith("make the circle") for text in texts)  # two circles
    assert not any(edit.kind == "add" for edit in edits)  # already three objects
    assert "move the blue triangle to the top" not in texts  # occupied
    assert "move the blue triangle to the bottom" in texts
    single = Scene("white", (ShapeObject("square", "green", "large", "right"),))
    assert not any(edit.kind == "remove" for edit in possible_edits(single))  # never empty a scene
    with pytest.raises(ValueError, match="kinds"):
        sample_edit(random.Random(0), single, kinds=("remove",))


def test_multi_reference_puts_the_object_in_the_same_cell(rng):
    for _ in range(1000):
        first, second, edit = sample_multi_reference(rng)
        shape = re.fullmatch(r"put the (\w+) from the first image into the second image", edit.instruction)[1]
        (moved,) = _referents(shape, first)
        assert edit.target == Scene(second.background, second.objects + (moved,))
        assert edit.target.object_at(moved.cell).jitter == moved.jitter
        assert not (first.held_out or second.held_out or edit.target.held_out)
    first = Scene("white", (ShapeObject("square", "red", "small", "top"),))
    with pytest.raises(ValueError, match="occupied"):
        multi_reference_edit(first, first, "square")
    with pytest.raises(ValueError, match="exactly 1"):
        multi_reference_edit(first, first, "circle")


def test_interleaved_steps_are_one_edit_apart(rng):
    lengths = set()
    for _ in range(800):
        request, steps = sample_interleaved(rng)
        lengths.add(len(steps))
        assert 2 <= len(steps) <= 4
        assert request.startswith(f"show {['two', 'three', 'four'][len(steps) - 2]} steps: draw ")
        assert steps[0].text == f"first, draw {caption(steps[0].scene)}."
        for previous, step in zip(steps, steps[1:]):
            instruction = re.fullmatch(r"then (.*)\.", step.text)[1]
            assert step.scene == _interpret(previous.scene, instruction)
            assert f", then {instruction}" in request
        assert not any(step.scene.held_out for step in steps)
    assert lengths == {2, 3, 4}
    with pytest.raises(ValueError, match="num_steps"):
        sample_interleaved(rng, num_steps=5)


def test_training_corpus_covers_the_grammar_without_held_out_pairs(rng):
    corpus = list(training_corpus(num_sampled=100))
    assert len(corpus) == len(set(corpus))
    vocabulary = set(corpus)
    held_out_phrase = re.compile(r"purple triangle|orange circle|make the triangle purple|make the circle orange")
    assert not any(held_out_phrase.search(text) for text in corpus)
    for _ in range(1000):  # every question, answer word and instruction of sampled data is in the corpus
        scene = sample_scene(rng)
        question = sample_question(rng, scene)
        assert question.text in vocabulary
        assert question.kind == "describe" or question.answer in vocabulary
        assert sample_edit(rng, scene).instruction in vocabulary
        assert sample_multi_reference(rng)[2].instruction in vocabulary


def test_step_prompt_patterns_cut_the_caption_and_instruction_out_of_step_sentences(rng):
    from unimask.pipelines.pipeline_interleaved import check_step_prompt_patterns, step_prompt

    first, later = check_step_prompt_patterns(step_prompt_patterns())
    for _ in range(200):
        request, steps = sample_interleaved(rng)
        assert step_prompt(steps[0].text, first) == caption(steps[0].scene)
        for step in steps[1:]:
            instruction = step_prompt(step.text, later)
            assert f", then {instruction}" in request
            assert LATER_STEP_SENTENCE.format(instruction=instruction) == step.text
    assert first.search("then make the circle red.") is None, "a later step is not taken for a first one"
