"""Which object owns each 16 px patch of a rendered scene: dense grounding for the image tokenizer.

A patch belongs to the object with the most pixels in it, when that is at least ``min_pixels``
(else to the background). :func:`patch_regions` turns the owner grid into grounded regions whose
``cells`` list the patches each phrase names, so the tokenizer's region loss can ask every patch,
not only the mean of an object's box, what it shows.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from unimask.shapes.render import shape_mask
from unimask.shapes.scene import CANVAS_SIZE, Scene

__all__ = ["PATCH_SIZE", "MIN_OWNED_PIXELS", "patch_owners", "patch_regions"]

PATCH_SIZE = 16
# A 16 x 16 patch with fewer object pixels than this (a corner of a triangle's box, a disc's rim)
# reads as background: about a tenth of the patch.
MIN_OWNED_PIXELS = 24


def patch_owners(scene: Scene, min_pixels: int = MIN_OWNED_PIXELS) -> np.ndarray:
    """Owner of every patch: ``(8, 8)`` int64, the index into ``scene.objects`` or -1 (background)."""
    if not isinstance(min_pixels, int) or not 1 <= min_pixels <= PATCH_SIZE * PATCH_SIZE:
        raise ValueError(f"min_pixels={min_pixels!r} must be an int in [1, {PATCH_SIZE * PATCH_SIZE}]")
    grid = CANVAS_SIZE // PATCH_SIZE
    counts = np.zeros((len(scene.objects) + 1, grid, grid), dtype=np.int64)
    for index, item in enumerate(scene.objects):
        x0, y0, side = item.box()
        plane = np.zeros((CANVAS_SIZE, CANVAS_SIZE), dtype=bool)
        mask = shape_mask(item.shape, side)
        top, left = max(y0, 0), max(x0, 0)
        bottom, right = min(y0 + side, CANVAS_SIZE), min(x0 + side, CANVAS_SIZE)
        plane[top:bottom, left:right] = mask[top - y0:bottom - y0, left - x0:right - x0]
        counts[index + 1] = plane.reshape(grid, PATCH_SIZE, grid, PATCH_SIZE).sum(axis=(1, 3))
    counts[0] = min_pixels - 1  # the background wins unless an object reaches min_pixels
    return counts.argmax(axis=0) - 1


def patch_regions(scene: Scene, min_pixels: int = MIN_OWNED_PIXELS) -> list[dict[str, Any]]:
    """Regions naming every patch: per object ``{"box", "text": "{size} {colour} {shape}", "cells"}``
    and one ``{"box": whole canvas, "text": "{background} background", "cells"}`` for the rest.

    ``cells`` are flat indices (row * 8 + column) of the 8 x 8 patch grid; an object owning no patch
    keeps its box and gets no ``cells`` key (the region loss then pools its box as before).
    """
    from unimask.shapes.tasks import object_regions

    owners = patch_owners(scene, min_pixels).reshape(-1)
    regions = object_regions(scene)
    for index, region in enumerate(regions):
        cells = np.flatnonzero(owners == index).tolist()
        if cells:
            region["cells"] = cells
    background = np.flatnonzero(owners == -1).tolist()
    if background:
        regions.append({"box": [0, 0, CANVAS_SIZE, CANVAS_SIZE], "text": f"{scene.background} background", "cells": background})
    return regions
