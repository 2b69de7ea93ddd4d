"""Deterministic, resumable webdataset sample stream for training.

Order. Everything is a pure function of ``seed``: the shard order of each epoch, the resampled
shard draws and the shuffle buffer all use ``random.Random`` seeded from strings, never global
state. A rank's stream is therefore a fixed sequence, and the loader position is one integer:
the number of records this rank has consumed. Resuming at position ``start`` fast-forwards over
raw records (tar reading only, no decoding) and yields exactly the samples an uninterrupted run
would have seen next.

Splitting. ``split="shard"`` (the scalable default) does what webdataset's ``split_by_node`` and
``split_by_worker`` do: each epoch's shuffled shard list is dealt to ``world_size * num_workers``
logical readers, and rank ``r`` interleaves its readers round-robin, which is exactly the order in
which ``torch.utils.data.DataLoader`` collects worker outputs. Needs at least that many shards.
``split="sample"`` makes every reader walk the one global stream and keep every
``world_size``-th sample for its rank: each global batch then holds the same samples for any world
size (1 process with global batch B sees what 2 processes with B/2 see), at the cost of every
reader scanning every shard. Use it for small data and for checking world-size invariance.

``resampled=True`` draws shards with replacement forever (webdataset's ``ResampledShards`` idea,
seeded per reader); ``resampled=False`` walks epochs, each visiting every shard once. Both are
infinite streams: the trainer decides when to stop.

Corrupt records (bad JSON, undecodable image, malformed codes, truncated tar) never stop a run:
they are logged with shard and key and yielded as marker dicts ``{"__corrupt__": True,
"__key__", "__url__", "error"}`` that keep their slot in the order (so positions stay exact);
the consumer drops and counts them.

Worker rotation. When resuming at ``start`` with ``num_workers = W``, the DataLoader restarts its
round-robin at worker 0, but the next sample belongs to reader ``start % W``; so DataLoader worker
``p`` plays reader ``(p + start) % W``, and each reader skips its own share of the first
``start`` records.
"""

from __future__ import annotations

import glob
import logging
import os
import random
import tarfile
from pathlib import Path
from typing import Any, Iterator, Sequence

import braceexpand
import torch
import webdataset as wds
from webdataset.filters import _shuffle

from unimask.data.shard_format import SampleDecodeError, decode_record

__all__ = [
    "CORRUPT",
    "ShardSampleStream",
    "expand_shard_paths",
    "check_dataset_not_empty",
    "iterate_samples",
]

logger = logging.getLogger(__name__)

CORRUPT = "__corrupt__"


def expand_shard_paths(patterns: Sequence[str] | str) -> list[str]:
    """Expand shard patterns (brace ranges ``data-{000..009}.tar``, globs ``dir/*.tar``, folders).

    A folder means every ``*.tar`` in it. The result is sorted and de-duplicated, so the order
    never depends on the file system.

    Raises:
        ValueError: no pattern given, or a pattern that matches no file (named).
    """
    if isinstance(patterns, (str, Path)):
        patterns = [str(patterns)]
    if not patterns:
        raise ValueError("no shard paths given (data.shards is empty)")
    paths: set[str] = set()
    for pattern in patterns:
        matched: list[str] = []
        for expanded in braceexpand.braceexpand(str(pattern)):
            if os.path.isdir(expanded):
                matched.extend(glob.glob(os.path.join(expanded, "*.tar")))
            elif glob.has_magic(expanded):
                matched.extend(glob.glob(expanded))
            elif os.path.isfile(expanded):
                matched.append(expanded)
            else:
                raise ValueError(f"shard path {expanded!r} does not exist (from data.shards entry {pattern!r})")
        if not matched:
            raise ValueError(f"data.shards entry {pattern!r} matches no shard file")
        paths.update(os.path.abspath(p) for p in matched)
    return sorted(paths)


