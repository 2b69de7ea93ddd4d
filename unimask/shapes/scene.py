"""Scenes of Shapes World: the constants of the world, the scene dataclasses and the sampler.

A scene is a solid background plus 1 to 3 flat objects, each in its own cell of a 3 x 3 grid
over a 128 x 128 canvas (see ``docs/shapes-world.md``). Objects carry their jitter (offset of
their centre from the cell centre) so that rendering a stored scene is reproducible; jitter is a
rendering detail and takes no part in scene equality, which compares background, shape, colour,
size and cell only.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from typing import Any

CANVAS_SIZE = 128
GRID_SIZE = 3
MAX_JITTER = 4

BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "white": (255, 255, 255),
    "black": (20, 20, 20),
    "gray": (128, 128, 128),
}
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 200, 40),
    "purple": (140, 60, 180),
    "orange": (240, 130, 30),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
# Side of the object's bounding box in pixels.
SIZES: dict[str, int] = {"small": 20, "large": 34}
# Row by row, top to bottom, left to right.
CELLS: tuple[str, ...] = (
    "top left", "top", "top right",
    "left", "center", "right",
    "bottom left", "bottom", "bottom right",
)
# (colour, shape) pairs that never appear in training samples; evaluation uses them.
HELD_OUT_PAIRS: frozenset[tuple[str, str]] = frozenset({("purple", "triangle"), ("orange", "circle")})
MIN_OBJECTS = 1
MAX_OBJECTS = 3


def cell_centre(cell: str) -> tuple[int, int]:
    """Pixel centre ``(x, y)`` of a named cell: 21, 64 or 107 on each axis.

    With these centres, a jitter of at most 4 px and a 34 px box, every object lies inside its
    own third of the canvas (0-42, 43-85, 86-127), which the checker relies on.
    """
    if cell not in CELLS:
        raise ValueError(f"cell={cell!r} is not one of {CELLS}")
    index = CELLS.index(cell)
    row, col = divmod(index, GRID_SIZE)
    step = CANVAS_SIZE / GRID_SIZE
    return round((col + 0.5) * step), round((row + 0.5) * step)


def is_held_out(colour: str, shape: str) -> bool:
    """True when the (colour, shape) pair is reserved for evaluation."""
    return (colour, shape) in HELD_OUT_PAIRS


@dataclass(frozen=True)
class ShapeObject:
    """One object: ``shape`` in SHAPES, ``colour`` in COLOURS, ``size`` in SIZES, ``cell`` in CELLS.

    ``jitter`` is the ``(dx, dy)`` pixel offset of the centre from the cell centre, each in
    ``[-MAX_JITTER, MAX_JITTER]``; it is excluded from equality and hashing.
    """

    shape: str
    colour: str
    size: str
    cell: str
    jitter: tuple[int, int] = field(default=(0, 0), compare=False)

    def __post_init__(self) -> None:
        if self.shape not in SHAPES:
            raise ValueError(f"shape={self.shape!r} is not one of {SHAPES}")
        if self.colour not in COLOURS:
            raise ValueError(f"colour={self.colour!r} is not one of {tuple(COLOURS)}")
        if self.size not in SIZES:
            raise ValueError(f"size={self.size!r} is not one of {tuple(SIZES)}")
        if self.cell not in CELLS:
            raise ValueError(f"cell={self.cell!r} is not one of {CELLS}")
        jitter = tuple(int(offset) for offset in self.jitter)
        if len(jitter) != 2 or any(abs(offset) > MAX_JITTER for offset in jitter):
            raise ValueError(f"jitter={self.jitter!r} must be two ints in [-{MAX_JITTER}, {MAX_JITTER}]")
        object.__setattr__(self, "jitter", jitter)

    @property
    def held_out(self) -> bool:
        """True when this object's (colour, shape) pair is held out of training."""
        return is_held_out(self.colour, self.shape)

    def box(self) -> tuple[int, int, int]:
        """Bounding box as ``(x0, y0, side)``: pixels ``x0 .. x0 + side - 1`` (same for y)."""
        centre_x, centre_y = cell_centre(self.cell)
        side = SIZES[self.size]
        return centre_x + self.jitter[0] - side // 2, centre_y + self.jitter[1] - side // 2, side

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict with every field, jitter included."""
        return {"shape": self.shape, "colour": self.colour, "size": self.size, "cell": self.cell,
                "jitter": list(self.jitter)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ShapeObject:
        """Inverse of :meth:`to_dict` (``jitter`` optional, default ``(0, 0)``)."""
        return cls(shape=data["shape"], colour=data["colour"], size=data["size"], cell=data["cell"],
                   jitter=tuple(data.get("jitter", (0, 0))))


@dataclass(frozen=True)
class Scene:
    """A background name (in BACKGROUNDS) and objects in distinct cells.

    Objects are kept in reading order of their cells (top left first), so two scenes with the
    same content compare equal whatever order they were built in, and captions are canonical.
    The dataclass accepts 0 to 9 objects so that a checker can report whatever it sees; scenes
    of the world itself (sampled, edited) have 1 to 3.
    """

    background: str
    objects: tuple[ShapeObject, ...] = ()

    def __post_init__(self) -> None:
        if self.background not in BACKGROUNDS:
            raise ValueError(f"background={self.background!r} is not one of {tuple(BACKGROUNDS)}")
        objects = tuple(self.objects)
        for item in objects:
            if not isinstance(item, ShapeObject):
                raise ValueError(f"objects must hold ShapeObject items, got {type(item).__name__}")
        cells = [item.cell for item in objects]
        if len(set(cells)) != len(cells):
            raise ValueError(f"objects share a cell: cells={cells}")
        object.__setattr__(self, "objects", tuple(sorted(objects, key=lambda item: CELLS.index(item.cell))))

    @property
    def held_out(self) -> bool:
        """True when any object is a held-out (colour, shape) pair."""
        return any(item.held_out for item in self.objects)

    def object_at(self, cell: str) -> ShapeObject | None:
        """The object in ``cell``, or None when the cell is empty."""
        for item in self.objects:
            if item.cell == cell:
                return item
        return None

    def free_cells(self) -> list[str]:
        """Empty cells in reading order."""
        used = {item.cell for item in self.objects}
        return [cell for cell in CELLS if cell not in used]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict: ``{"background": str, "objects": [object dicts]}``."""
        return {"background": self.background, "objects": [item.to_dict() for item in self.objects]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Scene:
        """Inverse of :meth:`to_dict`."""
        return cls(background=data["background"],
                   objects=tuple(ShapeObject.from_dict(item) for item in data["objects"]))

    def to_json(self) -> str:
        """Compact JSON string of :meth:`to_dict`."""
        return json.dumps(self.to_dict(), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> Scene:
        """Inverse of :meth:`to_json`."""
        return cls.from_dict(json.loads(text))


def object_kinds(allow_held_out: bool = False) -> list[tuple[str, str, str]]:
    """Every ``(shape, colour, size)`` an object may have, held-out pairs only when asked."""
    return [(shape, colour, size) for shape in SHAPES for colour in COLOURS for size in SIZES
            if allow_held_out or not is_held_out(colour, shape)]


def sample_jitter(rng: random.Random) -> tuple[int, int]:
    """A uniform integer ``(dx, dy)`` jitter in ``[-MAX_JITTER, MAX_JITTER]`` on each axis."""
    return rng.randint(-MAX_JITTER, MAX_JITTER), rng.randint(-MAX_JITTER, MAX_JITTER)


def sample_object(rng: random.Random, cell: str, allow_held_out: bool = False) -> ShapeObject:
    """A uniformly random object kind placed in ``cell`` with random jitter."""
    shape, colour, size = rng.choice(object_kinds(allow_held_out))
    return ShapeObject(shape=shape, colour=colour, size=size, cell=cell, jitter=sample_jitter(rng))


def sample_scene(
    rng: random.Random,
    num_objects: int | None = None,
    allow_held_out: bool = False,
    background: str | None = None,
) -> Scene:
    """Sample a scene of the world.

    Args:
        rng: the random source; the scene is a pure function of its state.
        num_objects: 1 to 3, or None for uniform over 1 to 3.
        allow_held_out: when False (training), no object is a held-out (colour, shape) pair.
        background: a name in BACKGROUNDS, or None for uniform.

    Returns:
        A Scene with distinct cells and stored jitter.
    """
    if num_objects is None:
        num_objects = rng.randint(MIN_OBJECTS, MAX_OBJECTS)
    if not MIN_OBJECTS <= num_objects <= MAX_OBJECTS:
        raise ValueError(f"num_objects={num_objects} must be in [{MIN_OBJECTS}, {MAX_OBJECTS}]")
    if background is None:
        background = rng.choice(tuple(BACKGROUNDS))
    elif background not in BACKGROUNDS:
        raise ValueError(f"background={background!r} is not one of {tuple(BACKGROUNDS)}")
    cells = rng.sample(CELLS, num_objects)
    return Scene(background, tuple(sample_object(rng, cell, allow_held_out) for cell in cells))
