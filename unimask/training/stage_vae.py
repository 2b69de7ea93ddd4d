"""The ``vae`` stage: AutoencoderKL training (L1 reconstruction + KL) on images alone.

``model``: ``{"preset": "<decoder preset>"}`` (its ``vae`` section). ``stage_options``:
``kl_weight`` (default 1e-6), ``image_size`` (default 64; images are resized to it).
Export: ``vae/`` (diffusers ``save_pretrained``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from unimask.config import ConfigError
from unimask.training.stages import Stage

__all__ = ["VAEStage"]


class VAEStage(Stage):
    """``unimask.decoders.training_losses.vae_loss``."""

    name = "vae"

    def check_config(self) -> None:
        from unimask.decoders.decoder_presets import load_decoder_preset

        model = dict(self.recipe.model)
        preset = model.pop("preset", "tiny")
        if model:
            raise ConfigError(f"model: unknown key(s) {sorted(model)} for stage 'vae'; allowed: ['preset']")
        try:
            self.vae_config = load_decoder_preset(preset)["vae"]
        except ValueError as err:
            raise ConfigError(f"model.preset: unknown model preset {preset!r}: {err}") from None
        options = {"kl_weight": 1e-6, "image_size": 64, **self.recipe.stage_options}
        unknown = sorted(set(options) - {"kl_weight", "image_size"})
        if unknown:
            raise ConfigError(f"stage_options: unknown key(s) {unknown} for stage 'vae'; allowed: ['image_size', 'kl_weight']")
        self.kl_weight, self.image_size = float(options["kl_weight"]), int(options["image_size"])

    def build_model(self) -> nn.Module:
        from diffusers import AutoencoderKL

        return AutoencoderKL(**self.vae_config)

    def make_batch(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        pixels = []
        for sample in samples:
            if not sample["images"]:
                raise ValueError(f"sample {sample.get('__key__')!r} has no image")
            image = sample["images"][0].convert("RGB").resize((self.image_size, self.image_size))
            pixels.append(torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1))
        return {"pixel_values": torch.stack(pixels)}

    def loss(self, model: nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        from unimask.decoders.training_losses import vae_loss

        return vae_loss(model, batch, kl_weight=self.kl_weight)

    def batch_counts(self, batch: dict[str, Any]) -> dict[str, int]:
        count = int(batch["pixel_values"].shape[0])
        return {"samples": count, "tokens": 0, "images": count}

    def export(self, model: nn.Module, out_dir: Path) -> Path:
        model.save_pretrained(out_dir / "vae", safe_serialization=True)
        return out_dir / "vae"