def check_dataset_not_empty(shards: Sequence[str]) -> int:
    """Check that at least one shard holds a record; return how many shards do.

    Reads only the first tar header of each shard.

    Raises:
        ValueError: every shard is empty or unreadable (the dataset is empty).
    """
    non_empty = 0
    for shard in shards:
        try:
            with tarfile.open(shard, mode="r|*") as archive:
                if next(iter(archive), None) is not None:
                    non_empty += 1
        except (tarfile.TarError, OSError) as err:
            logger.warning("shard %s is unreadable: %s", shard, err)
    if non_empty == 0:
        raise ValueError(f"the dataset is empty: none of the {len(shards)} shard(s) holds a record (first: {shards[0]!r})")
    return non_empty


class ShardSampleStream(torch.utils.data.IterableDataset):
    """One rank's deterministic, infinite sample stream over webdataset shards.

    Args:
        shards: shard file paths (see :func:`expand_shard_paths`).
        seed: the order's seed.
        rank, world_size: this process and the number of processes (data-parallel).
        num_workers: DataLoader workers this rank uses (0 = read in the main process); the
            order depends on it, so keep it fixed across a run and its resumptions.
        resampled: draw shards with replacement (True) or walk epochs (False).
        split: ``"shard"`` or ``"sample"`` (see the module docstring).
        shuffle_buffer: sample shuffle buffer size, 0 for none.
        decode_images: decode images to PIL (False keeps raw bytes; for code-only stages).
        start: records of this rank's stream to skip (the resume position).
    Yields:
        Sample dicts (see :mod:`unimask.data.shard_format`) or corrupt markers.
    """

    def __init__(
        self,
        shards: Sequence[str],
        *,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        num_workers: int = 0,
        resampled: bool = True,
        split: str = "shard",
        shuffle_buffer: int = 0,
        decode_images: bool = True,
        start: int = 0,
    ):
        super().__init__()
        if not shards:
            raise ValueError("shards is empty: no shard paths to read")
        if not isinstance(world_size, int) or world_size < 1:
            raise ValueError(f"world_size={world_size!r} must be an integer >= 1")
        if not isinstance(rank, int) or not 0 <= rank < world_size:
            raise ValueError(f"rank={rank!r} must be in [0, {world_size})")
        if not isinstance(num_workers, int) or num_workers < 0:
            raise ValueError(f"num_workers={num_workers!r} must be an integer >= 0")
        if split not in ("shard", "sample"):
            raise ValueError(f"split={split!r} must be 'shard' or 'sample'")
        if not isinstance(shuffle_buffer, int) or shuffle_buffer < 0:
            raise ValueError(f"shuffle_buffer={shuffle_buffer!r} must be an integer >= 0")
        if not isinstance(start, int) or start < 0:
            raise ValueError(f"start={start!r} must be an integer >= 0")
        readers = world_size * max(1, num_workers)
        if split == "shard" and not resampled and len(shards) < readers:
            raise ValueError(
                f"split='shard' needs at least world_size * num_workers = {readers} shards, got {len(shards)}; "
                "write more, smaller shards, use resampled=True or split='sample'"
            )
        self.shards = list(shards)
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.num_workers, self.resampled, self.split = num_workers, resampled, split
        self.shuffle_buffer, self.decode_images, self.start = shuffle_buffer, decode_images, start

    def _reader(self) -> tuple[int, int]:
        """(logical reader index within this rank, records it must skip)."""
        workers = max(1, self.num_workers)
        info = torch.utils.data.get_worker_info()
        physical = info.id if info is not None else 0
        reader = (physical + self.start) % workers
        skip = (self.start - reader + workers - 1) // workers
        return reader, skip

    def _shard_urls(self, stream_name: str, deal_index: int, deal_count: int) -> Iterator[str]:
        """Shard paths one reader visits, forever (epochs or resampled draws)."""
        epoch = 0
        while True:
            if self.resampled:
                rng = random.Random(f"unimask/resample/{self.seed}/{stream_name}/{epoch}")
                yield from (rng.choice(self.shards) for _ in range(len(self.shards)))
            else:
                order = list(self.shards)
                random.Random(f"unimask/epoch/{self.seed}/{epoch}").shuffle(order)
                yield from order[deal_index::deal_count]
            epoch += 1

    def _raw_records(self, stream_name: str, deal_index: int, deal_count: int) -> Iterator[dict[str, Any]]:
        """Raw records of one reader, with a corrupt marker for each tar-level read error.

        Raises:
            RuntimeError: ``2 * len(shards) + 8`` shard reads in a row gave no readable record
                (the reader's shards are all empty or unreadable), instead of spinning forever.
        """
        errors: list[str] = []

        def handler(err: Exception) -> bool:
            errors.append(f"{type(err).__name__}: {err}")
            return True

        def markers(url: str) -> Iterator[dict[str, Any]]:
            while errors:
                error = errors.pop(0)
                logger.warning("unreadable data in shard %s skipped: %s", url, error)
                yield {CORRUPT: True, "__key__": None, "__url__": url, "error": error}

        limit = 2 * len(self.shards) + 8
        barren_reads = 0
        for url in self._shard_urls(stream_name, deal_index, deal_count):
            records = 0
            for record in wds.tariterators.tarfile_samples([{"url": url}], handler=handler):
                yield from markers(url)
                records += 1
                yield record
            yield from markers(url)
            barren_reads = 0 if records else barren_reads + 1
            if barren_reads > limit:
                raise RuntimeError(f"no records in {limit} consecutive shard reads: the shards of this reader are empty or unreadable")

    def _ordered_records(self, reader: int) -> Iterator[dict[str, Any]]:
        workers = max(1, self.num_workers)
        if self.split == "shard":
            index = self.rank * workers + reader
            name = f"reader{index}"
            records = self._raw_records(name, index, self.world_size * workers)
            if self.shuffle_buffer > 1:
                rng = random.Random(f"unimask/shuffle/{self.seed}/{name}")
                records = _shuffle(records, bufsize=self.shuffle_buffer, initial=self.shuffle_buffer, rng=rng)
            yield from records
            return
        records = self._raw_records("global", 0, 1)
        if self.shuffle_buffer > 1:
            rng = random.Random(f"unimask/shuffle/{self.seed}/global")
            records = _shuffle(records, bufsize=self.shuffle_buffer, initial=self.shuffle_buffer, rng=rng)
        period, keep = self.world_size * workers, self.rank + self.world_size * reader
        for position, record in enumerate(records):
            if position % period == keep:
                yield record

    def __iter__(self) -> Iterator[dict[str, Any]]:
        reader, skip = self._reader()
        for position, record in enumerate(self._ordered_records(reader)):
            if position < skip:
                continue
            if record.get(CORRUPT):
                yield record
                continue
            try:
                yield decode_record(record, decode_images=self.decode_images)
            except SampleDecodeError as err:
                logger.warning("corrupt sample skipped: shard %s key %s: %s", record.get("__url__"), record.get("__key__"), err)
                yield {CORRUPT: True, "__key__": record.get("__key__"), "__url__": record.get("__url__"), "error": str(err)}


def _keep_as_is(sample: Any) -> Any:
    return sample


def iterate_samples(stream: ShardSampleStream) -> Iterator[dict[str, Any]]:
    """Iterate ``stream`` in this process or through a DataLoader with ``stream.num_workers`` workers.

    The DataLoader collects worker outputs round-robin in worker order, which is the order the
    stream's worker rotation assumes; samples pass through unchanged (no tensor conversion).
    """
    if stream.num_workers == 0:
        return iter(stream)
    loader = torch.utils.data.DataLoader(
        stream, batch_size=None, num_workers=stream.num_workers, collate_fn=_keep_as_is, prefetch_factor=4
    )
    return iter(loader)
