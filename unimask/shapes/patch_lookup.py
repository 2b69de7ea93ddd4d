"""A decoder-free reading of image code grids: every code drawn as the mean patch seen under it.

Text-to-image scores mix two models: the backbone writes a code grid and the diffusion decoder
draws it. `PatchLookup` draws a grid without the decoder, so the checker can read what the
backbone meant. It is fitted on rendered Shapes World scenes: the image tokenizer codes them, and
each code's entry is the mean of the pixel cells it was given for. Drawing the true code grid of a
scene this way recovers most of its attributes (measured in docs/model-card.md), so a generated
grid that reads badly is the backbone's error, not the decoder's.

    lookup = PatchLookup.fit(encode, scenes, codebook_size)   # encode: images -> (n, h, w) codes
    image = lookup.render(grid)                                 # (h, w) codes -> PIL image
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

from unimask.shapes.render import render
from unimask.shapes.scene import Scene, sample_scene

__all__ = ["PatchLookup", "fit_patch_lookup"]

# Scenes the evaluation's lookup is fitted on, and their seed (fixed: the reading must not vary by run).
LOOKUP_SCENES = 1000
LOOKUP_SEED = "shapes-patch-lookup"


def _as_codes(codes: Any) -> np.ndarray:
    """Codes as an int64 array, from a (CPU or device) tensor, an array or nested lists."""
    if isinstance(codes, torch.Tensor):
        codes = codes.detach().cpu().numpy()
    return np.asarray(codes, dtype=np.int64)


class PatchLookup:
    """Mean pixel patch per image code.

    Args:
        patches: (codebook_size, cell, cell, 3) float mean RGB in [0, 255] of the cells coded so.
        seen: (codebook_size,) int, how many cells each code was fitted on; an unseen code draws
            the mean of all cells.
    """

    def __init__(self, patches: np.ndarray, seen: np.ndarray):
        if patches.ndim != 4 or patches.shape[1] != patches.shape[2] or patches.shape[3] != 3:
            raise ValueError(f"patches must be (codebook_size, cell, cell, 3), got {patches.shape}")
        if seen.shape != patches.shape[:1]:
            raise ValueError(f"seen must be ({patches.shape[0]},), got {seen.shape}")
        self.patches, self.seen = patches.astype(np.float32), seen.astype(np.int64)
        if (self.seen > 0).any():
            fallback = (self.patches * self.seen[:, None, None, None]).sum(0) / self.seen.sum()
            self.patches[self.seen == 0] = fallback

    @property
    def cell_pixels(self) -> int:
        """Side of one code's cell in pixels."""
        return int(self.patches.shape[1])

    @classmethod
    def fit(
        cls,
        encode: Callable[[list[Image.Image]], Any],
        scenes: Sequence[Scene],
        codebook_size: int,
        batch_size: int = 100,
    ) -> "PatchLookup":
        """Fit on rendered ``scenes``. encode: PIL images -> code grids (n, h, w) int (tensor or
        array), all of one size; the cell side is the image side over the grid side."""
        if not scenes:
            raise ValueError("scenes must not be empty")
        sums: np.ndarray | None = None
        seen = np.zeros(codebook_size, dtype=np.int64)
        for start in range(0, len(scenes), batch_size):
            images = [render(scene).convert("RGB") for scene in scenes[start : start + batch_size]]
            grids = _as_codes(encode(images))
            if grids.ndim != 3 or grids.shape[0] != len(images):
                raise ValueError(f"encode must return ({len(images)}, h, w) code grids, got shape {grids.shape}")
            if grids.min() < 0 or grids.max() >= codebook_size:
                raise ValueError(f"codes must be in [0, {codebook_size}), got {grids.min()}..{grids.max()}")
            pixels = np.stack([np.asarray(image, dtype=np.float64) for image in images])
            height, width = grids.shape[1:]
            cell = pixels.shape[1] // height
            if cell * height != pixels.shape[1] or cell * width != pixels.shape[2]:
                raise ValueError(f"images of {pixels.shape[1:3]} do not split into {height} x {width} equal cells")
            if sums is None:
                sums = np.zeros((codebook_size, cell, cell, 3))
            cells = pixels.reshape(len(images), height, cell, width, cell, 3).transpose(0, 1, 3, 2, 4, 5)
            cells = cells.reshape(-1, cell, cell, 3)
            codes = grids.reshape(-1)
            np.add.at(sums, codes, cells)
            seen += np.bincount(codes, minlength=codebook_size)
        return cls(sums / np.maximum(seen, 1)[:, None, None, None], seen)

    def render(self, grid: Any) -> Image.Image:
        """(h, w) int codes (tensor, array or nested lists) -> PIL RGB image of h x w cells."""
        grid = _as_codes(grid)
        if grid.ndim != 2:
            raise ValueError(f"grid must be (h, w) codes, got shape {grid.shape}")
        if grid.min() < 0 or grid.max() >= len(self.patches):
            raise ValueError(f"grid codes must be in [0, {len(self.patches)}), got {grid.min()}..{grid.max()}")
        height, width = grid.shape
        cell = self.cell_pixels
        image = self.patches[grid].transpose(0, 2, 1, 3, 4).reshape(height * cell, width * cell, 3)
        return Image.fromarray(np.clip(np.rint(image), 0, 255).astype(np.uint8))


def fit_patch_lookup(image_tokenizer: Any, size_policy: str = "shapes_world", count: int = LOOKUP_SCENES) -> PatchLookup:
    """The lookup of a pipeline's image tokenizer (`SigLIPVQTokenizer`), fitted on ``count`` scenes
    drawn from a fixed seed."""
    rng = random.Random(LOOKUP_SEED)
    scenes = [sample_scene(rng) for _ in range(count)]
    return PatchLookup.fit(lambda images: image_tokenizer.encode(images, size_policy).ids, scenes,
                           image_tokenizer.codebook_size)
