"""The language of Shapes World: captions, questions, edit instructions and interleaved requests.

Every sentence is produced from a scene by a fixed grammar (``docs/shapes-world.md``), so each
text has a checkable meaning:
- a caption describes a scene exactly;
- a question is asked only when it has exactly one right answer in its scene;
- an edit instruction names its object unambiguously, is valid in its scene (never moves or adds
  into an occupied cell, never removes the last object, never adds a fourth) and its target is
  the source with exactly that change, nothing else moving;
- an interleaved request is a drawing followed by one to three such edits.
Held-out (colour, shape) pairs appear in no scene, sentence or target unless ``allow_held_out``.
"""

from __future__ import annotations

import dataclasses
import random
import re
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from unimask.shapes.scene import (
    BACKGROUNDS,
    CELLS,
    COLOURS,
    MAX_OBJECTS,
    SHAPES,
    SIZES,
    Scene,
    ShapeObject,
    is_held_out,
    object_kinds,
    sample_jitter,
    sample_object,
    sample_scene,
)

NUMBER_WORDS: tuple[str, ...] = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
QUESTION_KINDS: tuple[str, ...] = ("colour", "shape", "count", "location", "size", "background", "describe")
EDIT_KINDS: tuple[str, ...] = ("recolour", "move", "remove", "add", "background", "resize")
MULTI_REFERENCE_INSTRUCTION = "put the {shape} from the first image into the second image"
MIN_STEPS, MAX_STEPS = 2, 4
# An interleaved answer's step sentences: the first draws a caption, each later one applies an instruction.
FIRST_STEP_SENTENCE = "first, draw {caption}."
LATER_STEP_SENTENCE = "then {instruction}."


# ----------------------------------------------------------------------------- phrases


def location_phrase(cell: str) -> str:
    """``at the {cell}``, or ``in the center`` for the center cell."""
    if cell not in CELLS:
        raise ValueError(f"cell={cell!r} is not one of {CELLS}")
    return "in the center" if cell == "center" else f"at the {cell}"


def destination_phrase(cell: str) -> str:
    """``to the {cell}`` (``to the center`` for the center), the end of a move instruction."""
    if cell not in CELLS:
        raise ValueError(f"cell={cell!r} is not one of {CELLS}")
    return f"to the {cell}"


def object_phrase(item: ShapeObject) -> str:
    """``a {size} {colour} {shape} at the {cell}`` (``in the center`` for the center)."""
    return f"a {item.size} {item.colour} {item.shape} {location_phrase(item.cell)}"


def join_phrases(phrases: Sequence[str]) -> str:
    """Join with ``, `` and a final `` and ``: ``a``, ``a and b``, ``a, b and c``."""
    if len(phrases) <= 1:
        return "".join(phrases)
    return ", ".join(phrases[:-1]) + " and " + phrases[-1]


def caption(scene: Scene) -> str:
    """Object phrases in reading order, then `` on a {background} background``.

    A scene without objects (possible only as a checker reading) is ``nothing on a ... background``.
    """
    objects = join_phrases([object_phrase(item) for item in scene.objects]) or "nothing"
    return f"{objects} on a {scene.background} background"


# ----------------------------------------------------------------------------- questions


@dataclass(frozen=True)
class Question:
    """An understanding question about one scene: its ``kind`` (in QUESTION_KINDS), ``text``, ``answer``."""

    kind: str
    text: str
    answer: str


def questions(scene: Scene) -> list[Question]:
    """Every question with exactly one right answer in ``scene``, with that answer.

    A shape is named alone only when it is unique in the scene; a (colour, shape) pair only
    when unique; cells are asked about only when occupied.
    """
    shape_counts = Counter(item.shape for item in scene.objects)
    pair_counts = Counter((item.colour, item.shape) for item in scene.objects)
    asked: list[Question] = []
    for item in scene.objects:
        if shape_counts[item.shape] == 1:
            asked.append(Question("colour", f"what color is the {item.shape}?", item.colour))
    for item in scene.objects:
        asked.append(Question("shape", f"what shape is {location_phrase(item.cell)}?", item.shape))
    asked.append(Question("count", "how many objects are there?", NUMBER_WORDS[len(scene.objects)]))
    for item in scene.objects:
        if pair_counts[(item.colour, item.shape)] == 1:
            asked.append(Question("location", f"where is the {item.colour} {item.shape}?", item.cell))
            asked.append(Question("size", f"what size is the {item.colour} {item.shape}?", item.size))
    asked.append(Question("background", "what color is the background?", scene.background))
    asked.append(Question("describe", "describe the image.", caption(scene)))
    return asked


