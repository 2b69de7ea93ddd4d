"""The ``tokenizer_siglip`` stage: SigLIP contrastive training of the image tokenizer's vision tower.

Samples: one image plus a caption (json ``"caption"``, or ``"text"``). Captions are encoded as
UTF-8 bytes (id = byte + 1, 0 = padding), so no text tokenizer is needed; ``text_vocab_size`` must
be >= 257. Images are resized to ``image_size`` (a multiple of 16) and CLIP-normalised.

``model``: :class:`unimask.tokenizers.image_tokenizer_training.ImageTokenizerTrainingConfig` keys.
``stage_options``: ``image_size`` (int, default 64).
Export: ``vision_tower/model.safetensors`` + ``config.json`` (the tower, for the VQ stage's
``stage_options.init_vision``).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn

from unimask.config import ConfigError, from_mapping
from unimask.training.stages import Stage

__all__ = ["SigLIPStage", "pixel_batch", "training_config_from_recipe"]

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def training_config_from_recipe(recipe) -> Any:
    """The ``ImageTokenizerTrainingConfig`` of ``recipe.model`` (strict: unknown keys raise ConfigError)."""
    from unimask.tokenizers.image_tokenizer_training import ImageTokenizerTrainingConfig

    return from_mapping(ImageTokenizerTrainingConfig, dict(recipe.model), source="model")


def pixel_batch(samples: list[dict[str, Any]], image_size: int) -> torch.Tensor:
    """First image of each sample, resized to ``image_size`` and CLIP-normalised: (B, 3, S, S) float."""
    mean = torch.tensor(CLIP_MEAN).view(3, 1, 1)
    std = torch.tensor(CLIP_STD).view(3, 1, 1)
    pixels = []
    for sample in samples:
        if not sample["images"]:
            raise ValueError(f"sample {sample.get('__key__')!r} has no image")
        image = sample["images"][0].convert("RGB").resize((image_size, image_size))
        array = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
        pixels.append((array - mean) / std)
    return torch.stack(pixels)


class SigLIPStage(Stage):
    """Sigmoid contrastive loss between the vision tower and a tiny caption encoder."""

    name = "tokenizer_siglip"

    def check_config(self) -> None:
        self.config = training_config_from_recipe(self.recipe)
        options = dict(self.recipe.stage_options)
        self.image_size = options.pop("image_size", 64)
        if options:
            raise ConfigError(f"stage_options: unknown key(s) {sorted(options)} for stage {self.name!r}; allowed: ['image_size']")
        if not isinstance(self.image_size, int) or self.image_size % 16 or self.image_size < 16:
            raise ConfigError(f"stage_options.image_size={self.image_size!r} must be a positive multiple of 16")
        if self.config.text_vocab_size < 257:
            raise ConfigError(f"model.text_vocab_size={self.config.text_vocab_size} must be >= 257 (byte-level captions)")

    def build_model(self) -> nn.Module:
        from unimask.tokenizers.image_tokenizer_training import build_siglip_stage

        return build_siglip_stage(self.config)

    def blocks(self, model: nn.Module) -> list[nn.Module]:
        return list(model.visual.blocks) if hasattr(model.visual, "blocks") else []

    def make_batch(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        length = self.config.text_max_length
        text_ids = torch.zeros((len(samples), length), dtype=torch.long)
        for row, sample in enumerate(samples):
            caption = sample["json"].get("caption", sample["json"].get("text", ""))
            encoded = list(caption.encode("utf-8"))[:length] or [0]
            text_ids[row, : len(encoded)] = torch.tensor(encoded) + 1
        return {"pixel_values": pixel_batch(samples, self.image_size), "text_ids": text_ids, "text_mask": text_ids > 0}

    def loss(self, model: nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        from unimask.tokenizers.image_tokenizer_training import siglip_stage_loss

        return siglip_stage_loss(model, batch)

    def batch_counts(self, batch: dict[str, Any]) -> dict[str, int]:
        count = int(batch["pixel_values"].shape[0])
        patches = count * (self.image_size // 16) ** 2
        return {"samples": count, "tokens": patches, "images": count}

    def export(self, model: nn.Module, out_dir: Path) -> Path:
        folder = out_dir / "vision_tower"
        folder.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in model.visual.state_dict().items()}, str(folder / "model.safetensors"))
        (folder / "config.json").write_text(json.dumps(dataclasses.asdict(self.config), indent=2))
        return folder
