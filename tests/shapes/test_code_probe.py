"""The tokenizer code probe tells attributes the codes carry from those they lose."""

import random

import numpy as np
import pytest

from unimask.shapes.code_probe import object_code_features, probe_codes
from unimask.shapes.render import render_array
from unimask.shapes.scene import BACKGROUNDS, COLOURS, sample_scene

PALETTE = list(COLOURS.values()) + list(BACKGROUNDS.values())


def colour_only_codes(images):
    """A stand-in tokenizer whose 16 px cells carry only their most common colour (never the shape)."""
    grids = []
    for image in images:
        pixels = np.asarray(image).reshape(8, 16, 8, 16, 3).transpose(0, 2, 1, 3, 4).reshape(8, 8, 256, 3)
        grid = np.zeros((8, 8), dtype=np.int64)
        for row in range(8):
            for col in range(8):
                colours, counts = np.unique(pixels[row, col], axis=0, return_counts=True)
                grid[row, col] = PALETTE.index(tuple(int(v) for v in colours[counts.argmax()]))
        grids.append(grid)
    return grids


def test_bag_of_codes_counts_the_cells_under_the_box():
    grid = np.arange(64).reshape(8, 8)
    features = object_code_features(grid, (10, 20, 20), codebook_size=64)  # x 10..29, y 20..39
    assert features.sum() == 4 and features[grid[1, 0]] == features[grid[2, 1]] == 1


def test_probe_separates_carried_and_lost_attributes():
    rng = random.Random(0)
    train, test = [sample_scene(rng) for _ in range(300)], [sample_scene(rng) for _ in range(150)]
    result = probe_codes(colour_only_codes, train, test, codebook_size=len(PALETTE))
    assert result["colour"]["accuracy"] > 0.9
    # Only the area a colour covers hints at the shape (a square covers more cells than a triangle).
    assert result["shape"]["accuracy"] < 0.75
    assert set(result) == {"colour", "shape", "size"}


def test_probe_needs_objects():
    with pytest.raises(ValueError, match="train_scenes"):
        probe_codes(colour_only_codes, [], [sample_scene(random.Random(0))], codebook_size=4)