def _check_kinds(kinds: Sequence[str], allowed: Sequence[str], argument: str) -> None:
    if isinstance(kinds, str) or not kinds or any(name not in allowed for name in kinds):
        raise ValueError(f"{argument}={kinds!r} must be a non-empty list of kinds from {allowed}")


def check_question_kinds(kinds: Sequence[str], argument: str = "kinds") -> None:
    """Raise ValueError, naming ``argument``, unless ``kinds`` is a non-empty list of QUESTION_KINDS (not a str)."""
    _check_kinds(kinds, QUESTION_KINDS, argument)


def sample_question(
    rng: random.Random, scene: Scene, kind: str | None = None, kinds: Sequence[str] = QUESTION_KINDS
) -> Question:
    """A random question about ``scene``: uniform over the ``kinds`` it allows, then over questions.

    ``kind`` forces one kind from QUESTION_KINDS; ValueError when the scene allows none of it (or none of
    ``kinds``, a non-empty subset of QUESTION_KINDS; ``describe`` is allowed by every scene).
    """
    if kind is not None and kind not in QUESTION_KINDS:
        raise ValueError(f"kind={kind!r} is not one of {QUESTION_KINDS}")
    check_question_kinds(kinds)
    by_kind: dict[str, list[Question]] = {}
    for question in questions(scene):
        by_kind.setdefault(question.kind, []).append(question)
    if kind is None:
        allowed = [name for name in QUESTION_KINDS if name in by_kind and name in kinds]
        if not allowed:
            raise ValueError(f"kinds={list(kinds)} has no question with a unique answer in this scene")
        kind = rng.choice(allowed)
    elif kind not in by_kind:
        raise ValueError(f"kind={kind!r} has no question with a unique answer in this scene")
    return rng.choice(by_kind[kind])


# ----------------------------------------------------------------------------- edits


@dataclass(frozen=True)
class Edit:
    """One edit: its ``kind`` (in EDIT_KINDS or ``multi_reference``), ``instruction`` and ``target`` scene."""

    kind: str
    instruction: str
    target: Scene


def _replace_object(scene: Scene, old: ShapeObject, new: ShapeObject | None) -> Scene:
    kept = [item for item in scene.objects if item is not old]
    return Scene(scene.background, tuple(kept + ([new] if new is not None else [])))


def _edit_options(scene: Scene, allow_held_out: bool) -> dict[str, list[tuple]]:
    """Cheap descriptions ``(kind, ...)`` of every valid edit, grouped by kind."""
    shape_counts = Counter(item.shape for item in scene.objects)
    pair_counts = Counter((item.colour, item.shape) for item in scene.objects)
    free = scene.free_cells()
    options: dict[str, list[tuple]] = {kind: [] for kind in EDIT_KINDS}
    for item in scene.objects:
        if shape_counts[item.shape] == 1:
            for colour in COLOURS:
                if colour != item.colour and (allow_held_out or not is_held_out(colour, item.shape)):
                    options["recolour"].append(("recolour", item, colour))
        if pair_counts[(item.colour, item.shape)] == 1:
            options["move"] += [("move", item, cell) for cell in free]
            if len(scene.objects) > 1:
                options["remove"].append(("remove", item))
            options["resize"] += [("resize", item, size) for size in SIZES if size != item.size]
    if len(scene.objects) < MAX_OBJECTS:
        options["add"] = [("add", kind, cell) for cell in free for kind in object_kinds(allow_held_out)]
    options["background"] = [("background", name) for name in BACKGROUNDS if name != scene.background]
    return options


def _build_edit(scene: Scene, option: tuple, jitter: tuple[int, int]) -> Edit:
    kind = option[0]
    if kind == "recolour":
        _, item, colour = option
        return Edit(kind, f"make the {item.shape} {colour}",
                    _replace_object(scene, item, dataclasses.replace(item, colour=colour)))
    if kind == "move":
        _, item, cell = option
        return Edit(kind, f"move the {item.colour} {item.shape} {destination_phrase(cell)}",
                    _replace_object(scene, item, dataclasses.replace(item, cell=cell)))
    if kind == "remove":
        _, item = option
        return Edit(kind, f"remove the {item.colour} {item.shape}", _replace_object(scene, item, None))
    if kind == "resize":
        _, item, size = option
        return Edit(kind, f"make the {item.colour} {item.shape} {size}",
                    _replace_object(scene, item, dataclasses.replace(item, size=size)))
    if kind == "add":
        _, (shape, colour, size), cell = option
        new = ShapeObject(shape, colour, size, cell, jitter)
        return Edit(kind, f"add {object_phrase(new)}", Scene(scene.background, scene.objects + (new,)))
    _, background = option
    return Edit(kind, f"change the background to {background}", dataclasses.replace(scene, background=background))


