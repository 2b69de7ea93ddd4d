"""Stage plugins: what the one trainer needs to know about each thing it trains.

A stage turns a recipe into a model, samples into batches, a batch into a loss, and a trained
model into the files the pipelines load. Each stage lives in its own small module
(``stage_<name>.py``), imported only when the recipe names it, so a missing model module fails
with a clear message instead of breaking every stage.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from unimask.config import ConfigError

if TYPE_CHECKING:
    from unimask.training.recipe import TrainRecipe

__all__ = ["Stage", "STAGES", "get_stage"]


class Stage:
    """Base class of a stage plugin; one instance per run, built from the recipe.

    Subclasses override ``build_model``, ``make_batch``, ``loss`` and ``export``; the rest have
    working defaults.

    Attributes:
        name: the registry name.
        decode_images: whether the loader should decode images (False for code-only stages).
    """

    name = "stage"
    decode_images = True

    def __init__(self, recipe: "TrainRecipe"):
        self.recipe = recipe
        self.check_config()

    def check_config(self) -> None:
        """Validate ``recipe.model`` / ``recipe.stage_options``; raise ConfigError naming the key."""

    def build_model(self) -> nn.Module:
        """A freshly initialised model (on CPU, fp32) from the recipe."""
        raise NotImplementedError

    def blocks(self, model: nn.Module) -> list[nn.Module]:
        """Repeated blocks: FSDP2 shards each separately and activation checkpointing wraps them."""
        return []

    def on_step(self, step: int) -> None:
        """Called before optimizer step ``step`` (0-based), e.g. for a block-size schedule."""

    def after_optimizer_step(self) -> dict[str, float]:
        """Called after each applied optimizer step (on every rank); returns extra float metrics."""
        return {}

    def make_batch(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        """Collate decoded samples (see :mod:`unimask.data.shard_format`) into a batch of tensors."""
        raise NotImplementedError

    def loss(self, model: nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        """Mean loss over the local batch (scalar tensor with grad) and float metrics."""
        raise NotImplementedError

    def export(self, model: nn.Module, out_dir: Path) -> Path:
        """Write the trained weights (safetensors) in the layout the pipelines load; return the folder."""
        raise NotImplementedError

    def sample_length(self, sample: dict[str, Any]) -> int:
        """Tokens of one sample, for packing to ``data.token_budget``."""
        raise NotImplementedError(f"stage {self.name!r} does not support data.token_budget packing")

    def batch_counts(self, batch: dict[str, Any]) -> dict[str, int]:
        """``{"samples", "tokens", "images"}`` in a batch, for throughput metrics."""
        first = next((v for v in batch.values() if isinstance(v, torch.Tensor)), None)
        return {"samples": int(first.shape[0]) if first is not None and first.ndim else 0, "tokens": 0, "images": 0}

    def flops_per_step(self, model: nn.Module, counts: dict[str, int]) -> float:
        """Training FLOPs of one micro-batch (default: 6 x parameters x tokens, 0 without tokens)."""
        n_params = sum(p.numel() for p in model.parameters())
        return 6.0 * n_params * counts.get("tokens", 0)


# name -> "module:class", imported lazily.
STAGES: dict[str, str] = {
    "toy": "unimask.training.stage_toy:ToyStage",
    "tokenizer_siglip": "unimask.training.stage_tokenizer_siglip:SigLIPStage",
    "tokenizer_vq": "unimask.training.stage_tokenizer_vq:VQStage",
    "backbone": "unimask.training.stage_backbone:BackboneStage",
    "decoder_flow": "unimask.training.stage_decoder_flow:DecoderFlowStage",
    "decoder_distill": "unimask.training.stage_decoder_distill:DecoderDistillStage",
    "vae": "unimask.training.stage_vae:VAEStage",
}


def get_stage(name: str) -> type[Stage]:
    """The stage class registered as ``name``.

    Raises:
        ConfigError: unknown stage name (listing the known ones).
        NotImplementedError: the stage is registered but its model code is not available yet.
    """
    if name not in STAGES:
        raise ConfigError(f"unknown stage {name!r}; available stages: {sorted(STAGES)}")
    module_name, class_name = STAGES[name].split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        raise NotImplementedError(f"stage {name!r} is not available in this installation: {err}") from err
    return getattr(module, class_name)
