"""The unimask shard format: one webdataset record per training sample.

A shard is a POSIX tar file (``name-000000.tar``) written by webdataset's ``ShardWriter``. The files
of one sample share a key (the part of the file name before the first dot) and are stored next to
each other::

    000042.json        required: the task and its text fields (UTF-8 JSON object)
    000042.0.png       optional: image 0 (``png`` or ``jpg``; lossless ``png`` by default)
    000042.1.png       optional: image 1, ... (editing sources/targets, interleaved steps)
    000042.codes.npy   optional: pre-tokenized image codes, one (h, w) grid per image

Rules (checked by :func:`encode_record` when writing and :func:`decode_record` when reading):

- The key is a non-empty string without ``.`` or ``/`` (webdataset splits keys at the first dot).
- ``json`` is an object with a string ``"task"`` (for example ``"caption"``, ``"t2i"``,
  ``"understanding"``, ``"edit"``, ``"interleaved"``, ``"text"``, ``"toy"``) plus the task's text
  fields, free-form JSON (``"caption"``, ``"question"``, ``"answer"``, ``"instruction"``,
  ``"steps"``, ...). It may carry ``"n_images"``; when present it must equal the number of images.
- Images are numbered ``0 .. n-1`` with no gaps, one extension each (``png``, ``jpg`` or
  ``jpeg``); their order is the order the task uses them (for example sources then target).
- ``codes.npy`` is a numpy ``.npy`` array of shape ``(n_images, h, w)`` with dtype int16 or int32
  holding codebook indices in ``[0, codebook_size)``. All images of a sample share one grid size
  (the tokenizer's crop policy makes them equal); backbone training reads the codes and never
  runs the image tokenizer. ``unimask data tokenize`` adds them to existing shards.

In memory a sample is a plain dict (what the writer takes and the loader yields)::

    {"__key__": str, "json": dict, "images": list[PIL.Image.Image], "codes": np.ndarray | None}

plus, from the loader, ``"__url__"`` (the shard path). Everything else in a record is ignored.
"""

from __future__ import annotations

import io
import json
import re
from typing import Any

import numpy as np
from PIL import Image

__all__ = [
    "IMAGE_EXTENSIONS",
    "CODE_DTYPES",
    "SampleDecodeError",
    "check_key",
    "encode_record",
    "decode_record",
    "image_field_names",
]

IMAGE_EXTENSIONS = ("png", "jpg", "jpeg")
CODE_DTYPES = (np.dtype(np.int16), np.dtype(np.int32))
_IMAGE_FIELD = re.compile(r"^(\d+)\.(png|jpg|jpeg)$")
_KEY = re.compile(r"^[^./]+$")


class SampleDecodeError(ValueError):
    """A record that does not follow the shard format or cannot be decoded."""


def check_key(key: Any) -> str:
    """Return ``key`` if it is a valid sample key (non-empty, no ``.`` or ``/``), else raise ValueError."""
    if not isinstance(key, str) or not _KEY.match(key):
        raise ValueError(f"sample key {key!r} must be a non-empty string without '.' or '/'")
    return key


def image_field_names(record: dict[str, Any]) -> list[str]:
    """Names of the image fields of a raw record in image order (``["0.png", "1.jpg"]``).

    Raises:
        SampleDecodeError: the image indices have gaps or repeat.
    """
    found = {}
    for name in record:
        match = _IMAGE_FIELD.match(name)
        if match:
            index = int(match.group(1))
            if index in found:
                raise SampleDecodeError(f"image {index} is stored twice ({found[index]}, {name})")
            found[index] = name
    if sorted(found) != list(range(len(found))):
        raise SampleDecodeError(f"image indices must be 0..n-1 without gaps, got {sorted(found)}")
    return [found[i] for i in range(len(found))]


def _check_codes(codes: Any, n_images: int, where: str) -> np.ndarray:
    if not isinstance(codes, np.ndarray):
        raise ValueError(f"{where}: codes must be a numpy array, got {type(codes).__name__}")
    if codes.dtype not in CODE_DTYPES:
        raise ValueError(f"{where}: codes dtype must be int16 or int32, got {codes.dtype}")
    if codes.ndim != 3:
        raise ValueError(f"{where}: codes must have shape (n_images, h, w), got {codes.shape}")
    if n_images and codes.shape[0] != n_images:
        raise ValueError(f"{where}: codes hold {codes.shape[0]} grids for {n_images} images")
    if codes.size and codes.min() < 0:
        raise ValueError(f"{where}: codes must be non-negative, got min {codes.min()}")
    return codes