def check_edit_kinds(kinds: Sequence[str], argument: str = "kinds") -> None:
    """Raise ValueError, naming ``argument``, unless ``kinds`` is a non-empty list of EDIT_KINDS (not a str)."""
    _check_kinds(kinds, EDIT_KINDS, argument)


def allowed_edit_kinds(scene: Scene, allow_held_out: bool = False) -> list[str]:
    """The EDIT_KINDS with at least one valid edit of ``scene`` (``background`` always; ``move`` needs a free
    cell, ``recolour`` a shape the scene holds once)."""
    return [kind for kind, options in _edit_options(scene, allow_held_out).items() if options]


def possible_edits(scene: Scene, allow_held_out: bool = False) -> list[Edit]:
    """Every valid edit of ``scene`` (added objects get zero jitter).

    ``allow_held_out=False`` drops edits whose target would hold a held-out pair (e.g. ``make
    the triangle purple``); edits of a scene that already holds one are still listed.
    """
    return [_build_edit(scene, option, (0, 0))
            for group in _edit_options(scene, allow_held_out).values() for option in group]


def sample_edit(
    rng: random.Random,
    scene: Scene,
    kinds: Sequence[str] = EDIT_KINDS,
    allow_held_out: bool = False,
) -> Edit:
    """A random valid edit: uniform over the ``kinds`` the scene allows, then over that kind's edits.

    Returns an Edit whose target differs from ``scene`` in exactly the instructed change; an
    added object gets a fresh random jitter. Raises ValueError when none of ``kinds`` applies.
    """
    unknown = [kind for kind in kinds if kind not in EDIT_KINDS]
    if unknown:
        raise ValueError(f"kinds={list(kinds)} has unknown kinds {unknown}; allowed: {EDIT_KINDS}")
    options = _edit_options(scene, allow_held_out)
    available = [kind for kind in kinds if options[kind]]
    if not available:
        raise ValueError(f"kinds={list(kinds)}: no valid edit of these kinds for this scene")
    option = rng.choice(options[rng.choice(available)])
    return _build_edit(scene, option, sample_jitter(rng))


def multi_reference_edit(first: Scene, second: Scene, shape: str) -> Edit:
    """``put the {shape} from the first image into the second image``: copy it to the same cell.

    ``shape`` must occur exactly once in ``first``; its cell must be free in ``second`` and
    ``second`` must hold fewer than 3 objects. Returns the Edit whose target is ``second`` plus
    that object (same colour, size, cell and jitter).
    """
    matches = [item for item in first.objects if item.shape == shape]
    if len(matches) != 1:
        raise ValueError(f"shape={shape!r} occurs {len(matches)} times in the first image; needs exactly 1")
    item = matches[0]
    if second.object_at(item.cell) is not None:
        raise ValueError(f"cell {item.cell!r} of the {shape} is occupied in the second image")
    if len(second.objects) >= MAX_OBJECTS:
        raise ValueError(f"the second image already holds {len(second.objects)} objects (max {MAX_OBJECTS})")
    return Edit("multi_reference", MULTI_REFERENCE_INSTRUCTION.format(shape=shape),
                Scene(second.background, second.objects + (item,)))


def sample_multi_reference(rng: random.Random, allow_held_out: bool = False) -> tuple[Scene, Scene, Edit]:
    """Random ``(first, second, edit)`` for a valid multi-reference edit."""
    while True:  # a first image whose shapes all repeat cannot be referred to by shape
        first = sample_scene(rng, allow_held_out=allow_held_out)
        shape_counts = Counter(item.shape for item in first.objects)
        unique = [item for item in first.objects if shape_counts[item.shape] == 1]
        if unique:
            break
    item = rng.choice(unique)
    free = [cell for cell in CELLS if cell != item.cell]
    cells = rng.sample(free, rng.randint(1, MAX_OBJECTS - 1))
    second = Scene(rng.choice(tuple(BACKGROUNDS)),
                   tuple(sample_object(rng, cell, allow_held_out) for cell in cells))
    return first, second, multi_reference_edit(first, second, item.shape)


# ----------------------------------------------------------------------------- interleaved


@dataclass(frozen=True)
class InterleavedStep:
    """One step of an interleaved answer: a short sentence and the scene it shows."""

    text: str
    scene: Scene


