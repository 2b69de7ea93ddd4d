"""The checker reads back every rendered scene exactly and survives generated-image damage."""

import random

import numpy as np
import pytest
from PIL import Image, ImageFilter

from unimask.shapes.checker import cell_components, classify_shape, label_pixels, read_scene
from unimask.shapes.render import render, render_array
from unimask.shapes.scene import BACKGROUNDS, COLOURS, Scene, ShapeObject, sample_scene


def test_recovers_every_rendered_scene_exactly(random_scenes):
    wrong = [scene for scene in random_scenes if read_scene(render_array(scene)) != scene]
    assert not wrong, f"{len(wrong)} of {len(random_scenes)} misread, e.g. {wrong[0]}"


def test_recovers_jitter_of_rendered_scenes(random_scenes):
    for scene in random_scenes[:300]:
        read = read_scene(render_array(scene))
        assert [o.jitter for o in read.objects] == [o.jitter for o in scene.objects]


@pytest.mark.parametrize("damage", [
    {},                                     # blur 1, drift 15, noise 4, jpeg 75
    {"blur": 1.5, "drift": 0, "noise": 0},
    {"drift": 20, "noise": 8},
    {"jpeg_quality": 40},
])
def test_tolerates_blur_drift_noise_and_jpeg(degrade, damage):
    generator = random.Random(99)
    wrong = []
    for _ in range(150):
        scene = sample_scene(generator, allow_held_out=True)
        read = read_scene(degrade(render(scene), generator, **damage))
        if read != scene:
            wrong.append((scene, read))
    assert not wrong, f"{len(wrong)} of 150 misread, e.g. {wrong[0]}"


def test_reads_other_sizes_and_input_types(random_scenes):
    for scene in random_scenes[:40]:
        assert read_scene(render(scene, size=256)) == scene
        assert read_scene(render(scene).resize((200, 200), Image.BILINEAR)) == scene
        assert read_scene(render_array(scene).astype(np.float32) / 255.0) == scene
        assert read_scene(render(scene).convert("RGBA")) == scene


def test_ignores_speckle(random_scenes):
    generator = np.random.default_rng(0)
    for scene in random_scenes[:50]:
        pixels = render_array(scene).copy()
        for _ in range(30):  # isolated 2x2 blobs of palette colours on the background
            y, x = generator.integers(0, 126, size=2)
            if np.all(pixels[y:y + 2, x:x + 2] == BACKGROUNDS[scene.background]):
                pixels[y:y + 2, x:x + 2] = list(COLOURS.values())[generator.integers(0, len(COLOURS))]
        assert read_scene(pixels) == scene


def test_blank_image_reads_as_no_objects():
    assert read_scene(Image.new("RGB", (128, 128), BACKGROUNDS["gray"])) == Scene("gray", ())


def test_same_colour_neighbours_stay_separate():
    # Two large red squares jittered towards each other are 1 px apart; blur would join them.
    scene = Scene("white", (ShapeObject("square", "red", "large", "left", (4, 0)),
                            ShapeObject("square", "red", "large", "center", (-4, 0))))
    blurred = render(scene).filter(ImageFilter.GaussianBlur(1.5))
    assert read_scene(blurred) == scene


def test_building_blocks():
    pixels = np.array([[[250, 250, 250], [215, 45, 40]]], dtype=np.float32)
    assert label_pixels(pixels).tolist() == [[0, 3]]  # white, red
    mask = np.zeros((128, 128), dtype=bool)
    mask[10:20, 40:50] = True  # crosses the column border between thirds at x = 43
    components = cell_components(mask)
    assert len(np.unique(components[mask])) == 2
    assert classify_shape(fill=1.0, lower_share=0.5) == "square"
    assert classify_shape(fill=0.79, lower_share=0.5) == "circle"
    assert classify_shape(fill=0.55, lower_share=0.73) == "triangle"


def test_rejects_bad_inputs():
    with pytest.raises(ValueError, match="shape"):
        read_scene(np.zeros((128, 128), dtype=np.uint8))
    with pytest.raises(ValueError, match="dtype"):
        read_scene(np.full((128, 128, 3), 7.0))
    with pytest.raises(ValueError, match="min_area"):
        read_scene(np.zeros((128, 128, 3), dtype=np.uint8), min_area=0)
