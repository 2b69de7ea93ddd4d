"""Read a Shapes World scene back from an image (rendered or generated).

Steps: resize to 128 x 128; label every pixel with the nearest palette or background colour;
take the most common background label as the background; find connected components of
non-background pixels (4-connectivity), never linking across the 3 x 3 cell borders (every
object of the world lies inside its own cell, see ``scene.cell_centre``), so blurred neighbours
cannot merge; drop speckle components; keep the largest component per cell. Then, with each
pixel's blend weight between the background and the object colour (1 object, 0 background;
the background also measures any global colour drift), read
- colour: the palette colour whose blends with the background best fit the component's pixels;
- size: the extent (20 or 34 px) of the pixels at least half object colour;
- shape: how much of its box the object fills (square ~1.0, disc ~0.79, triangle ~0.55), with
  triangles told apart first by the share of their mass in the lower half of the box (~0.73
  against 0.5), which stays clear when blur eats the thin apex;
- cell: the cell it lies in; jitter: the box centre (located by the bottom edge and the
  horizontal extent, which survive blur) minus the cell centre.
Every rendered scene is recovered exactly, jitter included; blur, JPEG, colour drift and light
noise of generated images move edges by a pixel or so, which these measures absorb.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from PIL import Image

from unimask.shapes.scene import (
    BACKGROUNDS,
    CANVAS_SIZE,
    CELLS,
    COLOURS,
    GRID_SIZE,
    MAX_JITTER,
    SIZES,
    Scene,
    ShapeObject,
    cell_centre,
)

REFERENCE_NAMES: tuple[str, ...] = tuple(BACKGROUNDS) + tuple(COLOURS)
REFERENCE_RGB = np.array([*BACKGROUNDS.values(), *COLOURS.values()], dtype=np.float32)
NUM_BACKGROUNDS = len(BACKGROUNDS)
# Components smaller than this are speckle; the smallest object (a small triangle) has 220 px.
MIN_OBJECT_AREA = 60
# Lower-half share of an object's mass in its box: triangle ~0.73, disc and square 0.5.
TRIANGLE_MIN_LOWER_SHARE = 0.62
# Box fill between disc (~0.79) and square (1.0).
SQUARE_MIN_FILL = 0.89
# Pixels around the box whose blurred mass still belongs to the object.
BLUR_MARGIN = 3
# A border row or column of an object mask with fewer pixels than this share of the fullest
# one is trimmed as noise (a small triangle's 2-pixel apex rows go too, harmlessly).
EDGE_MIN_SHARE = 0.15
# Extent threshold between small (20 px) and large (34 px).
LARGE_MIN_EXTENT = (SIZES["small"] + SIZES["large"]) / 2

# Cell row/column of every pixel coordinate: floor(x * 3 / 128) gives the thirds 0-42, 43-85, 86-127.
_THIRD_OF_COORDINATE = np.arange(CANVAS_SIZE) * GRID_SIZE // CANVAS_SIZE


def to_canvas(image: Image.Image | np.ndarray) -> np.ndarray:
    """Any RGB(A)/L image as ``(128, 128, 3)`` float32 pixels in [0, 255].

    Accepts a PIL image or an array ``(height, width, 3)`` (uint8, or float in [0, 1]).
    Downscaling uses a box filter (exact for integer factors of a rendered image), upscaling
    bilinear.
    """
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] not in (3, 4):
            raise ValueError(f"image array shape={image.shape} must be (height, width, 3)")
        if image.dtype != np.uint8:
            if not np.issubdtype(image.dtype, np.floating) or image.min() < 0 or image.max() > 1:
                raise ValueError(f"image array dtype={image.dtype} must be uint8, or float in [0, 1]")
            image = np.round(image * 255).astype(np.uint8)
        image = Image.fromarray(np.ascontiguousarray(image[:, :, :3]))
    elif not isinstance(image, Image.Image):
        raise ValueError(f"image must be a PIL.Image or numpy array, got {type(image).__name__}")
    image = image.convert("RGB")
    if image.size != (CANVAS_SIZE, CANVAS_SIZE):
        shrinking = image.size[0] > CANVAS_SIZE or image.size[1] > CANVAS_SIZE
        image = image.resize((CANVAS_SIZE, CANVAS_SIZE), Image.BOX if shrinking else Image.BILINEAR)
    return np.asarray(image, dtype=np.float32)


def label_pixels(pixels: np.ndarray) -> np.ndarray:
    """Nearest reference colour of every pixel.

    Args:
        pixels: ``(height, width, 3)`` float RGB in [0, 255].

    Returns:
        ``(height, width)`` int64 index into REFERENCE_NAMES (backgrounds first, then colours).
    """
    # |p - c|^2 = |p|^2 - 2 p.c + |c|^2, and |p|^2 does not change the argmin over c.
    scores = pixels.astype(np.float32) @ (-2 * REFERENCE_RGB.T) + (REFERENCE_RGB**2).sum(-1)
    return scores.argmin(-1)


def cell_components(foreground: np.ndarray) -> np.ndarray:
    """4-connected components of ``foreground`` that never cross a cell border.

    Args:
        foreground: ``(128, 128)`` bool.

    Returns:
        ``(128, 128)`` int64: for a foreground pixel the flat index of the smallest pixel of its
        component, for a background pixel ``128 * 128``.
    """
    height, width = foreground.shape
    none = height * width
    flat_index = np.arange(none).reshape(height, width)
    component = np.where(foreground, flat_index, none)
    same_cell_x = _THIRD_OF_COORDINATE[1:] == _THIRD_OF_COORDINATE[:-1]
    link_right = foreground[:, 1:] & foreground[:, :-1] & same_cell_x[None, :]
    link_down = foreground[1:, :] & foreground[:-1, :] & same_cell_x[:, None]
    padded = np.append(component.ravel(), none)
    while True:
        proposal = component.copy()
        np.minimum(proposal[:, :-1], np.where(link_right, component[:, 1:], none), out=proposal[:, :-1])
        np.minimum(proposal[:, 1:], np.where(link_right, component[:, :-1], none), out=proposal[:, 1:])
        np.minimum(proposal[:-1, :], np.where(link_down, component[1:, :], none), out=proposal[:-1, :])
        np.minimum(proposal[1:, :], np.where(link_down, component[:-1, :], none), out=proposal[1:, :])
        # Pointer jumping: a label is a pixel of the same component, so that pixel's label is
        # one too; each jump doubles how far labels travel per pass.
        for _ in range(3):
            padded[:-1] = proposal.ravel()
            proposal = padded[proposal]
        if np.array_equal(proposal, component):
            return component
        component = proposal


def _cell_block(cell: str) -> tuple[slice, slice]:
    """Row and column slices of the third of the canvas that ``cell`` covers."""
    row, col = divmod(CELLS.index(cell), GRID_SIZE)
    rows = np.flatnonzero(_THIRD_OF_COORDINATE == row)
    cols = np.flatnonzero(_THIRD_OF_COORDINATE == col)
    return slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)


def _blend_weight(pixels: np.ndarray, background_rgb: np.ndarray, object_rgb: np.ndarray) -> np.ndarray:
    """How much of each pixel is object colour: 0 background, 1 object, linear in between.

    A blurred edge is a linear blend of object and background, so the weights keep the object's
    mass under blur; blends that happen to be nearest a third palette colour (red on white
    reads orange) count by their weight, not their label.
    """
    direction = object_rgb - background_rgb
    weight = (pixels - background_rgb) @ direction / max(float(direction @ direction), 1.0)
    return np.clip(weight, -0.5, 1.0)


def _fit_colour(object_pixels: np.ndarray, background_rgb: np.ndarray, drift: np.ndarray) -> int:
    """Index in COLOURS of the colour whose blends with the background best explain the pixels.

    ``object_pixels``: ``(n, 3)`` float. A small blurred object is mostly blend; orange fading
    into white passes near yellow, so the nearest-colour vote can be wrong while the blend
    line through the right colour still fits every pixel.
    """
    palette = REFERENCE_RGB[NUM_BACKGROUNDS:] + drift
    directions = palette - background_rgb  # (colours, 3)
    offsets = object_pixels - background_rgb  # (n, 3)
    amounts = np.clip(offsets @ directions.T / (directions**2).sum(-1), 0.0, 1.0)  # (n, colours)
    residuals = offsets[:, None, :] - amounts[:, :, None] * directions[None]
    return int((residuals**2).sum(-1).sum(0).argmin())


def _trimmed_extent(mask: np.ndarray) -> tuple[int, int, int, int]:
    """``(top, bottom, left, right)`` (end exclusive) of ``mask``, dropping stray border lines.

    A border row or column with fewer pixels than EDGE_MIN_SHARE of the fullest one is JPEG
    ringing or noise, not an edge.
    """
    row_counts, col_counts = mask.sum(1), mask.sum(0)
    rows = np.flatnonzero(row_counts >= EDGE_MIN_SHARE * row_counts.max())
    cols = np.flatnonzero(col_counts >= EDGE_MIN_SHARE * col_counts.max())
    return rows[0], rows[-1] + 1, cols[0], cols[-1] + 1


def classify_shape(fill: float, lower_share: float) -> str:
    """``circle``, ``square`` or ``triangle`` from two measures of an object in its box.

    Args:
        fill: object mass over box area: square 1.0, disc ~0.79, triangle ~0.55.
        lower_share: share of the mass in the lower half of the box: triangle ~0.73, disc
            and square 0.5. It separates triangles more robustly than fill, which blur and a
            lost apex shift.
    """
    if lower_share >= TRIANGLE_MIN_LOWER_SHARE:
        return "triangle"
    return "square" if fill >= SQUARE_MIN_FILL else "circle"


def _measure_object(
    pixels: np.ndarray, core: np.ndarray, cell: str, background_rgb: np.ndarray, object_rgb: np.ndarray
) -> tuple[str, str, tuple[int, int]]:
    """``(shape, size, jitter)`` of the object whose labelled pixels are ``core`` in ``cell``."""
    rows, cols = _cell_block(cell)
    weight = _blend_weight(pixels[rows, cols], background_rgb, object_rgb)
    # Only pixels near the labelled core: other blobs in the cell are speckle.
    ys, xs = np.nonzero(core[rows, cols])
    near = np.zeros(weight.shape, dtype=bool)
    near[max(ys.min() - 2, 0):ys.max() + 3, max(xs.min() - 2, 0):xs.max() + 3] = True
    solid = (weight >= 0.5) & near
    top, bottom, left, right = _trimmed_extent(solid if solid.any() else core[rows, cols])
    size = "large" if max(bottom - top, right - left) >= LARGE_MIN_EXTENT else "small"
    side = SIZES[size]
    # The bottom edge and the horizontal extent locate the box: they survive blur, while a
    # triangle's thin apex may not.
    box_left = int(round((left + right - side) / 2))
    box_top = bottom - side
    window_top = max(box_top - BLUR_MARGIN, 0)
    window = weight[window_top:bottom + BLUR_MARGIN, max(box_left - BLUR_MARGIN, 0):box_left + side + BLUR_MARGIN]
    mass = float(window.sum())
    lower_mass = float(window[max(box_top + side // 2 - window_top, 0):].sum())
    solid_in_box = solid[max(box_top, 0):bottom, max(box_left, 0):box_left + side]
    shape = classify_shape(float(solid_in_box.sum()) / side**2, lower_mass / max(mass, 1e-6))
    centre_x, centre_y = cell_centre(cell)
    offsets = (cols.start + box_left + side / 2 - centre_x,
               rows.start + box_top + side / 2 - centre_y)
    jitter = tuple(int(np.clip(round(offset), -MAX_JITTER, MAX_JITTER)) for offset in offsets)
    return shape, size, jitter


def read_scene(image: Image.Image | np.ndarray, min_area: int = MIN_OBJECT_AREA) -> Scene:
    """The scene shown by ``image``.

    Args:
        image: PIL image or ``(height, width, 3)`` array, any size (resized to 128 x 128).
        min_area: components with fewer pixels are ignored as speckle.

    Returns:
        A Scene with the background and, per occupied cell, the object's shape, colour, size,
        cell and estimated jitter (0 to 9 objects; compare to a truth scene with ``==``).
    """
    if min_area < 1:
        raise ValueError(f"min_area={min_area} must be >= 1")
    pixels = to_canvas(image)
    labels = label_pixels(pixels)
    background_counts = np.bincount(labels.ravel(), minlength=len(REFERENCE_NAMES))[:NUM_BACKGROUNDS]
    background = REFERENCE_NAMES[int(background_counts.argmax())]
    # Pixels nearest another background colour are blends at object borders, not objects.
    foreground = labels >= NUM_BACKGROUNDS
    component = cell_components(foreground)
    areas = np.bincount(component.ravel(), minlength=component.size + 1)[:-1]
    largest_per_cell: dict[str, tuple[int, int]] = {}
    for root in np.flatnonzero(areas >= min_area):
        row, col = divmod(int(root), CANVAS_SIZE)
        cell = CELLS[_THIRD_OF_COORDINATE[row] * GRID_SIZE + _THIRD_OF_COORDINATE[col]]
        if cell not in largest_per_cell or areas[root] > largest_per_cell[cell][1]:
            largest_per_cell[cell] = (int(root), int(areas[root]))
    background_rgb = pixels[labels == REFERENCE_NAMES.index(background)].mean(0)
    # Generated images drift in colour as a whole; the background shows by how much.
    drift = background_rgb - REFERENCE_RGB[REFERENCE_NAMES.index(background)]
    objects = []
    for cell, (root, _) in largest_per_cell.items():
        core = component == root
        colour_label = NUM_BACKGROUNDS + _fit_colour(pixels[core], background_rgb, drift)
        object_rgb = REFERENCE_RGB[colour_label] + drift
        shape, size, jitter = _measure_object(pixels, core, cell, background_rgb, object_rgb)
        objects.append(ShapeObject(
            shape=shape,
            colour=REFERENCE_NAMES[colour_label],
            size=size,
            cell=cell,
            jitter=jitter,
        ))
    return Scene(background, tuple(objects))


def read_scenes(images: Iterable[Image.Image | np.ndarray], min_area: int = MIN_OBJECT_AREA) -> list[Scene]:
    """:func:`read_scene` of every image, in order."""
    return [read_scene(image, min_area=min_area) for image in images]
