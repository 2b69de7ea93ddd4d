"""Moving between pixels and the normalised VAE latents the decoder transformer works on.

The transformer sees latents z_norm = (z - shift_factor) * scaling_factor shaped
(batch, channels, 1, H / f, W / f), with a singleton frame axis (Z-Image's F axis) and f the
VAE's downsampling factor (8 for the official FLUX-style VAE).
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL


def vae_downsampling_factor(vae: AutoencoderKL) -> int:
    """Spatial downsampling factor of an `AutoencoderKL`: 2 ** (number of blocks - 1)."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


def _shift(vae: AutoencoderKL) -> float:
    return vae.config.shift_factor if vae.config.shift_factor is not None else 0.0


@torch.no_grad()
def encode_pixels(
    vae: AutoencoderKL, pixel_values: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Encode images to normalised latents (a posterior sample; the VAE stays frozen).

    pixel_values: (batch, 3, H, W) in [-1, 1] -> (batch, latent_channels, 1, H / f, W / f) float32.
    """
    pixels = pixel_values.to(device=vae.device, dtype=vae.dtype)
    latents = vae.encode(pixels).latent_dist.sample(generator=generator)
    return ((latents.float() - _shift(vae)) * vae.config.scaling_factor).unsqueeze(2)


def decode_latents(vae: AutoencoderKL, latents: torch.Tensor) -> torch.Tensor:
    """Decode normalised latents to images.

    latents: (batch, latent_channels, 1, h, w) -> (batch, 3, h * f, w * f) float32 in [0, 1].
    """
    scaled = latents.squeeze(2).to(device=vae.device, dtype=vae.dtype)
    scaled = scaled / vae.config.scaling_factor + _shift(vae)
    images = vae.decode(scaled, return_dict=False)[0]
    return ((images.float() + 1.0) / 2.0).clamp(0.0, 1.0)
