"""Velocity prediction of the decoder transformer, with the reference's norm-clipped guidance.

The official decoder reads SigVQ features as a caption (`cap_feats`, 1-D positions). A transformer
built with `siglip_feat_dim` also reads the features of the grid's own cells through diffusers' omni
path. That path spreads the cells' rotary positions over the latent size in latent pixels (0 .. H - 1)
while the image tokens sit at patch indices (0 .. H / patch - 1), so with a patch size above 1 a cell
lines up with its latent patch only at the top left corner (diffusers 0.42).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import ZImageTransformer2DModel


@dataclass
class DecoderCondition:
    """SigVQ features a decoder transformer is conditioned on.

    Attributes:
        sequence: (batch, 4 * h * w, cap_feat_dim) features of the 2x-upsampled grid, read as the caption.
        cells: (batch, h, w, siglip_feat_dim) features of the grid's cells, for transformers that
            read them (`reads_cell_features`); None otherwise.
        draft: (batch, draft_channels, 1, H, W) draft latents at the latents' size, for transformers
            with `draft_channels` more input channels than the latents; None otherwise.
    """

    sequence: torch.Tensor
    cells: torch.Tensor | None = None
    draft: torch.Tensor | None = None

    def _apply(self, fn) -> "DecoderCondition":
        return DecoderCondition(*(None if tensor is None else fn(tensor) for tensor in (self.sequence, self.cells, self.draft)))

    def masked(self, keep: torch.Tensor) -> "DecoderCondition":
        """Zero the features of samples where `keep` (batch,) bool is False (the unconditional branch)."""
        return self._apply(lambda tensor: tensor * keep.view(-1, *([1] * (tensor.dim() - 1))).to(tensor.dtype))

    def with_unconditional(self) -> "DecoderCondition":
        """This condition batch followed by as many all-zero (unconditional) samples."""
        return self._apply(lambda tensor: torch.cat([tensor, torch.zeros_like(tensor)]))

    def to(self, device=None, dtype=None) -> "DecoderCondition":
        """Move (and cast) both tensors."""
        return self._apply(lambda tensor: tensor.to(device=device, dtype=dtype))


def reads_cell_features(transformer: ZImageTransformer2DModel) -> bool:
    """Whether `transformer` takes cell features at 2-D positions (built with `siglip_feat_dim`)."""
    return getattr(transformer, "siglip_embedder", None) is not None


def predict_velocity(
    transformer: ZImageTransformer2DModel,
    latents: torch.Tensor,
    data_time: torch.Tensor,
    condition: torch.Tensor | DecoderCondition,
    guidance_scale: float = 0.0,
) -> torch.Tensor:
    """Velocity v = x_data - noise predicted at data time t (0 = noise, 1 = data).

    latents: (batch, C, 1, h, w); data_time: (batch,) float in [0, 1]; condition: a
    `DecoderCondition`, or its `sequence` tensor (batch, seq, cap_feat_dim) alone for transformers
    that read neither cell features nor a draft -> (batch, C, 1, h, w) float32.

    guidance_scale > 0 runs a second, unconditional pass against all-zero features and returns
    `cond + guidance_scale * (cond - uncond)` rescaled per sample so its norm never exceeds the
    conditional prediction's (the reference convention: its default 1.0 equals diffusers' 2.0).
    """
    if isinstance(condition, torch.Tensor):
        condition = DecoderCondition(condition)
    spatial = reads_cell_features(transformer)
    if spatial and condition.cells is None:
        raise ValueError("this decoder transformer reads cell features (built with siglip_feat_dim); pass a "
                         "DecoderCondition with cells, e.g. from SigVQEmbedding.condition(grids, cells=True)")
    batch = latents.shape[0]
    draft_channels = 0 if condition.draft is None else condition.draft.shape[1]
    if transformer.config.in_channels != latents.shape[1] + draft_channels:
        raise ValueError(
            f"the transformer takes {transformer.config.in_channels} input channels; latents have {latents.shape[1]} "
            f"and the condition's draft {draft_channels} (a decoder built with draft patches needs a SigVQ "
            "condition made with latent_size)"
        )
    dtype = transformer.dtype
    patch = transformer.config.all_patch_size[0]
    frame_patch = transformer.config.all_f_patch_size[0]
    condition = condition.to(dtype=dtype)
    x = latents.to(dtype)
    t = data_time.to(device=latents.device, dtype=torch.float32)
    if guidance_scale > 0:
        x = torch.cat([x, x])
        t = torch.cat([t, t])
        condition = condition.with_unconditional()
    if condition.draft is not None:
        x = torch.cat([x, condition.draft], dim=1)
    if spatial:
        # diffusers' omni mode: one image per sample, each input a list per sample; the image is noisy (1)
        inputs = {"x": [[item] for item in x.unbind(0)],
                  "cap_feats": [[item] for item in condition.sequence.unbind(0)],
                  "siglip_feats": [[item] for item in condition.cells.unbind(0)],
                  "image_noise_mask": [[1]] * x.shape[0]}
    else:
        inputs = {"x": list(x.unbind(0)), "cap_feats": list(condition.sequence.unbind(0))}
    out = transformer(t=t, patch_size=patch, f_patch_size=frame_patch, return_dict=False, **inputs)[0]
    velocity = torch.stack(out).float()[:, : latents.shape[1]]
    if guidance_scale <= 0:
        return velocity
    cond, uncond = velocity[:batch], velocity[batch:]
    guided = cond + guidance_scale * (cond - uncond)
    cond_norm = cond.flatten(1).norm(dim=1)
    guided_norm = guided.flatten(1).norm(dim=1)
    rescale = torch.where(guided_norm > cond_norm, cond_norm / guided_norm, torch.ones_like(cond_norm))
    return guided * rescale.view(batch, *([1] * (guided.dim() - 1)))
