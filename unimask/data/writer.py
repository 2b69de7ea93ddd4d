"""Write shards (see :mod:`unimask.data.shard_format`) from images + captions, a jsonl, or a generator.

Each shard is written to ``<name>.tar.tmp`` and renamed to ``<name>.tar`` once complete, so a
crashed writer never leaves a truncated ``.tar`` behind.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import webdataset as wds
from PIL import Image, ImageOps

from unimask.data.shard_format import encode_record
from unimask.tokenizers.image_preprocessing import MAX_INPUT_PIXELS

__all__ = [
    "GENERATORS",
    "write_shards",
    "samples_from_image_folder",
    "samples_from_jsonl",
    "samples_from_generator",
    "resolve_generator",
]

logger = logging.getLogger(__name__)

_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")

# name -> "module:function"; the function takes (count, seed, **options) and yields sample dicts.
# Imported lazily so that a missing generator module fails only when it is asked for.
GENERATORS: dict[str, str] = {
    "shapes": "unimask.shapes.tasks:iter_samples",
    "toy": "unimask.training.stage_toy:toy_regression_samples",
}


def _read_rgb_image(path: Path, where: str) -> Image.Image:
    """Decode the image file ``path`` as upright (EXIF orientation applied) RGB.

    Raises:
        ValueError: naming ``where`` and the file, for unreadable, truncated or corrupt data and for
            images over the 64 Mpx decompression-bomb limit (checked from the header, before decoding).
    """
    try:
        with Image.open(path) as image:
            width, height = image.size
            if width * height > MAX_INPUT_PIXELS:
                raise ValueError(
                    f"{width} x {height} pixels exceed the limit of {MAX_INPUT_PIXELS} (decompression-bomb guard)"
                )
            image.seek(0)
            return ImageOps.exif_transpose(image).convert("RGB")
    except (OSError, SyntaxError, EOFError, ValueError, Image.DecompressionBombError) as err:
        raise ValueError(f"{where}: image {str(path)!r} cannot be used: {err}") from None


def _finish_shard(temp_name: str) -> None:
    final = temp_name[: -len(".tmp")]
    with open(temp_name, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(temp_name, final)


def write_shards(
    samples: Iterable[dict[str, Any]],
    out_dir: str | Path,
    *,
    prefix: str = "shard",
    max_count: int = 1000,
    max_size: float = 1e9,
    image_format: str = "png",
) -> list[Path]:
    """Write in-memory samples into webdataset shards ``out_dir/<prefix>-%06d.tar``.

    Args:
        samples: sample dicts (``__key__``, ``json``, optional ``images`` and ``codes``); keys must
            be unique within the run.
        out_dir: output folder (created).
        prefix: shard file name prefix (no ``/`` or ``%``).
        max_count: most samples per shard, >= 1.
        max_size: most bytes per shard (a shard is closed once it reaches this size), > 0.
        image_format: ``"png"`` or ``"jpg"``.
    Returns:
        The written shard paths in order.
    Raises:
        ValueError: invalid argument or sample, duplicate key, or no samples at all.
    """
    if not isinstance(max_count, int) or max_count < 1:
        raise ValueError(f"max_count={max_count!r} must be an integer >= 1")
    if not max_size > 0:
        raise ValueError(f"max_size={max_size!r} must be > 0")
    if not prefix or "/" in prefix or "%" in prefix:
        raise ValueError(f"prefix={prefix!r} must be a non-empty name without '/' or '%'")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[str] = []

    def finish(temp_name: str) -> None:
        _finish_shard(temp_name)
        written.append(temp_name[: -len(".tmp")])

    seen_keys: set[str] = set()
    iterator = iter(samples)
    first = next(iterator, None)
    if first is None:
        raise ValueError("samples is empty: nothing to write")
    pattern = str(out_dir / f"{prefix}-%06d.tar.tmp")
    with wds.ShardWriter(pattern, maxcount=max_count, maxsize=max_size, post=finish, verbose=0) as sink:
        for sample in _chain(first, iterator):
            record = encode_record(sample, image_format=image_format)
            if record["__key__"] in seen_keys:
                raise ValueError(f"duplicate sample key {record['__key__']!r}")
            seen_keys.add(record["__key__"])
            sink.write(record)
    logger.info("wrote %d samples into %d shards in %s", len(seen_keys), len(written), out_dir)
    return [Path(p) for p in written]


def _chain(first: dict[str, Any], rest: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    yield first
    yield from rest


def samples_from_image_folder(folder: str | Path, *, task: str = "caption") -> Iterator[dict[str, Any]]:
    """Samples from a folder of images with same-stem ``.txt`` captions (``cat.png`` + ``cat.txt``).

    Yields:
        ``{"__key__": "00000000", "json": {"task": task, "caption": str, "source": file name},
        "images": [PIL RGB image]}`` in sorted file-name order; images without a caption are
        skipped with a warning.
    Raises:
        ValueError: ``folder`` is not a directory.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"image folder {str(folder)!r} is not a directory")
    index = 0
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() not in _IMAGE_SUFFIXES:
            continue
        caption_path = path.with_suffix(".txt")
        if not caption_path.is_file():
            logger.warning("skipping %s: no caption file %s", path, caption_path.name)
            continue
        rgb = _read_rgb_image(path, f"image folder {str(folder)!r}")
        caption = caption_path.read_text(encoding="utf-8").strip()
        yield {"__key__": f"{index:08d}", "json": {"task": task, "caption": caption, "source": path.name}, "images": [rgb]}
        index += 1


