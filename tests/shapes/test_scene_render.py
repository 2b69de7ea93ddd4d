"""Scenes: sampling rules, held-out exclusion, JSON round trip; rendering: exact and palette-pure."""

import random

import numpy as np
import pytest

from unimask.shapes.render import render, render_array, shape_mask
from unimask.shapes.scene import (
    BACKGROUNDS,
    CELLS,
    COLOURS,
    HELD_OUT_PAIRS,
    SIZES,
    Scene,
    ShapeObject,
    cell_centre,
    sample_scene,
)

THIRDS = [(0, 43), (43, 86), (86, 128)]


def test_sampled_scenes_follow_the_world_rules(rng):
    counts = set()
    for _ in range(2000):
        scene = sample_scene(rng)
        counts.add(len(scene.objects))
        assert 1 <= len(scene.objects) <= 3
        assert len({item.cell for item in scene.objects}) == len(scene.objects)
        assert not scene.held_out
        for item in scene.objects:
            assert all(abs(offset) <= 4 for offset in item.jitter)
            assert (item.colour, item.shape) not in HELD_OUT_PAIRS
    assert counts == {1, 2, 3}


def test_held_out_pairs_appear_only_when_allowed(rng):
    seen = {(item.colour, item.shape) for _ in range(1000)
            for item in sample_scene(rng, allow_held_out=True).objects}
    assert HELD_OUT_PAIRS <= seen


def test_every_object_box_lies_inside_its_own_third(random_scenes):
    for scene in random_scenes:
        for item in scene.objects:
            x0, y0, side = item.box()
            row, col = divmod(CELLS.index(item.cell), 3)
            assert THIRDS[col][0] <= x0 and x0 + side <= THIRDS[col][1]
            assert THIRDS[row][0] <= y0 and y0 + side <= THIRDS[row][1]


def test_cell_centres_and_sampling_are_deterministic():
    assert cell_centre("top left") == (21, 21)
    assert cell_centre("center") == (64, 64)
    assert cell_centre("bottom right") == (107, 107)
    assert sample_scene(random.Random(7)).to_json() == sample_scene(random.Random(7)).to_json()


def test_scene_json_round_trip_keeps_jitter(random_scenes):
    for scene in random_scenes[:200]:
        restored = Scene.from_json(scene.to_json())
        assert restored == scene
        assert [item.jitter for item in restored.objects] == [item.jitter for item in scene.objects]


def test_scene_equality_ignores_order_and_jitter():
    a = ShapeObject("circle", "red", "small", "top", (1, 2))
    b = ShapeObject("square", "blue", "large", "left", (0, 0))
    assert Scene("white", (a, b)) == Scene("white", (b, ShapeObject("circle", "red", "small", "top")))
    assert Scene("white", (a, b)) != Scene("black", (a, b))


@pytest.mark.parametrize("kwargs, message", [
    ({"shape": "star"}, "shape"), ({"colour": "pink"}, "colour"), ({"size": "huge"}, "size"),
    ({"cell": "middle"}, "cell"), ({"jitter": (5, 0)}, "jitter"),
])
def test_object_validation_names_the_argument(kwargs, message):
    fields = {"shape": "circle", "colour": "red", "size": "small", "cell": "top", **kwargs}
    with pytest.raises(ValueError, match=message):
        ShapeObject(**fields)


def test_scene_validation():
    item = ShapeObject("circle", "red", "small", "top")
    with pytest.raises(ValueError, match="share a cell"):
        Scene("white", (item, ShapeObject("square", "blue", "small", "top")))
    with pytest.raises(ValueError, match="background"):
        Scene("pink", (item,))
    with pytest.raises(ValueError, match="num_objects"):
        sample_scene(random.Random(0), num_objects=4)


def test_render_is_palette_pure_and_exact(random_scenes):
    allowed = {(r << 16) | (g << 8) | b for r, g, b in (*BACKGROUNDS.values(), *COLOURS.values())}
    for scene in random_scenes[:300]:
        pixels = render_array(scene)
        assert pixels.shape == (128, 128, 3) and pixels.dtype == np.uint8
        packed = (pixels[..., 0].astype(np.int64) << 16) | (pixels[..., 1].astype(np.int64) << 8) | pixels[..., 2]
        assert set(np.unique(packed).tolist()) <= allowed
        background = np.all(pixels == BACKGROUNDS[scene.background], axis=-1)
        expected_objects = sum(int(shape_mask(item.shape, SIZES[item.size]).sum()) for item in scene.objects)
        assert int((~background).sum()) == expected_objects
        for item in scene.objects:
            x0, y0, side = item.box()
            region = np.all(pixels[y0:y0 + side, x0:x0 + side] == COLOURS[item.colour], axis=-1)
            assert np.array_equal(region, shape_mask(item.shape, side))


@pytest.mark.parametrize("side", [20, 34])
def test_shape_masks_fill_their_box_as_documented(side):
    square, disc, triangle = (shape_mask(name, side) for name in ("square", "circle", "triangle"))
    for mask in (square, disc, triangle):
        assert mask.any(0).all() and mask.any(1).all()  # the box is exactly side x side
    assert square.mean() == 1.0
    assert abs(disc.mean() - np.pi / 4) < 0.01
    assert 0.5 < triangle.mean() < 0.56
    widths = triangle.sum(1)
    assert widths[0] == 2 and widths[-1] == side and np.all(np.diff(widths) >= 0)  # apex up
    assert np.array_equal(triangle, triangle[:, ::-1]) and np.array_equal(disc, disc.T)


def test_render_other_sizes_stay_palette_pure(random_scenes):
    scene = random_scenes[0]
    image = render(scene, size=256)
    assert image.size == (256, 256) and image.mode == "RGB"
    pixels = np.asarray(image)
    assert np.array_equal(pixels[::2, ::2], render_array(scene))
    with pytest.raises(ValueError, match="size"):
        render(scene, size=0)
