"""Strict weight loading for models built on the meta device."""

from __future__ import annotations

import torch
from torch import nn


def load_state_dict_strict(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load `state` into `model` (possibly built on the meta device) with exact key matching.

    Raises `ValueError` listing missing and unexpected keys, or naming the first shape mismatch.
    """
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ValueError(
            f"{type(model).__name__}: state dict mismatch; missing {missing[:10]} ({len(missing)} "
            f"in all), unexpected {unexpected[:10]} ({len(unexpected)} in all)"
        )
    for name, tensor in state.items():
        if tuple(tensor.shape) != tuple(expected[name].shape):
            raise ValueError(
                f"{type(model).__name__}: weight {name!r} has shape {tuple(tensor.shape)}, "
                f"the model expects {tuple(expected[name].shape)}"
            )
    model.load_state_dict(state, strict=True, assign=True)
