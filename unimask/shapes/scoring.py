"""Scores of Shapes World tasks, computed against ground-truth scenes.

Image predictions may be given as Scenes (already read) or as images (PIL or arrays), which
are read with :func:`unimask.shapes.checker.read_scene`. Every score returns a dict of floats
in [0, 1] plus ``count``, the number of samples scored; an empty input scores 0.0.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Union

import numpy as np
from PIL import Image

from unimask.shapes.checker import read_scene
from unimask.shapes.scene import CELLS, Scene

ScenePrediction = Union[Scene, Image.Image, np.ndarray]


def _as_scene(prediction: ScenePrediction) -> Scene:
    return prediction if isinstance(prediction, Scene) else read_scene(prediction)


def _check_lengths(**sequences: Sequence) -> int:
    lengths = {name: len(values) for name, values in sequences.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"lengths differ: {lengths}")
    return next(iter(lengths.values()))


def normalise_answer(text: str) -> str:
    """Lower case, single spaces, no surrounding spaces or final ``.``/``?``/``!``."""
    return " ".join(text.lower().split()).rstrip(".?!").strip()


def understanding_score(predictions: Sequence[str], answers: Sequence[str]) -> dict[str, float]:
    """Exact-match accuracy of answers after :func:`normalise_answer`.

    Returns ``{"accuracy", "count"}``.
    """
    count = _check_lengths(predictions=predictions, answers=answers)
    correct = sum(normalise_answer(p) == normalise_answer(a) for p, a in zip(predictions, answers))
    return {"accuracy": correct / count if count else 0.0, "count": count}


def _attribute_recall(predicted: Scene, prompted: Scene) -> tuple[int, int]:
    """``(recovered, total)`` attributes: the background, and per prompted object its presence
    at its cell, shape, colour and size (compared with the predicted object at that cell)."""
    recovered = int(predicted.background == prompted.background)
    total = 1
    for item in prompted.objects:
        found = predicted.object_at(item.cell)
        total += 4
        if found is not None:
            recovered += 1 + (found.shape == item.shape) + (found.colour == item.colour) + (found.size == item.size)
    return recovered, total


def text_to_image_score(predictions: Sequence[ScenePrediction], prompted: Sequence[Scene]) -> dict[str, float]:
    """Strict and soft scene match of generated images against the prompted scenes.

    Returns ``{"strict", "soft", "background", "extra_objects", "count"}``: ``strict`` is the fraction
    of images whose scene is exactly the prompted one (no missing, extra or wrong object); ``soft`` the
    fraction of prompted attributes recovered (background; per object presence at its cell, shape,
    colour, size), pooled over all prompts. ``soft`` is a recall: an image crowded with objects
    recovers many prompted ones by chance, so ``background`` (fraction with the prompted background)
    and ``extra_objects`` (mean objects per image in cells the prompt leaves empty) show what it misses.
    """
    count = _check_lengths(predictions=predictions, prompted=prompted)
    strict, recovered, total, background, extra = 0, 0, 0, 0, 0
    for prediction, truth in zip(predictions, prompted):
        scene = _as_scene(prediction)
        strict += scene == truth
        hits, attributes = _attribute_recall(scene, truth)
        recovered, total = recovered + hits, total + attributes
        background += scene.background == truth.background
        extra += sum(truth.object_at(item.cell) is None for item in scene.objects)
    return {"strict": strict / count if count else 0.0, "soft": recovered / total if total else 0.0,
            "background": background / count if count else 0.0, "extra_objects": extra / count if count else 0.0,
            "count": count}


def _edit_parts(source: Scene, target: Scene) -> tuple[set[str], bool]:
    """Cells whose object the edit changes, and whether it changes the background."""
    changed = {cell for cell in CELLS if source.object_at(cell) != target.object_at(cell)}
    return changed, source.background != target.background


def editing_score(
    predictions: Sequence[ScenePrediction], sources: Sequence[Scene], targets: Sequence[Scene]
) -> dict[str, float]:
    """Editing correctness: the edit is applied AND nothing else changed.

    ``sources`` are the edited images (for multi-reference edits, the image being edited into,
    i.e. the second one). Returns ``{"accuracy", "edit_applied", "rest_preserved", "count"}``:
    ``edit_applied`` is the fraction whose changed cells (and background, when edited) match the
    target, ``rest_preserved`` the fraction whose other cells and background are unchanged, and
    ``accuracy`` the fraction with both, which is the predicted scene equalling the target.
    """
    count = _check_lengths(predictions=predictions, sources=sources, targets=targets)
    applied = preserved = both = 0
    for prediction, source, target in zip(predictions, sources, targets):
        scene = _as_scene(prediction)
        changed_cells, background_changed = _edit_parts(source, target)
        cells_right = {cell for cell in CELLS if scene.object_at(cell) == target.object_at(cell)}
        background_right = scene.background == target.background
        is_applied = changed_cells <= cells_right and (background_right or not background_changed)
        is_preserved = (set(CELLS) - changed_cells) <= cells_right and (background_right or background_changed)
        applied += is_applied
        preserved += is_preserved
        both += is_applied and is_preserved
    if not count:
        return {"accuracy": 0.0, "edit_applied": 0.0, "rest_preserved": 0.0, "count": 0}
    return {"accuracy": both / count, "edit_applied": applied / count, "rest_preserved": preserved / count,
            "count": count}


def interleaved_score(
    predictions: Sequence[Sequence[ScenePrediction]], targets: Sequence[Sequence[Scene]]
) -> dict[str, float]:
    """Interleaved generation: every step's image matches its step's scene.

    ``predictions[i]`` are the images produced for request ``i`` in step order, ``targets[i]``
    its step scenes; a missing or extra step makes the request wrong. Returns
    ``{"all_steps", "step_accuracy", "count"}``: the fraction of requests with every step right,
    and the fraction of target steps matched in place.
    """
    count = _check_lengths(predictions=predictions, targets=targets)
    all_right, steps_right, steps_total = 0, 0, 0
    for predicted_steps, target_steps in zip(predictions, targets):
        matches = [_as_scene(prediction) == truth for prediction, truth in zip(predicted_steps, target_steps)]
        steps_right += sum(matches)
        steps_total += len(target_steps)
        all_right += len(predicted_steps) == len(target_steps) and all(matches)
    return {"all_steps": all_right / count if count else 0.0,
            "step_accuracy": steps_right / steps_total if steps_total else 0.0, "count": count}
