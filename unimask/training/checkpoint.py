"""Atomic, resumable checkpoints with ``torch.distributed.checkpoint`` (DCP).

Layout under ``<out_dir>/checkpoints``::

    step-00000100/            a complete checkpoint
        .metadata, *.distcp   DCP: model + optimizer state (sharded under FSDP2)
        rank-00000.pt ...     per rank: RNG states (torch, CUDA, numpy, python) and data position
        trainer.json          step, world size, stage (human readable; the scheduler is a pure
                              function of the step, so the step is its whole state)
    latest                    text file: the name of the newest complete checkpoint

Atomicity: every rank writes into ``.tmp-step-...``; once all have finished, rank 0 fsyncs every
file and the folder, renames it to ``step-...`` and only then replaces ``latest`` (written to
``latest.tmp``, fsynced, ``os.replace``). A crash or a failed write at any point leaves ``latest``
naming the previous complete checkpoint; leftover ``.tmp-*`` folders are removed at the next start.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import random
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from unimask.training.distributed import DistContext, all_reduce_sum, barrier

__all__ = [
    "CheckpointError",
    "capture_rng_state",
    "restore_rng_state",
    "save_checkpoint",
    "load_checkpoint",
    "latest_checkpoint",
    "remove_stale_temporaries",
]

logger = logging.getLogger(__name__)

LATEST = "latest"
_TMP_PREFIX = ".tmp-"


class CheckpointError(RuntimeError):
    """A checkpoint could not be written or read; the previous complete one is untouched."""


def capture_rng_state() -> dict[str, Any]:
    """This process's RNG states (torch CPU, CUDA, numpy global, python) as weights-only-safe data."""
    mt_name, keys, position, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"name": mt_name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(position), "has_gauss": int(has_gauss), "cached": float(cached)},
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`capture_rng_state` captured."""
    torch.set_rng_state(state["torch"])
    numpy_state = state["numpy"]
    np.random.set_state(
        (numpy_state["name"], numpy_state["keys"].numpy().astype(np.uint32), numpy_state["pos"], numpy_state["has_gauss"], numpy_state["cached"])
    )
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _fsync_path(path: Path) -> None:
    flags = os.O_RDONLY | (os.O_DIRECTORY if path.is_dir() else 0)
    descriptor = os.open(path, flags)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _step_name(step: int) -> str:
    return f"step-{step:08d}"


def latest_checkpoint(root: str | Path) -> Path | None:
    """The checkpoint ``latest`` names under ``root``, or None when there is none yet.

    Raises:
        CheckpointError: ``latest`` names a folder that is missing or incomplete.
    """
    root = Path(root)
    pointer = root / LATEST
    if not pointer.is_file():
        return None
    path = root / pointer.read_text().strip()
    if not (path / ".metadata").is_file() or not (path / "trainer.json").is_file():
        raise CheckpointError(f"{pointer} names {path}, which is not a complete checkpoint")
    return path


def remove_stale_temporaries(root: str | Path) -> list[Path]:
    """Delete ``.tmp-*`` folders and ``latest.tmp`` left by interrupted saves; return what was removed."""
    root = Path(root)
    removed = []
    if root.is_dir():
        for path in root.iterdir():
            if path.name.startswith(_TMP_PREFIX) or path.name == LATEST + ".tmp":
                shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
                removed.append(path)
    return removed


def _write_rank_file(directory: Path, rank: int, payload: dict[str, Any]) -> None:
    path = directory / f"rank-{rank:05d}.pt"
    with open(path, "wb") as handle:
        torch.save(payload, handle)
        handle.flush()
        os.fsync(handle.fileno())


def _publish(root: Path, temporary: Path, final: Path, keep_last: int) -> None:
    """Rank 0: make ``temporary`` durable, rename it to ``final``, then move ``latest`` to it."""
    for file in temporary.rglob("*"):
        if file.is_file():
            _fsync_path(file)
    _fsync_path(temporary)
    if final.exists():
        shutil.rmtree(final)
    os.rename(temporary, final)
    _fsync_path(root)
    pointer_tmp = root / (LATEST + ".tmp")
    with open(pointer_tmp, "w") as handle:
        handle.write(final.name + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(pointer_tmp, root / LATEST)
    _fsync_path(root)
    complete = sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-"))
    for old in complete[:-keep_last]:
        if old != final:
            shutil.rmtree(old, ignore_errors=True)


def save_checkpoint(
    root: str | Path,
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    rank_payload: dict[str, Any],
    trainer_info: dict[str, Any],
    context: DistContext,
    keep_last: int = 2,
) -> Path:
    """Write a complete checkpoint for ``step`` atomically (collective: every rank calls it).

    Args:
        root: the checkpoints folder.
        step: optimizer steps completed.
        model, optimizer: saved through DCP (FSDP2-sharded or plain).
        rank_payload: this rank's own state (RNG, data position); weights-only-loadable types.
        trainer_info: JSON-able run facts written by rank 0 (``step``, ``world_size``, ...).
        keep_last: complete checkpoints kept (older ones are deleted after publishing).
    Returns:
        The published checkpoint folder.
    Raises:
        CheckpointError: any rank failed to write; ``latest`` still names the previous checkpoint.
    """
    root = Path(root)
    final = root / _step_name(step)
    temporary = root / f"{_TMP_PREFIX}{final.name}"
    if context.is_main:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(temporary, ignore_errors=True)
    barrier(context)
    failed = 0.0
    error: BaseException | None = None
    try:
        model_state, optimizer_state = get_state_dict(model, optimizer)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="torch.distributed is disabled")  # intended in one process
            dcp.save({"model": model_state, "optimizer": optimizer_state}, checkpoint_id=str(temporary), no_dist=not context.distributed)
        _write_rank_file(temporary, context.rank, rank_payload)
        if context.is_main:
            (temporary / "trainer.json").write_text(json.dumps(trainer_info, indent=2))
    except Exception as err:  # disk full, I/O error, ...: report on every rank, keep the previous one
        failed, error = 1.0, err
    if all_reduce_sum([failed], context)[0] > 0:
        if context.is_main:
            shutil.rmtree(temporary, ignore_errors=True)
        raise CheckpointError(f"writing checkpoint {final} failed ({error!r}); the previous checkpoint is still the latest") from error
    if context.is_main:
        try:
            _publish(root, temporary, final, keep_last)
        except Exception as err:
            failed, error = 1.0, err
    if all_reduce_sum([failed], context)[0] > 0:
        raise CheckpointError(f"publishing checkpoint {final} failed ({error!r}); the previous checkpoint is still the latest") from error
    logger.info("saved checkpoint %s", final)
    return final


def load_checkpoint(path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer, context: DistContext) -> tuple[dict[str, Any], dict[str, Any]]:
    """Load model and optimizer state from checkpoint ``path`` (collective).

    Returns:
        (this rank's payload, trainer_info).
    Raises:
        CheckpointError: the checkpoint was written by another world size, or a file is missing.
    """
    path = Path(path)
    try:
        info = json.loads((path / "trainer.json").read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"checkpoint {path}: trainer.json cannot be read ({err})") from err
    if not isinstance(info, dict):
        raise CheckpointError(f"checkpoint {path}: trainer.json must hold a JSON object")
    if info.get("world_size") != context.world_size:
        raise CheckpointError(
            f"checkpoint {path} was written by {info.get('world_size')} process(es); resume it with the same number (now {context.world_size})"
        )
    rank_file = path / f"rank-{context.rank:05d}.pt"
    if not rank_file.is_file():
        raise CheckpointError(f"checkpoint {path} has no state for rank {context.rank} ({rank_file.name})")
    model_state, optimizer_state = get_state_dict(model, optimizer)
    state = {"model": model_state, "optimizer": optimizer_state}
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="torch.distributed is disabled")
            dcp.load(state, checkpoint_id=str(path), no_dist=not context.distributed)
    except (Exception, CheckpointException) as err:  # DCP's reader failures (truncated, missing .distcp) are BaseExceptions
        raise CheckpointError(f"checkpoint {path}: model/optimizer state cannot be read ({type(err).__name__}: {err})") from err
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])
    try:
        payload = torch.load(rank_file, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as err:
        first_line = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise CheckpointError(
            f"checkpoint {path}: {rank_file.name} is refused (not weights-only data, or truncated): {first_line}"
        ) from err
    return payload, info
