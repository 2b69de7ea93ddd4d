"""Classifier-free guidance on masked-diffusion logits.

Scales here are zero-based: a scale of 0 returns the conditional logits unchanged (no guidance). The
official LLaDA2.0-Uni code (and sglang-omni's `low_confidence_cfg.py`) uses one-based scales, where
`cfg_scale = 1.0` disables guidance:

- simple:    official  uncond + cfg_scale * (cond - uncond)
             here      cond + guidance_scale * (cond - uncond)            guidance_scale = cfg_scale - 1
- three-way: official  no_text + cfg_text_scale * (cond - no_text) + cfg_image_scale * (no_text - no_image)
             here      cond + text_guidance_scale * (cond - no_text) + image_guidance_scale * (no_text - no_image)
                       text_guidance_scale = cfg_text_scale - 1, image_guidance_scale = cfg_image_scale

so the official defaults (t2i cfg_scale 2.0, edit cfg_text_scale 4.0) are 1.0 and 3.0 here; use
`from_official_cfg_scale`. Optional rescaling (official `cfg_rescale`, diffusers `guidance_rescale`) pulls
the per-position standard deviation of the guided logits back towards the conditional one:
guided <- r * guided * std(cond) / std(guided) + (1 - r) * guided.
"""

from __future__ import annotations

import torch


def from_official_cfg_scale(cfg_scale: float) -> float:
    """Convert an official one-based scale (`cfg_scale`, `cfg_text_scale`; 1.0 = off) to ours (0.0 = off)."""
    return float(cfg_scale) - 1.0


def rescale_guided_logits(guided: torch.Tensor, cond: torch.Tensor, rescale: float) -> torch.Tensor:
    """Blend `guided` with a copy rescaled to the standard deviation of `cond` over the vocabulary.

    guided, cond: (..., vocab) float; rescale in [0, 1] (0 returns `guided`). Returns (..., vocab).
    """
    if rescale == 0.0:
        return guided
    ratio = cond.std(dim=-1, keepdim=True) / (guided.std(dim=-1, keepdim=True) + 1e-6)
    return rescale * guided * ratio + (1.0 - rescale) * guided


def apply_guidance(
    cond: torch.Tensor, uncond: torch.Tensor, guidance_scale: float, guidance_rescale: float = 0.0
) -> torch.Tensor:
    """Simple CFG: cond + guidance_scale * (cond - uncond), then optional rescale.

    cond, uncond: (batch, positions, vocab) float. Returns the guided logits, same shape; equals `cond`
    exactly when guidance_scale == 0 (finite logits).
    """
    guided = cond + guidance_scale * (cond - uncond)
    if guidance_scale == 0.0:
        return guided
    return rescale_guided_logits(guided, cond, guidance_rescale)


def apply_three_way_guidance(
    cond: torch.Tensor,
    no_text: torch.Tensor,
    no_image: torch.Tensor,
    text_guidance_scale: float,
    image_guidance_scale: float,
    guidance_rescale: float = 0.0,
) -> torch.Tensor:
    """Editing CFG with a text and an image direction (official form, zero-based text scale).

    cond: logits with instruction and source image; no_text: source image without the instruction;
    no_image: instruction without the source image; all (batch, positions, vocab) float.
    Returns cond + text_scale * (cond - no_text) + image_scale * (no_text - no_image), optionally
    rescaled; equals `cond` when both scales are 0.
    """
    guided = cond + text_guidance_scale * (cond - no_text) + image_guidance_scale * (no_text - no_image)
    if text_guidance_scale == 0.0 and image_guidance_scale == 0.0:
        return guided
    return rescale_guided_logits(guided, cond, guidance_rescale)