def samples_from_jsonl(path: str | Path) -> Iterator[dict[str, Any]]:
    """Samples from a jsonl file: one task per line.

    Each line is a JSON object with ``"task"``, its text fields, optionally ``"images"`` (paths
    relative to the jsonl's folder, or absolute) and optionally ``"key"``; everything except
    ``images`` and ``key`` goes to the sample's ``json``.

    Raises:
        ValueError: the file is missing, or a line (named by number) is not a valid object or names a
            missing, unreadable or over-limit image.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"jsonl file {str(path)!r} does not exist")
    with path.open(encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{line_number}: invalid JSON: {err}") from None
            if not isinstance(item, dict) or not isinstance(item.get("task"), str):
                raise ValueError(f"{path}:{line_number}: expected an object with a string 'task'")
            image_paths = item.pop("images", [])
            key = str(item.pop("key", f"{line_number:08d}"))
            images = []
            for image_path in image_paths:
                full = Path(image_path) if os.path.isabs(image_path) else path.parent / image_path
                if not full.is_file():
                    raise ValueError(f"{path}:{line_number}: image {str(full)!r} does not exist")
                images.append(_read_rgb_image(full, f"{path}:{line_number}"))
            item.setdefault("n_images", len(images))
            yield {"__key__": key, "json": item, "images": images}


def resolve_generator(name: str) -> Callable[..., Iterable[dict[str, Any]]]:
    """The sample generator registered under ``name`` in :data:`GENERATORS` (imported lazily).

    Raises:
        ValueError: unknown name, or its module is not available in this installation.
    """
    if name not in GENERATORS:
        raise ValueError(f"unknown generator {name!r}; available: {sorted(GENERATORS)}")
    module_name, function_name = GENERATORS[name].split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        raise ValueError(f"generator {name!r} needs module {module_name}, which is not available: {err}") from None
    function = getattr(module, function_name, None)
    if function is None:
        raise ValueError(f"generator {name!r}: {module_name} has no function {function_name!r}")
    return function


def samples_from_generator(name: str, count: int, seed: int = 0, **options: Any) -> Iterable[dict[str, Any]]:
    """``count`` samples from the generator registered as ``name`` (``"shapes"``, ``"toy"``).

    Raises:
        ValueError: unknown generator or ``count`` < 1.
    """
    if not isinstance(count, int) or count < 1:
        raise ValueError(f"count={count!r} must be an integer >= 1")
    return resolve_generator(name)(count=count, seed=seed, **options)
