"""Process-group setup and model parallelisation: the same code for 1 process, torchrun and GPUs.

- Launched by ``torchrun`` (``RANK``/``WORLD_SIZE`` set): one process group, NCCL on GPUs, gloo
  on CPU; the model is sharded with FSDP2 (``fully_shard`` per block, then the root), with bf16
  parameters and fp32 gradient reduction when ``precision: bf16`` on GPUs. FSDP2 also runs on CPU
  over gloo (fp32), which is how the multi-process tests run.
- Plain ``unimask train``: no process group, the model stays an ordinary module (on the GPU if
  there is one); bf16 then means ``torch.autocast``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import os
from typing import Iterator

import torch
import torch.distributed as dist
from torch import nn

__all__ = ["DistContext", "init_distributed", "shutdown_distributed", "parallelize", "all_reduce_mean", "all_reduce_sum", "barrier", "autocast_context", "no_gradient_sync"]


@dataclasses.dataclass
class DistContext:
    """Where this process runs: ``rank`` of ``world_size``, its ``device``, and whether it owns the group."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = dataclasses.field(default_factory=lambda: torch.device("cpu"))
    owns_group: bool = False

    @property
    def distributed(self) -> bool:
        """True when a process group is active (FSDP2 path)."""
        return dist.is_available() and dist.is_initialized()

    @property
    def is_main(self) -> bool:
        """True on rank 0 (the process that logs and writes shared files)."""
        return self.rank == 0


def init_distributed(timeout_s: float = 600.0) -> DistContext:
    """Join the process group described by torchrun's environment variables, if any.

    Returns:
        A :class:`DistContext`; a single process without ``WORLD_SIZE`` gets rank 0 of 1.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available()
    device = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    owns_group = False
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ and not dist.is_initialized():
        dist.init_process_group(
            backend="nccl" if use_cuda else "gloo", timeout=datetime.timedelta(seconds=timeout_s)
        )
        owns_group = True
    if dist.is_initialized():
        rank, world_size = dist.get_rank(), dist.get_world_size()
    return DistContext(rank=rank, world_size=world_size, local_rank=local_rank, device=device, owns_group=owns_group)


def shutdown_distributed(context: DistContext) -> None:
    """Destroy the process group if :func:`init_distributed` created it."""
    if context.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def parallelize(model: nn.Module, blocks: list[nn.Module], context: DistContext, precision: str, activation_checkpointing: bool) -> nn.Module:
    """Apply activation checkpointing and FSDP2 to ``model`` (in place) and move it to the device.

    Args:
        model: the plain model (fp32, CPU).
        blocks: its repeated blocks (each becomes one FSDP unit / checkpointed region).
        precision: ``"fp32"`` or ``"bf16"`` (bf16 params + fp32 reduction under FSDP2 on GPUs).
        activation_checkpointing: recompute each block's activations in the backward pass.
    Returns:
        The same model, ready to train.
    """
    if activation_checkpointing:
        if hasattr(model, "gradient_checkpointing_enable") and getattr(model, "supports_gradient_checkpointing", False):
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        elif blocks:
            from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import apply_activation_checkpointing

            block_ids = {id(b) for b in blocks}
            apply_activation_checkpointing(model, check_fn=lambda module: id(module) in block_ids)
        else:
            raise ValueError("activation_checkpointing=True but the stage names no blocks to checkpoint")
    model.to(context.device)
    if not context.distributed:
        return model
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    policy = MixedPrecisionPolicy()
    if precision == "bf16" and context.device.type == "cuda":
        policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    for block in blocks:
        fully_shard(block, mp_policy=policy)
    fully_shard(model, mp_policy=policy)
    return model


def autocast_context(context: DistContext, precision: str) -> contextlib.AbstractContextManager:
    """bf16 autocast where FSDP2 does not already cast (single process, or CPU); else a no-op."""
    if precision != "bf16" or (context.distributed and context.device.type == "cuda"):
        return contextlib.nullcontext()
    return torch.autocast(device_type=context.device.type, dtype=torch.bfloat16)


def all_reduce_mean(values: list[float], context: DistContext) -> list[float]:
    """Mean of each value over ranks (identity in one process)."""
    if not context.distributed:
        return list(values)
    tensor = torch.tensor(values, dtype=torch.float64, device=context.device)
    dist.all_reduce(tensor)
    return (tensor / context.world_size).tolist()


def all_reduce_sum(values: list[float], context: DistContext) -> list[float]:
    """Sum of each value over ranks (identity in one process)."""
    if not context.distributed:
        return list(values)
    tensor = torch.tensor(values, dtype=torch.float64, device=context.device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def barrier(context: DistContext) -> None:
    """Wait for every rank (no-op in one process)."""
    if context.distributed:
        dist.barrier()


@contextlib.contextmanager
def no_gradient_sync(model: nn.Module, skip: bool) -> Iterator[None]:
    """Inside gradient accumulation, skip FSDP2's reduce-scatter until the last micro-step."""
    setter = getattr(model, "set_requires_gradient_sync", None)
    if skip and setter is not None:
        setter(False)
        try:
            yield
        finally:
            setter(True)
    else:
        yield
