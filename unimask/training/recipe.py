"""The training recipe: one typed YAML file per run (``configs/train/*.yaml``).

Loaded strictly with :func:`unimask.config.load_typed_config`: unknown keys and wrong types fail
with the key and the file named, before anything is built. The stage-specific sections
(``model``, ``stage_options``) are free mappings that the chosen stage validates itself in
``check_config``, also before training starts.

Batch sizes: ``micro_batch_size`` is per process and per micro-step; the global batch is
``micro_batch_size * grad_accum_steps * world_size`` samples (or, with ``data.token_budget``,
that many packed rows).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Literal

from unimask.config import load_typed_config

__all__ = [
    "DataSection",
    "OptimSection",
    "ScheduleSection",
    "CheckpointSection",
    "LoggingSection",
    "TrainRecipe",
    "load_recipe",
]


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


@dataclasses.dataclass
class DataSection:
    """Where the shards are and how they are read (see :mod:`unimask.data.loader`)."""

    shards: list[str]
    seed: int = 0
    resampled: bool = True
    split: Literal["shard", "sample"] = "shard"
    shuffle_buffer: int = 0
    num_workers: int = 0
    decode_images: bool = True
    token_budget: int = 0  # > 0: each micro-batch row is packed to this many tokens

    def __post_init__(self):
        _require(len(self.shards) > 0, "data.shards must list at least one shard path or pattern")
        _require(self.shuffle_buffer >= 0, f"data.shuffle_buffer={self.shuffle_buffer} must be >= 0")
        _require(self.num_workers >= 0, f"data.num_workers={self.num_workers} must be >= 0")
        _require(self.token_budget >= 0, f"data.token_budget={self.token_budget} must be >= 0")


@dataclasses.dataclass
class OptimSection:
    """AdamW settings; ``grad_clip`` 0 disables clipping."""

    lr: float = 1e-3
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    grad_clip: float = 1.0

    def __post_init__(self):
        _require(self.lr > 0, f"optim.lr={self.lr} must be > 0")
        _require(self.weight_decay >= 0, f"optim.weight_decay={self.weight_decay} must be >= 0")
        _require(all(0 <= b < 1 for b in self.betas), f"optim.betas={self.betas} must be in [0, 1)")
        _require(self.grad_clip >= 0, f"optim.grad_clip={self.grad_clip} must be >= 0")


@dataclasses.dataclass
class ScheduleSection:
    """Learning-rate schedule (see :mod:`unimask.training.schedules`)."""

    kind: Literal["constant", "cosine", "wsd"] = "cosine"
    warmup_steps: int = 0
    decay_steps: int = 0  # wsd only: length of the final decay; 0 means 20% of the run
    min_lr_ratio: float = 0.1

    def __post_init__(self):
        _require(self.warmup_steps >= 0, f"schedule.warmup_steps={self.warmup_steps} must be >= 0")
        _require(self.decay_steps >= 0, f"schedule.decay_steps={self.decay_steps} must be >= 0")
        _require(0 <= self.min_lr_ratio <= 1, f"schedule.min_lr_ratio={self.min_lr_ratio} must be in [0, 1]")


@dataclasses.dataclass
class CheckpointSection:
    """``every`` steps a DCP checkpoint (0: only at the end); the last ``keep_last`` are kept."""

    every: int = 0
    keep_last: int = 2

    def __post_init__(self):
        _require(self.every >= 0, f"checkpoint.every={self.every} must be >= 0")
        _require(self.keep_last >= 1, f"checkpoint.keep_last={self.keep_last} must be >= 1")


@dataclasses.dataclass
class LoggingSection:
    """Metrics every ``every`` steps to ``<out_dir>/metrics.jsonl`` and stdout.

    ``peak_flops`` (per device, FLOP/s) enables the MFU estimate; 0 uses a table of known GPUs
    and reports no MFU on CPU. TensorBoard and wandb are used only when requested and installed.
    """

    every: int = 1
    progress_bar: bool = True
    tensorboard: bool = False
    wandb: bool = False
    wandb_project: str = "unimask"
    peak_flops: float = 0.0

    def __post_init__(self):
        _require(self.every >= 1, f"logging.every={self.every} must be >= 1")


@dataclasses.dataclass
class TrainRecipe:
    """A whole training run: stage, model, data, optimisation, checkpoints, logging.

    ``nan_policy``: ``"skip"`` drops a step whose global loss or gradient norm is not finite
    (no optimizer update, the data is still consumed, the step counts) and stops with an error
    after ``max_nan_skips`` consecutive skips; ``"stop"`` ends the run with an error at the first
    one. Either way a non-finite step never updates the weights.
    """

    stage: str
    out_dir: str
    data: DataSection
    model: dict[str, Any] = dataclasses.field(default_factory=dict)
    stage_options: dict[str, Any] = dataclasses.field(default_factory=dict)
    steps: int = 100
    micro_batch_size: int = 8
    grad_accum_steps: int = 1
    seed: int = 0
    precision: Literal["fp32", "bf16"] = "fp32"
    activation_checkpointing: bool = False
    nan_policy: Literal["skip", "stop"] = "skip"
    max_nan_skips: int = 10
    export: bool = True
    optim: OptimSection = dataclasses.field(default_factory=OptimSection)
    schedule: ScheduleSection = dataclasses.field(default_factory=ScheduleSection)
    checkpoint: CheckpointSection = dataclasses.field(default_factory=CheckpointSection)
    logging: LoggingSection = dataclasses.field(default_factory=LoggingSection)

    def __post_init__(self):
        _require(self.steps >= 1, f"steps={self.steps} must be >= 1")
        _require(self.micro_batch_size >= 1, f"micro_batch_size={self.micro_batch_size} must be >= 1")
        _require(self.grad_accum_steps >= 1, f"grad_accum_steps={self.grad_accum_steps} must be >= 1")
        _require(self.max_nan_skips >= 1, f"max_nan_skips={self.max_nan_skips} must be >= 1")
        _require(bool(self.out_dir), "out_dir must be a non-empty path")


def load_recipe(path: str | Path) -> TrainRecipe:
    """Load a recipe file strictly; relative shard paths and ``out_dir`` stay relative to the CWD.

    Raises:
        unimask.config.ConfigError: unknown key, wrong type or invalid value, naming key and file.
    """
    return load_typed_config(path, TrainRecipe)
