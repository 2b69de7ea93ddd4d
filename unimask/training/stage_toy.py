"""The ``toy`` stage: a tiny MLP regressing synthetic targets; it exercises the whole trainer.

Samples are text-only records ``{"task": "toy", "x": [dim floats], "y": [out floats]}``, made
by :func:`toy_regression_samples` (``unimask data write --generator toy``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn

from unimask.config import ConfigError
from unimask.training.stages import Stage

__all__ = ["TOY_PRESETS", "ToyRegressor", "ToyStage", "toy_regression_samples"]

TOY_PRESETS: dict[str, dict[str, int]] = {
    "tiny": {"dim": 8, "hidden": 32, "layers": 2, "out": 1},
    "small": {"dim": 16, "hidden": 128, "layers": 4, "out": 2},
}


class ToyRegressor(nn.Module):
    """MLP: input (batch, dim) -> ``layers`` GELU blocks of width ``hidden`` -> (batch, out)."""

    def __init__(self, dim: int, hidden: int, layers: int, out: int):
        super().__init__()
        self.config = {"dim": dim, "hidden": hidden, "layers": layers, "out": out}
        self.embed = nn.Linear(dim, hidden)
        self.blocks = nn.ModuleList(nn.Sequential(nn.Linear(hidden, hidden), nn.GELU()) for _ in range(layers))
        self.head = nn.Linear(hidden, out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (batch, dim) float -> (batch, out) float."""
        hidden = self.embed(x)
        for block in self.blocks:
            hidden = hidden + block(hidden)
        return self.head(hidden)


class ToyStage(Stage):
    """MSE regression of ``y`` from ``x`` with :class:`ToyRegressor`.

    ``model``: ``{"preset": "tiny" | "small", ...overrides of dim/hidden/layers/out}``.
    """

    name = "toy"
    decode_images = False

    def check_config(self) -> None:
        model = dict(self.recipe.model)
        preset = model.pop("preset", "tiny")
        if preset not in TOY_PRESETS:
            raise ConfigError(f"model.preset: unknown model preset {preset!r} for stage 'toy'; available: {sorted(TOY_PRESETS)}")
        unknown = sorted(set(model) - set(TOY_PRESETS[preset]))
        if unknown:
            raise ConfigError(f"model: unknown key(s) {unknown} for stage 'toy'; allowed: {sorted(TOY_PRESETS[preset])}")
        self.sizes = {**TOY_PRESETS[preset], **model}
        if self.recipe.stage_options:
            raise ConfigError(f"stage_options: stage 'toy' takes none, got {sorted(self.recipe.stage_options)}")

    def build_model(self) -> nn.Module:
        return ToyRegressor(**self.sizes)

    def blocks(self, model: nn.Module) -> list[nn.Module]:
        return list(model.blocks)

    def make_batch(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        x = torch.tensor([s["json"]["x"] for s in samples], dtype=torch.float32)
        y = torch.tensor([s["json"]["y"] for s in samples], dtype=torch.float32)
        if x.shape[1] != self.sizes["dim"] or y.shape[1] != self.sizes["out"]:
            raise ValueError(f"toy samples have x {tuple(x.shape)}, y {tuple(y.shape)}; model expects dim {self.sizes['dim']}, out {self.sizes['out']}")
        return {"x": x, "y": y}

    def loss(self, model: nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        prediction = model(batch["x"])
        loss = torch.nn.functional.mse_loss(prediction.float(), batch["y"])
        return loss, {}

    def batch_counts(self, batch: dict[str, Any]) -> dict[str, int]:
        return {"samples": int(batch["x"].shape[0]), "tokens": int(batch["x"].shape[0]), "images": 0}

    def export(self, model: nn.Module, out_dir: Path) -> Path:
        out_dir.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}, str(out_dir / "model.safetensors"))
        (out_dir / "config.json").write_text(json.dumps(model.config, indent=2))
        return out_dir


def toy_regression_samples(count: int, seed: int = 0, dim: int = 8, out: int = 1) -> Iterator[dict[str, Any]]:
    """``count`` samples of ``y = sin(W x)`` with a fixed W and x ~ N(0, 1), deterministic in ``seed``.

    Yields:
        ``{"__key__": "s<seed>-<index>", "json": {"task": "toy", "x": [dim floats], "y": [out floats]}}``.
    """
    weights = np.random.default_rng(1234).normal(size=(out, dim)) / np.sqrt(dim)
    rng = np.random.default_rng(seed)
    for index in range(count):
        x = rng.normal(size=dim)
        y = np.sin(weights @ x)
        yield {"__key__": f"s{seed}-{index:08d}", "json": {"task": "toy", "x": x.round(6).tolist(), "y": y.round(6).tolist()}}