def sample_interleaved(
    rng: random.Random, num_steps: int | None = None, allow_held_out: bool = False
) -> tuple[str, list[InterleavedStep]]:
    """A request for ``num_steps`` (2 to 4, None: uniform) steps and the steps that answer it.

    Step 1 draws a sampled scene (``first, draw {caption}.``); each later step applies one edit
    to the previous scene (``then {instruction}.``). The request is
    ``show {n} steps: draw {caption}, then {instruction}, then ...``.
    """
    if num_steps is None:
        num_steps = rng.randint(MIN_STEPS, MAX_STEPS)
    if not MIN_STEPS <= num_steps <= MAX_STEPS:
        raise ValueError(f"num_steps={num_steps} must be in [{MIN_STEPS}, {MAX_STEPS}]")
    scene = sample_scene(rng, allow_held_out=allow_held_out)
    drawing = f"draw {caption(scene)}"
    steps = [InterleavedStep(FIRST_STEP_SENTENCE.format(caption=caption(scene)), scene)]
    clauses = [drawing]
    for _ in range(num_steps - 1):
        edit = sample_edit(rng, steps[-1].scene, allow_held_out=allow_held_out)
        steps.append(InterleavedStep(LATER_STEP_SENTENCE.format(instruction=edit.instruction), edit.target))
        clauses.append(edit.instruction)
    request = f"show {NUMBER_WORDS[num_steps]} steps: " + ", then ".join(clauses) + "."
    return request, steps


def step_prompt_patterns() -> list[str]:
    """The two regular expressions (first step, later steps) whose group 1 is a step sentence's caption or
    instruction: the text-to-image prompt and the edit instruction of its image (the interleaved pipeline's
    ``step_prompt_patterns``)."""

    def pattern(template: str, field_name: str) -> str:
        before, after = template.split("{" + field_name + "}")
        return f"^{re.escape(before)}(.+){re.escape(after)}$".replace("\\ ", " ")

    return [pattern(FIRST_STEP_SENTENCE, "caption"), pattern(LATER_STEP_SENTENCE, "instruction")]


# ----------------------------------------------------------------------------- corpus


def training_corpus(num_sampled: int = 1000, seed: int = 0) -> Iterator[str]:
    """Every text string the grammar produces, each once, for training the text tokenizer.

    No string names or implies a held-out pair. Yields, exhaustively: every answer word,
    object phrase and one-object caption, every question and every edit instruction with every
    slot filled. Captions of two or three objects and interleaved requests (millions of
    combinations of the phrases above) are represented by ``num_sampled`` sampled examples of
    each (with their step sentences), drawn with ``seed``, so the joiners appear in context.
    """
    if num_sampled < 0:
        raise ValueError(f"num_sampled={num_sampled} must be >= 0")
    seen: set[str] = set()
    for text in _grammar_strings(num_sampled, seed):
        if text not in seen:
            seen.add(text)
            yield text


def _grammar_strings(num_sampled: int, seed: int) -> Iterator[str]:
    yield from COLOURS
    yield from SHAPES
    yield from SIZES
    yield from CELLS
    yield from BACKGROUNDS
    yield from NUMBER_WORDS[1:MAX_OBJECTS + 1]
    for shape, colour, size in object_kinds():
        for cell in CELLS:
            item = ShapeObject(shape, colour, size, cell)
            yield object_phrase(item)
            for background in BACKGROUNDS:
                yield caption(Scene(background, (item,)))
    pairs = [(colour, shape) for shape in SHAPES for colour in COLOURS if not is_held_out(colour, shape)]
    yield "how many objects are there?"
    yield "what color is the background?"
    yield "describe the image."
    for shape in SHAPES:
        yield f"what color is the {shape}?"
    for cell in CELLS:
        yield f"what shape is {location_phrase(cell)}?"
    for colour, shape in pairs:
        yield f"where is the {colour} {shape}?"
        yield f"what size is the {colour} {shape}?"
        yield f"make the {shape} {colour}"
        yield f"remove the {colour} {shape}"
        for size in SIZES:
            yield f"make the {colour} {shape} {size}"
        for cell in CELLS:
            yield f"move the {colour} {shape} {destination_phrase(cell)}"
    for shape, colour, size in object_kinds():
        for cell in CELLS:
            yield f"add {object_phrase(ShapeObject(shape, colour, size, cell))}"
    for background in BACKGROUNDS:
        yield f"change the background to {background}"
    for shape in SHAPES:
        yield MULTI_REFERENCE_INSTRUCTION.format(shape=shape)
    rng = random.Random(seed)
    for _ in range(num_sampled):
        yield caption(sample_scene(rng))
        request, steps = sample_interleaved(rng)
        yield request
        yield from (step.text for step in steps)