def _image_bytes(image: Any, image_format: str) -> bytes:
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim not in (2, 3):
            raise ValueError(f"image arrays must be uint8 (H, W) or (H, W, C), got {image.dtype} {image.shape}")
        image = Image.fromarray(image)
    if not isinstance(image, Image.Image):
        raise ValueError(f"images must be PIL images or uint8 arrays, got {type(image).__name__}")
    if image.mode not in ("RGB", "L"):
        image = image.convert("RGB")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG" if image_format == "png" else "JPEG", quality=95)
    return buffer.getvalue()


def encode_record(sample: dict[str, Any], image_format: str = "png") -> dict[str, Any]:
    """Turn an in-memory sample into a webdataset record (file suffix -> bytes).

    Args:
        sample: ``{"__key__": str, "json": dict with "task", "images": list of PIL images or uint8
            (H, W, 3) arrays (optional), "codes": (n_images, h, w) int16/int32 array (optional)}``.
        image_format: ``"png"`` (lossless, default) or ``"jpg"``.
    Returns:
        ``{"__key__": key, "json": bytes, "0.png": bytes, ..., "codes.npy": bytes}``.
    Raises:
        ValueError: naming the key and the offending field.
    """
    if image_format not in ("png", "jpg"):
        raise ValueError(f"image_format={image_format!r} must be 'png' or 'jpg'")
    unknown = set(sample) - {"__key__", "json", "images", "codes", "__url__"}
    if unknown:
        raise ValueError(f"sample {sample.get('__key__')!r}: unknown fields {sorted(unknown)}")
    key = check_key(sample.get("__key__"))
    meta = sample.get("json")
    if not isinstance(meta, dict) or not isinstance(meta.get("task"), str):
        raise ValueError(f"sample {key!r}: 'json' must be a dict with a string 'task', got {meta!r}")
    images = list(sample.get("images") or [])
    if "n_images" in meta and meta["n_images"] != len(images):
        raise ValueError(f"sample {key!r}: json n_images={meta['n_images']} but {len(images)} images given")
    record: dict[str, Any] = {"__key__": key, "json": json.dumps(meta, ensure_ascii=False).encode("utf-8")}
    for index, image in enumerate(images):
        record[f"{index}.{image_format}"] = _image_bytes(image, image_format)
    codes = sample.get("codes")
    if codes is not None:
        _check_codes(codes, len(images), f"sample {key!r}")
        buffer = io.BytesIO()
        np.save(buffer, codes, allow_pickle=False)
        record["codes.npy"] = buffer.getvalue()
    return record


def decode_record(record: dict[str, Any], decode_images: bool = True) -> dict[str, Any]:
    """Decode a raw webdataset record (suffix -> bytes) into an in-memory sample.

    Args:
        record: as yielded by webdataset's tar reader (``__key__``, ``__url__``, suffix fields).
        decode_images: False skips image decoding (``images`` is then the list of raw bytes),
            for stages that only read ``codes``.
    Returns:
        ``{"__key__", "__url__", "json": dict, "images": list[PIL RGB image] (or bytes),
        "codes": (n_images, h, w) int array or None}``.
    Raises:
        SampleDecodeError: missing or invalid json, undecodable image, malformed codes.
    """
    key = record.get("__key__")
    try:
        if "json" not in record:
            raise SampleDecodeError("no json field")
        meta = json.loads(record["json"].decode("utf-8"))
        if not isinstance(meta, dict) or not isinstance(meta.get("task"), str):
            raise SampleDecodeError("json must be an object with a string 'task'")
        names = image_field_names(record)
        if "n_images" in meta and meta["n_images"] != len(names):
            raise SampleDecodeError(f"json n_images={meta['n_images']} but {len(names)} images stored")
        images: list[Any] = []
        for name in names:
            if decode_images:
                with Image.open(io.BytesIO(record[name])) as image:
                    image.load()
                    images.append(image.convert("RGB"))
            else:
                images.append(record[name])
        codes = None
        if "codes.npy" in record:
            codes = np.load(io.BytesIO(record["codes.npy"]), allow_pickle=False)
            _check_codes(codes, len(names), "codes.npy")
    except SampleDecodeError:
        raise
    except Exception as err:  # any decoder failure means the record is unusable
        raise SampleDecodeError(f"{type(err).__name__}: {err}") from err
    return {"__key__": key, "__url__": record.get("__url__"), "json": meta, "images": images, "codes": codes}
