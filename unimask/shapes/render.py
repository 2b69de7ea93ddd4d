"""Render a Shapes World scene to pixels, anti-aliasing off.

Every pixel is exactly the background colour or one palette colour. A pixel belongs to a shape
when its centre lies inside the shape's outline:
- circle: a disc of diameter ``side`` inscribed in the box;
- square: the whole box;
- triangle: isosceles, apex up, base on the bottom row of the box; row ``r`` (0 at the top) is
  ``2 * floor(r / 2) + 2`` pixels wide, centred, so the apex row is 2 pixels and the base row
  spans the box.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from PIL import Image

from unimask.shapes.scene import BACKGROUNDS, CANVAS_SIZE, COLOURS, Scene


@lru_cache(maxsize=None)
def shape_mask(shape: str, side: int) -> np.ndarray:
    """Boolean mask ``(side, side)`` of the pixels a ``shape`` covers inside its box."""
    centres = np.arange(side) + 0.5
    offset_x = np.abs(centres[None, :] - side / 2)
    offset_y = np.abs(centres[:, None] - side / 2)
    if shape == "square":
        mask = np.ones((side, side), dtype=bool)
    elif shape == "circle":
        mask = offset_x**2 + offset_y**2 <= (side / 2) ** 2
    elif shape == "triangle":
        # Half width grows by one pixel every two rows, so the outline is symmetric and the
        # apex row is not empty (a true zero-width apex would shrink the box by a row).
        half_width = (np.arange(side)[:, None] // 2 + 1).astype(float)
        mask = offset_x < half_width
    else:
        raise ValueError(f"shape={shape!r} is not one of ('circle', 'square', 'triangle')")
    mask.setflags(write=False)
    return mask


def render_array(scene: Scene) -> np.ndarray:
    """Pixels of ``scene``: ``(128, 128, 3)`` uint8, each the background or a palette colour."""
    canvas = np.empty((CANVAS_SIZE, CANVAS_SIZE, 3), dtype=np.uint8)
    canvas[:] = BACKGROUNDS[scene.background]
    for item in scene.objects:
        x0, y0, side = item.box()
        region = canvas[y0:y0 + side, x0:x0 + side]
        region[shape_mask(item.shape, side)] = COLOURS[item.colour]
    return canvas


def render(scene: Scene, size: int = 128) -> Image.Image:
    """Render ``scene`` as an RGB PIL image of ``size x size`` pixels.

    The scene is drawn on the 128 x 128 canvas; other sizes are resized with nearest-neighbour
    so the image stays palette-pure.
    """
    if not isinstance(size, int) or size < 1:
        raise ValueError(f"size={size!r} must be a positive int")
    image = Image.fromarray(render_array(scene))
    if size != CANVAS_SIZE:
        image = image.resize((size, size), Image.NEAREST)
    return image

