"""Uniform weight averaging of models of one architecture (a "model soup").

Two continuations of one model that learned different things can keep both in the mean of their weights: on Shapes
World the mean of the v29 backbone and its continuation on edit-weighted data (v32) edits better than either and
answers as well as v29 (docs/model-card.md, "Edits weighted to recolour and move").
"""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path
from typing import Any

import torch

__all__ = ["average_pretrained"]

# Config entries that say where or with what a model was saved, not what it is.
_PROVENANCE_KEYS = ("_name_or_path", "transformers_version", "torch_dtype", "dtype")


def average_pretrained(model_class: Any, folders: list[str | Path], out: str | Path) -> Path:
    """Save the uniform mean of the weights of the models in ``folders`` to ``out``.

    model_class: a ``transformers.PreTrainedModel`` subclass (e.g. ``LLaDA2MoeModelLM``) that loads each folder with
    ``from_pretrained``. folders: two or more saved models with the same config (so, loaded by one class, the same
    weight names and shapes). Floating-point tensors are averaged in float32 and cast back to their dtype; other
    tensors (integer buffers) must be equal and are kept. ``out`` is written with ``save_pretrained`` (safetensors) into a temporary
    sibling folder that replaces ``out`` when complete, so an interrupted run leaves no half-written model.
    Returns ``out``. Raises ``ValueError`` when fewer than two folders are given or the models differ in config or
    in a non-floating tensor.
    """
    folders = [Path(folder) for folder in folders]
    if len(folders) < 2:
        raise ValueError(f"folders: need at least two models to average, got {len(folders)}")
    models = [model_class.from_pretrained(folder).eval() for folder in folders]
    reference = _architecture(models[0].config)
    for folder, model in zip(folders[1:], models[1:]):
        other = _architecture(model.config)
        if other != reference:
            differing = sorted(key for key in reference.keys() | other.keys() if reference.get(key) != other.get(key))
            raise ValueError(f"folders: {folder} has another config than {folders[0]} (differs in {differing}); "
                             "only models of one architecture can be averaged")
    states = [model.state_dict() for model in models]
    averaged = {name: _mean(name, [state[name] for state in states], folders) for name in states[0]}
    with torch.no_grad():
        models[0].load_state_dict(averaged)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}-{uuid.uuid4().hex}"  # made by mkdir, so with the umask's permissions
    staging.mkdir()
    try:
        models[0].save_pretrained(staging)
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


def _architecture(config: Any) -> dict[str, Any]:
    """A config's entries without the provenance ones."""
    return {key: value for key, value in config.to_dict().items() if key not in _PROVENANCE_KEYS}


def _mean(name: str, tensors: list[torch.Tensor], folders: list[Path]) -> torch.Tensor:
    """The element-wise mean of one weight across the models; a non-floating tensor must be equal in all and is kept."""
    first = tensors[0]
    if first.is_floating_point():
        return torch.stack([tensor.float() for tensor in tensors]).mean(0).to(first.dtype)
    for folder, tensor in zip(folders[1:], tensors[1:]):
        if not torch.equal(tensor, first):
            raise ValueError(f"folders: the non-floating tensor {name} differs between {folders[0]} and {folder}")
    return first
