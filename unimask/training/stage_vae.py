"""The ``vae`` stage: AutoencoderKL training (L1 reconstruction + KL) on images alone.

``model``: ``{"preset": "<decoder preset>"}`` (its ``vae`` section). ``stage_options``:
``kl_weight`` (default 1e-6), ``image_size`` (default 64; images are resized to it), ``crop_size``
(default None: whole images; else a square crop at a multiple of 8 px chosen from the sample key,
so a fully convolutional VAE trains several times faster at the same pixel scale), ``init`` (a
saved VAE folder to continue from; default: random weights), ``posterior_logvar_init`` (default None;
a float sets the encoder's log-variance outputs to that constant, e.g. -10, so the posterior sample
is the mean up to negligible noise: with the tiny default KL weight a unit-variance initial posterior
otherwise drowns the latent signal for thousands of steps and the decoder learns washed-out colours),
``freeze_encoder`` (default False; True trains only the decoder side, so latents, and a diffusion
model trained on them, stay valid).
Export: ``vae/`` (diffusers ``save_pretrained``).
"""

from __future__ import annotations

import zlib
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
        options = {"kl_weight": 1e-6, "image_size": 64, "crop_size": None, "init": None, "posterior_logvar_init": None,
                   "freeze_encoder": False, **self.recipe.stage_options}
        allowed = ["crop_size", "freeze_encoder", "image_size", "init", "kl_weight", "posterior_logvar_init"]
        unknown = sorted(set(options) - set(allowed))
        if unknown:
            raise ConfigError(f"stage_options: unknown key(s) {unknown} for stage 'vae'; allowed: {allowed}")
        self.kl_weight, self.image_size = float(options["kl_weight"]), int(options["image_size"])
        self.crop_size, self.init = options["crop_size"], options["init"]
        self.logvar_init = options["posterior_logvar_init"]
        self.freeze_encoder = bool(options["freeze_encoder"])
        if self.crop_size is not None and (not isinstance(self.crop_size, int) or self.crop_size % 8 or not 8 <= self.crop_size <= self.image_size):
            raise ConfigError(f"stage_options.crop_size={self.crop_size!r} must be a multiple of 8 in [8, image_size={self.image_size}]")
        if self.init is not None and not (Path(self.init) / "config.json").is_file():
            raise ConfigError(f"stage_options.init={self.init!r} is not a saved VAE folder (no config.json)")

    def build_model(self) -> nn.Module:
        from diffusers import AutoencoderKL

        model = AutoencoderKL.from_pretrained(self.init) if self.init is not None else AutoencoderKL(**self.vae_config)
        if self.logvar_init is not None:
            conv_out = model.encoder.conv_out  # 2 * latent_channels outputs: mean, then log-variance
            latent = conv_out.out_channels // 2
            with torch.no_grad():
                conv_out.weight[latent:].zero_()
                conv_out.bias[latent:].fill_(float(self.logvar_init))
        if self.freeze_encoder:
            model.encoder.requires_grad_(False)
            if model.quant_conv is not None:
                model.quant_conv.requires_grad_(False)
        return model

    def make_batch(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        pixels = []
        for sample in samples:
            if not sample["images"]:
                raise ValueError(f"sample {sample.get('__key__')!r} has no image")
            image = sample["images"][0].convert("RGB").resize((self.image_size, self.image_size))
            array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
            if self.crop_size is not None:
                slots = (self.image_size - self.crop_size) // 8 + 1
                digest = zlib.crc32(str(sample.get("__key__")).encode())
                top, left = 8 * (digest % slots), 8 * ((digest // slots) % slots)
                array = array[top : top + self.crop_size, left : left + self.crop_size]
            pixels.append(torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1))
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
