"""The ``tokenizer_vq`` stage: train the quantizer on the frozen vision tower.

``model``: ``ImageTokenizerTrainingConfig`` keys (as the SigLIP stage).
``stage_options``: ``image_size`` (default 64), ``init_vision`` (path of the SigLIP stage's
exported ``vision_tower/`` folder; default: a random tower, for tests).
Export: ``image_tokenizer/`` written by ``SigLIPVQTokenizer.save_pretrained`` (what the pipelines
load). The EMA codebook statistics are buffers updated per process; run this stage in one process
(or accept per-rank codebook statistics).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

from unimask.config import ConfigError
from unimask.training.stage_tokenizer_siglip import pixel_batch, training_config_from_recipe
from unimask.training.stages import Stage

__all__ = ["VQStage"]


class VQStage(Stage):
    """Commitment + feature-reconstruction loss of the VQ quantizer (``vq_stage_loss``)."""

    name = "tokenizer_vq"

    def check_config(self) -> None:
        self.config = training_config_from_recipe(self.recipe)
        options = dict(self.recipe.stage_options)
        self.image_size = options.pop("image_size", 64)
        self.init_vision = options.pop("init_vision", None)
        if options:
            raise ConfigError(f"stage_options: unknown key(s) {sorted(options)} for stage {self.name!r}; allowed: ['image_size', 'init_vision']")
        if not isinstance(self.image_size, int) or self.image_size % 16 or self.image_size < 16:
            raise ConfigError(f"stage_options.image_size={self.image_size!r} must be a positive multiple of 16")
        if self.init_vision is not None and not (Path(self.init_vision) / "model.safetensors").is_file():
            raise ConfigError(f"stage_options.init_vision={self.init_vision!r} has no model.safetensors")

    def build_model(self) -> nn.Module:
        from transformers import GlmImageVisionModel

        from unimask.tokenizers.image_tokenizer_training import build_vq_stage

        visual = GlmImageVisionModel(self.config.vision_config())
        if self.init_vision is not None:
            visual.load_state_dict(load_file(str(Path(self.init_vision) / "model.safetensors")), strict=True)
        return build_vq_stage(self.config, visual)

    def make_batch(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        return {"pixel_values": pixel_batch(samples, self.image_size)}

    def loss(self, model: nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        from unimask.tokenizers.image_tokenizer_training import vq_stage_loss

        return vq_stage_loss(model, batch)

    def batch_counts(self, batch: dict[str, Any]) -> dict[str, int]:
        count = int(batch["pixel_values"].shape[0])
        return {"samples": count, "tokens": count * (self.image_size // 16) ** 2, "images": count}

    def export(self, model: nn.Module, out_dir: Path) -> Path:
        return Path(model.to_tokenizer().save_pretrained(out_dir / "image_tokenizer"))
