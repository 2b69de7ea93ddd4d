"""Training metrics: a jsonl file, one stdout line per logged step, optional TensorBoard / wandb.

Only rank 0 writes. Each jsonl record holds ``step``, ``loss``, ``lr``, ``grad_norm``,
``samples_per_s``, ``tokens_per_s``, ``images_per_s``, ``mfu`` (None when the peak FLOP/s of the
device is unknown), ``skipped_samples`` (corrupt records dropped so far, all ranks),
``nan_skips``, and the stage's own metrics (for MoE: ``expert_load``, per-expert token fractions).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
from pathlib import Path
from typing import Any

import torch

__all__ = ["MetricsLogger", "peak_flops_per_device", "format_step_line"]

logger = logging.getLogger(__name__)

# Dense bf16 tensor-core peaks (FLOP/s) of common training GPUs, by a substring of the device name.
_PEAK_BF16_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12, "4090": 165e12}


def peak_flops_per_device(device: torch.device, configured: float = 0.0) -> float | None:
    """Peak FLOP/s used for MFU: ``configured`` if > 0, else a table lookup for CUDA devices, else None."""
    if configured > 0:
        return configured
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in _PEAK_BF16_FLOPS.items() if key in name), None)


def format_step_line(record: dict[str, Any], total_steps: int) -> str:
    """One human-readable line: ``step 5/20 loss 0.123456789 lr 1.00e-03 ...`` (full loss precision)."""
    parts = [f"step {record['step']}/{total_steps}", f"loss {record['loss']!r}"]
    for key in ("lr", "grad_norm", "samples_per_s", "tokens_per_s"):
        value = record.get(key)
        if isinstance(value, float) and math.isfinite(value):
            parts.append(f"{key} {value:.3g}")
    return " ".join(parts)


class MetricsLogger:
    """Writes metric records on rank 0; a no-op elsewhere.

    Args:
        out_dir: run folder (``metrics.jsonl`` is appended there, so a resumed run continues it).
        is_main: whether this process writes.
        tensorboard, wandb: also log there if the package is installed (else a warning).
        run_name, wandb_project: names for those backends.
    """

    def __init__(self, out_dir: Path, is_main: bool, tensorboard: bool = False, wandb: bool = False, run_name: str = "unimask", wandb_project: str = "unimask", config: dict | None = None):
        self.is_main = is_main
        self.path = Path(out_dir) / "metrics.jsonl"
        self._tensorboard = None
        self._wandb = None
        if not is_main:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if tensorboard:
            if importlib.util.find_spec("tensorboard") is None:
                logger.warning("logging.tensorboard is on but tensorboard is not installed; skipping it")
            else:
                from torch.utils.tensorboard import SummaryWriter

                self._tensorboard = SummaryWriter(log_dir=str(Path(out_dir) / "tensorboard"))
        if wandb:
            if importlib.util.find_spec("wandb") is None:
                logger.warning("logging.wandb is on but wandb is not installed; skipping it")
            else:
                import wandb as wandb_module

                self._wandb = wandb_module.init(project=wandb_project, name=run_name, config=config or {}, resume="allow")

    def log(self, record: dict[str, Any]) -> None:
        """Append ``record`` (must hold ``step``) to every active sink."""
        if not self.is_main:
            return
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
        scalars = {k: v for k, v in record.items() if isinstance(v, (int, float)) and k != "step" and v is not None}
        if self._tensorboard is not None:
            for key, value in scalars.items():
                self._tensorboard.add_scalar(key, value, record["step"])
        if self._wandb is not None:
            self._wandb.log(scalars, step=record["step"])

    def close(self) -> None:
        """Flush and close the optional backends."""
        if self._tensorboard is not None:
            self._tensorboard.close()
        if self._wandb is not None:
            self._wandb.finish()
