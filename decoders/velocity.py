"""Velocity prediction of the decoder transformer, with the reference's norm-clipped guidance."""

from __future__ import annotations

import torch
from diffusers import ZImageTransformer2DModel


def predict_velocity(
    transformer: ZImageTransformer2DModel,
    latents: torch.Tensor,
    data_time: torch.Tensor,
    features: torch.Tensor,
    guidance_scale: float = 0.0,
) -> torch.Tensor:
    """Velocity v = x_data - noise predicted at data time t (0 = noise, 1 = data).

    latents: (batch, C, 1, h, w); data_time: (batch,) float in [0, 1];
    features: (batch, seq, cap_feat_dim) SigVQ features -> (batch, C, 1, h, w) float32.

    guidance_scale > 0 runs a second, unconditional pass against all-zero features and returns
    `cond + guidance_scale * (cond - uncond)` rescaled per sample so its norm never exceeds the
    conditional prediction's (the reference convention: its default 1.0 equals diffusers' 2.0).
    """
    batch = latents.shape[0]
    dtype = transformer.dtype
    patch = transformer.config.all_patch_size[0]
    frame_patch = transformer.config.all_f_patch_size[0]
    x = latents.to(dtype)
    features = features.to(dtype)
    t = data_time.to(device=latents.device, dtype=torch.float32)
    if guidance_scale > 0:
        x = torch.cat([x, x])
        t = torch.cat([t, t])
        features = torch.cat([features, torch.zeros_like(features)])
    out = transformer(
        x=list(x.unbind(0)),
        t=t,
        cap_feats=list(features.unbind(0)),
        patch_size=patch,
        f_patch_size=frame_patch,
        return_dict=False,
    )[0]
    velocity = torch.stack(out).float()
    if guidance_scale <= 0:
        return velocity
    cond, uncond = velocity[:batch], velocity[batch:]
    guided = cond + guidance_scale * (cond - uncond)
    cond_norm = cond.flatten(1).norm(dim=1)
    guided_norm = guided.flatten(1).norm(dim=1)
    rescale = torch.where(guided_norm > cond_norm, cond_norm / guided_norm, torch.ones_like(cond_norm))
    return guided * rescale.view(batch, *([1] * (guided.dim() - 1)))
