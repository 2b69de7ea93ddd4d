"""Samples of every Shapes World task as plain dicts, and the evaluation suite.

Every sample has ``task`` (in TASKS) and ``images`` (input scenes, rendered by the consumer
with :func:`unimask.shapes.render.render`), plus, by task:
- ``understanding``: ``kind`` (in language.QUESTION_KINDS), ``question``, ``answer``;
- ``text_to_image``: ``prompt`` (a caption), ``target`` (Scene);
- ``editing``: ``kind`` (in language.EDIT_KINDS), ``instruction``, ``target`` (Scene);
- ``multi_reference_editing``: ``kind`` = ``multi_reference``, two ``images``, ``instruction``,
  ``target`` (the second image with the object put in);
- ``interleaved``: ``prompt`` (the request), ``steps``: list of ``{"text": str, "scene": Scene}``.
Samples are a pure function of the seed. Training samples never show a held-out
(colour, shape) pair; :func:`evaluation_set` has a split that always does.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from typing import Any

from unimask.shapes.language import (
    EDIT_KINDS,
    QUESTION_KINDS,
    allowed_edit_kinds,
    caption,
    check_edit_kinds,
    check_question_kinds,
    questions,
    sample_edit,
    sample_interleaved,
    sample_multi_reference,
    sample_question,
)
from unimask.shapes.scene import CANVAS_SIZE, Scene, sample_scene

TASKS: tuple[str, ...] = ("understanding", "text_to_image", "editing", "multi_reference_editing", "interleaved")
SPLITS: tuple[str, ...] = ("in_distribution", "held_out")


def _understanding(
    rng: random.Random, allow_held_out: bool, question_kinds: Sequence[str] = QUESTION_KINDS
) -> dict[str, Any]:
    scene = sample_scene(rng, allow_held_out=allow_held_out)
    # A scene that allows none of the kinds (a colour question needs a shape the scene holds once) is drawn again.
    while not any(question.kind in question_kinds for question in questions(scene)):
        scene = sample_scene(rng, allow_held_out=allow_held_out)
    question = sample_question(rng, scene, kinds=question_kinds)
    return {"task": "understanding", "kind": question.kind, "images": [scene],
            "question": question.text, "answer": question.answer}


def _text_to_image(rng: random.Random, allow_held_out: bool) -> dict[str, Any]:
    scene = sample_scene(rng, allow_held_out=allow_held_out)
    return {"task": "text_to_image", "images": [], "prompt": caption(scene), "target": scene}


def _editing(rng: random.Random, allow_held_out: bool, edit_kinds: Sequence[str] = EDIT_KINDS) -> dict[str, Any]:
    scene = sample_scene(rng, allow_held_out=allow_held_out)
    # A scene that allows none of the kinds (a move needs a free cell) is drawn again; every scene allows a
    # background edit, so the default stream never redraws.
    while not set(edit_kinds) & set(allowed_edit_kinds(scene, allow_held_out)):
        scene = sample_scene(rng, allow_held_out=allow_held_out)
    edit = sample_edit(rng, scene, kinds=edit_kinds, allow_held_out=allow_held_out)
    return {"task": "editing", "kind": edit.kind, "images": [scene], "instruction": edit.instruction,
            "target": edit.target}


def _multi_reference_editing(rng: random.Random, allow_held_out: bool) -> dict[str, Any]:
    first, second, edit = sample_multi_reference(rng, allow_held_out=allow_held_out)
    return {"task": "multi_reference_editing", "kind": edit.kind, "images": [first, second],
            "instruction": edit.instruction, "target": edit.target}


def _interleaved(rng: random.Random, allow_held_out: bool) -> dict[str, Any]:
    request, steps = sample_interleaved(rng, allow_held_out=allow_held_out)
    return {"task": "interleaved", "images": [], "prompt": request,
            "steps": [{"text": step.text, "scene": step.scene} for step in steps]}


_GENERATORS = {
    "understanding": _understanding,
    "text_to_image": _text_to_image,
    "editing": _editing,
    "multi_reference_editing": _multi_reference_editing,
    "interleaved": _interleaved,
}


def sample_task(
    task: str, rng: random.Random, allow_held_out: bool = False, question_kinds: Sequence[str] = QUESTION_KINDS,
    edit_kinds: Sequence[str] = EDIT_KINDS,
) -> dict[str, Any]:
    """One sample of ``task`` (in TASKS) drawn from ``rng``; held-out pairs only when allowed. An understanding
    question's kind is drawn uniformly from ``question_kinds`` (those the scene allows), an edit's kind (task
    ``editing``) from ``edit_kinds``."""
    if task not in _GENERATORS:
        raise ValueError(f"task={task!r} is not one of {TASKS}")
    if task == "understanding":
        # before _understanding, whose redraw of scenes would never end on kinds no scene allows
        check_question_kinds(question_kinds, "question_kinds")
        return _understanding(rng, allow_held_out, question_kinds)
    if task == "editing":
        check_edit_kinds(edit_kinds, "edit_kinds")
        return _editing(rng, allow_held_out, edit_kinds)
    return _GENERATORS[task](rng, allow_held_out)


def sample_scenes(sample: dict[str, Any]) -> list[Scene]:
    """Every scene of a sample: its images, then its target or step scenes."""
    scenes = list(sample["images"])
    if "target" in sample:
        scenes.append(sample["target"])
    scenes += [step["scene"] for step in sample.get("steps", [])]
    return scenes


def sample_texts(sample: dict[str, Any]) -> list[str]:
    """Every text of a sample: prompt, question, answer, instruction and step texts."""
    texts = [sample[key] for key in ("prompt", "question", "answer", "instruction") if key in sample]
    return texts + [step["text"] for step in sample.get("steps", [])]


def training_samples(
    seed: int, num_samples: int | None = None, tasks: Sequence[str] = TASKS,
    question_kinds: Sequence[str] = QUESTION_KINDS, edit_kinds: Sequence[str] = EDIT_KINDS,
) -> Iterator[dict[str, Any]]:
    """Training samples, tasks drawn uniformly from ``tasks`` (questions' kinds from ``question_kinds``, edits'
    from ``edit_kinds``); endless when ``num_samples`` is None.

    Deterministic given ``seed``; no sample holds a held-out (colour, shape) pair.
    """
    unknown = [task for task in tasks if task not in _GENERATORS]
    if unknown or not tasks:
        raise ValueError(f"tasks={list(tasks)} must be a non-empty subset of {TASKS}")
    if num_samples is not None and num_samples < 0:
        raise ValueError(f"num_samples={num_samples} must be >= 0 or None")
    check_question_kinds(question_kinds, "question_kinds")
    check_edit_kinds(edit_kinds, "edit_kinds")
    rng = random.Random(seed)
    produced = 0
    while num_samples is None or produced < num_samples:
        yield sample_task(rng.choice(tuple(tasks)), rng, question_kinds=question_kinds, edit_kinds=edit_kinds)
        produced += 1


def _held_out_sample(task: str, rng: random.Random) -> dict[str, Any]:
    """A sample of ``task`` in which some scene holds a held-out pair (rejection sampling)."""
    while True:
        sample = sample_task(task, rng, allow_held_out=True)
        if any(scene.held_out for scene in sample_scenes(sample)):
            return sample


def evaluation_set(seed: int, n_per_type: int) -> list[dict[str, Any]]:
    """The evaluation suite: for every task, ``n_per_type`` samples of each split.

    ``split`` is ``in_distribution`` (no held-out pair, like training but from other seeds) or
    ``held_out`` (some input or target scene holds ``purple triangle`` or ``orange circle``,
    measuring compositional generalisation). Deterministic given ``seed``; each (task, split)
    draws from its own seeded stream, so changing ``n_per_type`` extends rather than reshuffles.
    """
    if n_per_type < 0:
        raise ValueError(f"n_per_type={n_per_type} must be >= 0")
    suite = []
    for task in TASKS:
        for split in SPLITS:
            rng = random.Random(f"shapes-eval-{seed}-{task}-{split}")
            for _ in range(n_per_type):
                sample = _held_out_sample(task, rng) if split == "held_out" else sample_task(task, rng)
                suite.append({**sample, "split": split})
    return suite


def sample_to_json(sample: dict[str, Any]) -> dict[str, Any]:
    """A JSON-ready copy of ``sample``: Scenes become dicts (``Scene.to_dict``)."""
    record = dict(sample)
    record["images"] = [scene.to_dict() for scene in sample["images"]]
    if "target" in sample:
        record["target"] = sample["target"].to_dict()
    if "steps" in sample:
        record["steps"] = [{"text": step["text"], "scene": step["scene"].to_dict()} for step in sample["steps"]]
    return record


def sample_from_json(record: dict[str, Any]) -> dict[str, Any]:
    """Inverse of :func:`sample_to_json`."""
    sample = dict(record)
    sample["images"] = [Scene.from_dict(scene) for scene in record["images"]]
    if "target" in record:
        sample["target"] = Scene.from_dict(record["target"])
    if "steps" in record:
        sample["steps"] = [{"text": step["text"], "scene": Scene.from_dict(step["scene"])} for step in record["steps"]]
    return sample


SHARD_KINDS: tuple[str, ...] = ("tasks", "captions")


def object_regions(scene: Scene) -> list[dict[str, Any]]:
    """Each object's pixel box ``[x0, y0, x1, y1]`` (end exclusive, clipped to the canvas) and its phrase
    ``"{size} {colour} {shape}"``."""
    regions = []
    for item in scene.objects:
        x0, y0, side = item.box()
        box = [max(x0, 0), max(y0, 0), min(x0 + side, CANVAS_SIZE), min(y0 + side, CANVAS_SIZE)]
        regions.append({"box": box, "text": f"{item.size} {item.colour} {item.shape}"})
    return regions


def _background_regions(scene: Scene, rng: random.Random, count: int) -> list[dict[str, Any]]:
    """Up to ``count`` 16 px grid cells that no object's box touches, each as a region named
    ``"{background} background"`` (so a tokenizer's region loss also ties plain cells to one meaning)."""
    boxes = [item.box() for item in scene.objects]
    free = []
    for top in range(0, CANVAS_SIZE, 16):
        for left in range(0, CANVAS_SIZE, 16):
            if all(left + 16 <= x0 or left >= x0 + side or top + 16 <= y0 or top >= y0 + side for x0, y0, side in boxes):
                free.append([left, top, left + 16, top + 16])
    return [{"box": box, "text": f"{scene.background} background"} for box in rng.sample(free, min(count, len(free)))]


def iter_samples(
    count: int, seed: int = 0, kind: str = "tasks", tasks: Sequence[str] = TASKS, background_regions: int = 0,
    patch_regions: bool = False, question_kinds: Sequence[str] = QUESTION_KINDS,
    edit_kinds: Sequence[str] = EDIT_KINDS,
) -> Iterator[dict[str, Any]]:
    """Shard samples (the ``unimask data write --generator shapes`` source), rendered at 128 px.

    ``kind="tasks"``: one training task sample per record; ``json`` is :func:`sample_to_json` of the
    sample and ``images`` are every scene of it in :func:`sample_scenes` order (inputs, then target
    or steps; understanding questions' kinds drawn uniformly from ``question_kinds``, among those the scene
    allows; edits' kinds from ``edit_kinds``). ``kind="captions"``: one scene per record, ``json`` =
    ``{"task": "caption", "caption": str, "scene": dict,
    "regions": [{"box": [x0, y0, x1, y1], "text": "small red circle"}]}``
    (each object's pixel box, end exclusive, and its phrase: grounded text for the image tokenizer's
    region loss; then, when ``background_regions`` > 0, up to that many free 16 px cells named
    ``"{background} background"``; or, with ``patch_regions``, :func:`unimask.shapes.patch_owners.patch_regions`:
    every object and the background with the ``cells`` of the 16 px patches each owns), one image (for
    the image tokenizer, VAE and decoder stages).
    Yields ``{"__key__": "%08d", "json": dict, "images": [PIL RGB]}``; never a held-out pair.
    """
    from unimask.shapes.patch_owners import patch_regions as owned_patch_regions
    from unimask.shapes.render import render

    if kind not in SHARD_KINDS:
        raise ValueError(f"kind={kind!r} is not one of {SHARD_KINDS}")
    if not isinstance(count, int) or count < 1:
        raise ValueError(f"count={count!r} must be an integer >= 1")
    if isinstance(background_regions, bool) or not isinstance(background_regions, int) or background_regions < 0:
        raise ValueError(f"background_regions={background_regions!r} must be an integer >= 0")
    if not isinstance(patch_regions, bool):
        raise ValueError(f"patch_regions={patch_regions!r} must be true or false")
    if patch_regions and background_regions:
        raise ValueError("patch_regions already names every background patch; leave background_regions at 0")
    if kind == "captions":
        rng = random.Random(f"shapes-captions-{seed}")
        for index in range(count):
            scene = sample_scene(rng)
            regions = owned_patch_regions(scene) if patch_regions else object_regions(scene)
            if background_regions:
                regions += _background_regions(scene, random.Random(f"shapes-captions-{seed}-{index}"), background_regions)
            record = {"task": "caption", "caption": caption(scene), "scene": scene.to_dict(), "regions": regions}
            yield {"__key__": f"{index:08d}", "json": record, "images": [render(scene)]}
        return
    for index, sample in enumerate(training_samples(seed, count, tasks, question_kinds, edit_kinds)):
        scenes = sample_scenes(sample)
        record = sample_to_json(sample)
        record["n_images"] = len(scenes)
        yield {"__key__": f"{index:08d}", "json": record, "images": [render(scene) for scene in scenes]}
