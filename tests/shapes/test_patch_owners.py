"""Patch owners: every 16 px patch is named by the object with most pixels in it, or the background."""

import numpy as np
import pytest

from unimask.shapes.patch_owners import MIN_OWNED_PIXELS, patch_owners, patch_regions
from unimask.shapes.render import render_array
from unimask.shapes.scene import BACKGROUNDS, Scene, ShapeObject, sample_scene
from unimask.shapes.tasks import iter_samples


def _pixel_owner_counts(scene: Scene) -> np.ndarray:
    """(objects, 8, 8) object pixels per patch, read from the rendered image's colours."""
    pixels = render_array(scene).astype(int)
    counts = []
    for item in scene.objects:
        x0, y0, side = item.box()
        inside = np.zeros(pixels.shape[:2], dtype=bool)
        inside[max(y0, 0):y0 + side, max(x0, 0):x0 + side] = True
        own = inside & (np.abs(pixels - np.array(BACKGROUNDS[scene.background])).sum(-1) > 0)
        counts.append(own.reshape(8, 16, 8, 16).sum(axis=(1, 3)))
    return np.stack(counts)


def test_owner_is_the_object_with_most_pixels_above_the_floor(rng):
    for _ in range(200):
        scene = sample_scene(rng)
        owners = patch_owners(scene)
        counts = _pixel_owner_counts(scene)
        best = counts.argmax(0)
        expected = np.where(counts.max(0) >= MIN_OWNED_PIXELS, best, -1)
        assert owners.shape == (8, 8) and owners.dtype == np.int64
        assert np.array_equal(owners, expected)
        assert all((owners == index).any() for index in range(len(scene.objects)))  # no object is lost


def test_regions_name_every_patch_once():
    scene = Scene("gray", (ShapeObject("square", "red", "large", "top left", (0, 0)),
                           ShapeObject("circle", "blue", "small", "center", (4, -4))))
    regions = patch_regions(scene)
    assert [region["text"] for region in regions] == ["large red square", "small blue circle", "gray background"]
    cells = [cell for region in regions for cell in region["cells"]]
    assert sorted(cells) == list(range(64))
    assert 1 in regions[0]["cells"] and 63 in regions[2]["cells"]
    assert regions[0]["box"] == [4, 4, 38, 38]


def test_caption_shards_carry_patch_regions_on_request():
    sample = next(iter_samples(1, seed=2, kind="captions", patch_regions=True))
    scene = Scene.from_dict(sample["json"]["scene"])
    assert sample["json"]["regions"] == patch_regions(scene)
    plain = next(iter_samples(1, seed=2, kind="captions"))
    assert all("cells" not in region for region in plain["json"]["regions"])
    with pytest.raises(ValueError, match="patch_regions"):
        next(iter_samples(1, seed=2, kind="captions", patch_regions="yes"))
    with pytest.raises(ValueError, match="background_regions"):
        next(iter_samples(1, seed=2, kind="captions", patch_regions=True, background_regions=2))
    with pytest.raises(ValueError, match="min_pixels"):
        patch_owners(scene, min_pixels=0)
