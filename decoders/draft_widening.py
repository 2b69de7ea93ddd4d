"""Continue a decoder that read only the latents as one that also reads a draft image.

A transformer built with `draft_channels` more input channels than the VAE latents (see
`unimask.decoders.velocity`) differs from one built without them only in its patch embedding and
final projection, whose patch vectors are ordered (frame, row, column, channel) with the channel
last. `widen_state_for_draft` gives an earlier decoder's weights the new channels with zero
weights, so the widened decoder starts out predicting exactly what the earlier one did and learns
to use the draft from there.
"""

from __future__ import annotations

import torch

__all__ = ["widen_state_for_draft"]


def _pad_channels(tensor: torch.Tensor, patch_items: int, old_channels: int, new_channels: int, dim: int) -> torch.Tensor:
    """Insert zero channels into the patch axis `dim` of `tensor` (size patch_items * old_channels)."""
    shape = list(tensor.shape)
    split = shape[:dim] + [patch_items, old_channels] + shape[dim + 1 :]
    grouped = tensor.reshape(split)
    pad_shape = list(split)
    pad_shape[dim + 1] = new_channels - old_channels
    widened = torch.cat([grouped, grouped.new_zeros(pad_shape)], dim=dim + 1)
    shape[dim] = patch_items * new_channels
    return widened.reshape(shape)


def widen_state_for_draft(state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Widen a Z-Image transformer state dict to the input channels of `expected`.

    state: the earlier transformer's weights; expected: the new transformer's `state_dict()` (same
    architecture but more `in_channels`). `all_x_embedder.*.weight` (dim, items * C) and
    `all_final_layer.*.linear.weight` / `.bias` (items * C, dim) / (items * C,) get zero entries for the
    new channels; every other tensor is returned unchanged. Returns a new dict.

    Raises:
        ValueError: a tensor whose channel count cannot be widened to the expected one.
    """
    widened = dict(state)
    for name, tensor in state.items():
        if name not in expected or tuple(tensor.shape) == tuple(expected[name].shape):
            continue
        if name.startswith("all_x_embedder.") and name.endswith(".weight"):
            axis = 1
        elif name.startswith("all_final_layer.") and (name.endswith(".linear.weight") or name.endswith(".linear.bias")):
            axis = 0
        else:
            continue  # left for the strict load to report
        patch, frame_patch = (int(part) for part in name.split(".")[1].split("-"))
        items = frame_patch * patch * patch
        old_size, new_size = tensor.shape[axis], expected[name].shape[axis]
        if old_size % items or new_size % items or new_size < old_size:
            raise ValueError(f"{name}: cannot widen {tuple(tensor.shape)} to {tuple(expected[name].shape)}")
        widened[name] = _pad_channels(tensor, items, old_size // items, new_size // items, axis)
    return widened
