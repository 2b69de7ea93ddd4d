"""PatchLookup: code grids drawn without a decoder, as the mean patch seen under each code."""

import random

import numpy as np
import pytest
import torch

from unimask.shapes.checker import read_scene
from unimask.shapes.patch_lookup import PatchLookup
from unimask.shapes.render import render
from unimask.shapes.scene import BACKGROUNDS, COLOURS, sample_scene
from unimask.shapes.scoring import text_to_image_score

LISTED = np.array(list(BACKGROUNDS.values()) + list(COLOURS.values()), dtype=np.float64)


def colour_codes(images):
    """Stand-in tokenizer: each 16 px cell -> the index of the listed colour nearest its centre pixel."""
    grids = []
    for image in images:
        pixels = np.asarray(image, dtype=np.float64)[8::16, 8::16]  # (8, 8, 3) cell centres
        grids.append(np.linalg.norm(pixels[:, :, None] - LISTED, axis=-1).argmin(-1))
    return torch.as_tensor(np.stack(grids))


def test_true_grids_drawn_by_the_lookup_keep_background_and_colours():
    rng = random.Random(0)
    lookup = PatchLookup.fit(colour_codes, [sample_scene(rng) for _ in range(60)], codebook_size=len(LISTED))
    scenes = [sample_scene(rng) for _ in range(12)]
    drawn = [lookup.render(grid) for grid in colour_codes([render(scene) for scene in scenes])]
    assert drawn[0].size == (128, 128)
    reads = [read_scene(image) for image in drawn]
    assert [r.background for r in reads] == [s.background for s in scenes]
    assert text_to_image_score(reads, scenes)["soft"] > 0.5


def test_each_code_draws_the_mean_of_its_cells_and_unseen_codes_the_overall_mean():
    patches = np.zeros((3, 2, 2, 3))
    patches[0], patches[1] = 10.0, 200.0
    lookup = PatchLookup(patches, np.array([1, 3, 0]))
    image = np.asarray(lookup.render([[0, 1], [2, 2]]))
    assert image.shape == (4, 4, 3)
    assert (image[:2, :2] == 10).all() and (image[:2, 2:] == 200).all()
    assert (image[2:] == round((10 + 3 * 200) / 4)).all()


@pytest.mark.parametrize("grid, message", [([0, 1], "\\(h, w\\)"), ([[0, 5]], "must be in")])
def test_bad_grids_are_refused(grid, message):
    lookup = PatchLookup(np.zeros((3, 2, 2, 3)), np.ones(3))
    with pytest.raises(ValueError, match=message):
        lookup.render(grid)


def test_fit_refuses_codes_outside_the_codebook():
    with pytest.raises(ValueError, match="codes must be in"):
        PatchLookup.fit(colour_codes, [sample_scene(random.Random(1))], codebook_size=2)
