"""How much of a scene an image tokenizer's codes carry: a linear probe per object attribute.

For every object of a scene, the codes of the grid cells its box overlaps are counted into a
bag-of-codes vector; a logistic-regression probe trained on one set of scenes predicts the object's
``colour``, ``shape`` and ``size`` on another. Held-out accuracy far above chance means the codes
carry the attribute; near chance means no backbone or decoder trained on these codes can recover it
(the backbone cannot answer questions about it, the decoder cannot draw it). Run it after training
the tokenizer, before the stages that depend on its codes.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np
import torch

from unimask.shapes.render import render
from unimask.shapes.scene import CANVAS_SIZE, Scene

__all__ = ["ATTRIBUTES", "object_code_features", "probe_codes"]

ATTRIBUTES = ("colour", "shape", "size")


def object_code_features(grid: np.ndarray, box: tuple[int, int, int], codebook_size: int) -> np.ndarray:
    """Bag of codes under one object's box.

    grid: (h, w) int codes of a ``CANVAS_SIZE``-pixel image; box: ``(x0, y0, side)`` in pixels.
    Returns (codebook_size,) float32 counts of each code over the grid cells the box overlaps.
    """
    grid = np.asarray(grid)
    cell_h, cell_w = CANVAS_SIZE / grid.shape[0], CANVAS_SIZE / grid.shape[1]
    x0, y0, side = box
    rows = range(int(y0 // cell_h), min(int((y0 + side - 1) // cell_h) + 1, grid.shape[0]))
    cols = range(int(x0 // cell_w), min(int((x0 + side - 1) // cell_w) + 1, grid.shape[1]))
    features = np.zeros(codebook_size, dtype=np.float32)
    for row in rows:
        for col in cols:
            features[int(grid[row, col])] += 1.0
    return features


def _objects_and_features(grids: Sequence[np.ndarray], scenes: Sequence[Scene], codebook_size: int):
    features, objects = [], []
    for grid, scene in zip(grids, scenes):
        for item in scene.objects:
            features.append(object_code_features(grid, item.box(), codebook_size))
            objects.append(item)
    return np.stack(features), objects


def _fit_probe(x: torch.Tensor, y: torch.Tensor, classes: int, steps: int = 300) -> torch.nn.Linear:
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(0)
    probe = torch.nn.Linear(x.shape[1], classes)
    torch.random.set_rng_state(generator_state)
    optimizer = torch.optim.Adam(probe.parameters(), lr=0.05)
    for _ in range(steps):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(probe(x), y).backward()
        optimizer.step()
    return probe


def probe_codes(
    encode, train_scenes: Sequence[Scene], test_scenes: Sequence[Scene], codebook_size: int
) -> dict[str, dict[str, float]]:
    """Held-out accuracy of a linear probe from an object's codes to each of its attributes.

    Args:
        encode: list of PIL images -> list of (h, w) int code grids (e.g. ``lambda images:
            tokenizer.encode(images, "shapes_world").ids``).
        train_scenes / test_scenes: scenes to fit / score the probes on (disjoint draws).
        codebook_size: number of codes.
    Returns:
        ``{attribute: {"accuracy": float, "chance": float}}`` for ``colour``, ``shape`` and ``size``;
        ``chance`` is the majority class's share of the test objects.
    Raises:
        ValueError: a scene set without objects.
    """
    sets = []
    for name, scenes in (("train_scenes", train_scenes), ("test_scenes", test_scenes)):
        if not scenes or not any(scene.objects for scene in scenes):
            raise ValueError(f"{name} must hold at least one scene with objects")
        grids = [np.asarray(grid) for grid in encode([render(scene) for scene in scenes])]
        sets.append(_objects_and_features(grids, scenes, codebook_size))
    (x_train, train_objects), (x_test, test_objects) = sets
    results = {}
    for attribute in ATTRIBUTES:
        labels = sorted({getattr(item, attribute) for item in train_objects + test_objects})
        y_train = torch.tensor([labels.index(getattr(item, attribute)) for item in train_objects])
        y_test = torch.tensor([labels.index(getattr(item, attribute)) for item in test_objects])
        probe = _fit_probe(torch.from_numpy(x_train), y_train, len(labels))
        with torch.no_grad():
            predicted = probe(torch.from_numpy(x_test)).argmax(dim=1)
        majority = Counter(y_test.tolist()).most_common(1)[0][1]
        results[attribute] = {
            "accuracy": float((predicted == y_test).float().mean()),
            "chance": majority / len(y_test),
        }
    return results
