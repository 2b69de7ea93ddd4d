"""Add pre-tokenized image codes (``codes.npy``) to existing shards.

Resumable and atomic: each shard is rewritten to ``<shard>.tmp`` (every original field kept byte
for byte, ``codes.npy`` added), fsynced and renamed over the original; then a marker file
``<shard>.codes-done`` is written. Shards with a marker are skipped, so an interrupted run is
simply started again. A crash between the rename and the marker only costs re-encoding that shard.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import os
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import webdataset as wds
from PIL import Image

from unimask.data.shard_format import SampleDecodeError, image_field_names

__all__ = ["TokenizeReport", "add_image_codes", "done_marker_path", "encode_fn_from_tokenizer"]

logger = logging.getLogger(__name__)

EncodeFn = Callable[[list[Image.Image]], Sequence[np.ndarray]]


@dataclasses.dataclass
class TokenizeReport:
    """What :func:`add_image_codes` did: shard counts and per-sample outcomes."""

    shards_done: int = 0
    shards_skipped: int = 0
    samples_coded: int = 0
    samples_without_images: int = 0
    samples_failed: list[str] = dataclasses.field(default_factory=list)


def done_marker_path(shard: str | Path) -> Path:
    """Path of the marker that says ``shard`` already holds image codes."""
    return Path(f"{shard}.codes-done")


def _codes_array(grids: Sequence[np.ndarray], key: str) -> np.ndarray:
    shapes = {tuple(np.asarray(g).shape) for g in grids}
    if len(shapes) != 1 or len(next(iter(shapes))) != 2:
        raise ValueError(f"sample {key!r}: encode_fn must return (h, w) grids of one size, got shapes {sorted(shapes)}")
    stacked = np.stack([np.asarray(g) for g in grids]).astype(np.int64)
    dtype = np.int16 if stacked.max(initial=0) < np.iinfo(np.int16).max else np.int32
    return stacked.astype(dtype)


def _flush(batch: list[tuple[dict[str, Any], list[Image.Image]]], encode_fn: EncodeFn, sink: wds.TarWriter, report: TokenizeReport) -> None:
    images = [image for _, sample_images in batch for image in sample_images]
    grids = list(encode_fn(images)) if images else []
    if len(grids) != len(images):
        raise ValueError(f"encode_fn returned {len(grids)} grids for {len(images)} images")
    start = 0
    for record, sample_images in batch:
        sample_grids = grids[start : start + len(sample_images)]
        start += len(sample_images)
        buffer = io.BytesIO()
        np.save(buffer, _codes_array(sample_grids, record["__key__"]), allow_pickle=False)
        record["codes.npy"] = buffer.getvalue()
        sink.write(record)
        report.samples_coded += 1


def _rewrite_shard(shard: Path, encode_fn: EncodeFn, batch_size: int, report: TokenizeReport) -> None:
    temp = Path(f"{shard}.tmp")
    records = wds.tariterators.tarfile_samples([{"url": str(shard)}])
    batch: list[tuple[dict[str, Any], list[Image.Image]]] = []
    with open(temp, "wb") as stream:
        with wds.TarWriter(stream) as sink:
            for raw in records:
                record = {k: v for k, v in raw.items() if k == "__key__" or not k.startswith("__")}
                record.pop("codes.npy", None)
                try:
                    names = image_field_names(record)
                    images = []
                    for name in names:
                        with Image.open(io.BytesIO(record[name])) as image:
                            images.append(image.convert("RGB"))
                except (SampleDecodeError, OSError, ValueError) as err:
                    logger.warning("shard %s sample %s: cannot decode images (%s); copied without codes", shard, record["__key__"], err)
                    report.samples_failed.append(record["__key__"])
                    sink.write(record)
                    continue
                if not images:
                    report.samples_without_images += 1
                    sink.write(record)
                    continue
                batch.append((record, images))
                if sum(len(imgs) for _, imgs in batch) >= batch_size:
                    _flush(batch, encode_fn, sink, report)
                    batch = []
            if batch:
                _flush(batch, encode_fn, sink, report)
        stream.flush()
        os.fsync(stream.fileno())
    os.replace(temp, shard)


def add_image_codes(
    shards: Sequence[str | Path], encode_fn: EncodeFn, *, batch_size: int = 16, force: bool = False
) -> TokenizeReport:
    """Add ``codes.npy`` to every sample with images in ``shards``, in place and atomically.

    Args:
        shards: shard paths (``.tar``).
        encode_fn: ``list[PIL RGB image] -> list[(h, w) int array]`` codebook indices, one grid per
            image, in order (wrap a tokenizer with :func:`encode_fn_from_tokenizer`).
        batch_size: images per ``encode_fn`` call, >= 1.
        force: re-encode shards that already have a done marker.
    Returns:
        A :class:`TokenizeReport`.
    Raises:
        ValueError: a shard path does not exist or ``batch_size`` < 1.
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r} must be an integer >= 1")
    paths = [Path(s) for s in shards]
    for path in paths:
        if not path.is_file():
            raise ValueError(f"shard {str(path)!r} does not exist")
    report = TokenizeReport()
    for path in paths:
        marker = done_marker_path(path)
        if marker.exists() and not force:
            report.shards_skipped += 1
            continue
        _rewrite_shard(path, encode_fn, batch_size, report)
        marker.write_text("ok\n")
        report.shards_done += 1
        logger.info("added image codes to %s", path)
    return report


def encode_fn_from_tokenizer(tokenizer: Any) -> EncodeFn:
    """Wrap an image tokenizer whose ``encode(images)`` returns an object with ``.ids``.

    ``.ids`` may be a (n, h, w) tensor/array or a list of (h, w) ones; both become a list of
    (h, w) int numpy arrays.
    """

    def encode(images: list[Image.Image]) -> list[np.ndarray]:
        ids = tokenizer.encode(images).ids
        return [np.asarray(grid.detach().cpu() if hasattr(grid, "detach") else grid) for grid in ids]

    return encode
