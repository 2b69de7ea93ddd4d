"""Reading checkpoint files safely: JSON configs, safetensors weights, strict state dicts.

Shared by the backbone, the image tokenizer and the decoder. Every failure is a ``ValueError`` that
names the file and says what is wrong with it; weights are read only from safetensors, so a pickle
disguised as a weights file is refused without being unpickled.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

__all__ = ["read_json_object", "load_safetensors", "load_state_dict_strict", "load_folder_weights",
           "load_folder_weights_strict"]


def read_json_object(path: str | Path) -> dict:
    """The JSON object stored in ``path``.

    Raises:
        ValueError: naming the file when it is missing, not valid JSON, or not a JSON object.
    """
    path = Path(path)
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"{path} is missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from None
    if not isinstance(value, dict):
        raise ValueError(f"{path} must hold a JSON object, got {type(value).__name__}")
    return value


def load_safetensors(path: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of safetensors file ``path`` (name -> tensor on CPU).

    Raises:
        ValueError: naming the file when it is truncated, corrupt or of another format (a pickle is
            never unpickled).
    """
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as error:
        raise ValueError(
            f"{path} is not a readable safetensors file (truncated, corrupt or another format; pickled "
            f"weights are never loaded): {error}"
        ) from None


def load_state_dict_strict(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load ``state`` into ``model`` (possibly built on the meta device) with exact key matching.

    Tensors are assigned, not copied, so a meta-device model gets real storage.

    Raises:
        ValueError: listing missing and unexpected keys, or naming the first shape mismatch.
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


def load_folder_weights(folder: str | Path) -> dict[str, torch.Tensor]:
    """Every tensor of the safetensors weights of ``folder`` (one file, indexed shards or every
    ``*.safetensors``; ``checkpoint_files``) as one name -> tensor dict.

    Raises:
        ValueError: no safetensors file in ``folder``, or an unreadable file.
    """
    from unimask.unimodal.checkpoint_layout import checkpoint_files

    state: dict[str, torch.Tensor] = {}
    for file in checkpoint_files(folder):
        state.update(load_safetensors(file))
    return state


def load_folder_weights_strict(model: nn.Module, folder: str | Path) -> None:
    """Load the safetensors weights of ``folder`` (one file, indexed shards or every ``*.safetensors``;
    ``checkpoint_files``) into ``model``, exactly.

    Used to continue training from a saved model (``stage_options.init``): the model is built from
    the recipe, so a folder saved with another architecture is refused, not silently adapted.

    Raises:
        ValueError: no safetensors file in ``folder``, an unreadable file, or (from
            ``load_state_dict_strict``) missing / unexpected keys or a shape mismatch.
    """
    load_state_dict_strict(model, load_folder_weights(folder))
