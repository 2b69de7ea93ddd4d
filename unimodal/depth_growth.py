"""Depth growth: a deeper backbone that starts as exactly the function of a trained shallower one.

Each new decoder layer is a copy of the layer it follows, with its two residual outputs (the attention's
``dense`` projection and every ``down_proj`` of its MLP or experts) set to zero. A zero residual output makes the
layer the identity, so the grown model's logits equal the old model's; the zeroed projections still get gradients
(their input is the copied layer's activations), so training moves the new layers off the identity from the first
step. This is block expansion as in LLaMA Pro (Wu et al., 2024), here for the LLaDA2 MoE layers.
"""

from __future__ import annotations

import torch

from .modeling_llada2_moe import LLaDA2MoeModelLM

__all__ = ["check_grow_after", "grow_backbone_depth"]

_LAYER_PREFIX = "model.layers."
# The residual outputs of a decoder layer, by the end of their parameter names (dense MLP, stacked experts and
# shared experts all end in "down_proj" or "down_proj.weight").
_RESIDUAL_OUTPUTS = ("attention.dense.weight", "down_proj", "down_proj.weight")


def check_grow_after(grow_after: object, num_layers: int) -> list[int]:
    """Validate ``grow_after``, the layers of a ``num_layers``-layer model each followed by a new copy.

    Returns the indices as a sorted list of distinct ints in ``[0, num_layers)``; raises ``ValueError`` naming
    ``grow_after`` otherwise.
    """
    if isinstance(grow_after, (str, bytes)) or not hasattr(grow_after, "__iter__"):
        raise ValueError(f"grow_after must be a list of layer indices in [0, {num_layers}), got {grow_after!r}")
    indices = list(grow_after)
    if not indices or any(isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < num_layers for i in indices):
        raise ValueError(f"grow_after must be a non-empty list of layer indices in [0, {num_layers}), got {grow_after!r}")
    if len(set(indices)) != len(indices):
        raise ValueError(f"grow_after must not repeat a layer, got {grow_after!r}")
    return sorted(indices)


def grow_backbone_depth(source: LLaDA2MoeModelLM, target: LLaDA2MoeModelLM, grow_after: list[int]) -> LLaDA2MoeModelLM:
    """Fill ``target`` (a freshly built model with ``len(grow_after)`` more layers than ``source`` and otherwise the
    same shapes) with ``source``'s weights, a zero-output copy of layer ``i`` following each ``i`` in ``grow_after``.

    A new copy of a dense layer is dense only where ``target``'s config makes that position dense
    (``first_k_dense_replace``), so each new layer must sit where ``target`` has the same kind of layer as the one
    copied. Returns ``target``, whose logits equal ``source``'s for every input. Raises ``ValueError`` when the
    layer counts or any shape do not fit.
    """
    num_source = len(source.model.layers)
    grow_after = check_grow_after(grow_after, num_source)
    if len(target.model.layers) != num_source + len(grow_after):
        raise ValueError(f"the grown model needs {num_source} + {len(grow_after)} layers (grow_after={grow_after}), "
                         f"the target config has {len(target.model.layers)}")
    # origin[j] = (source layer copied into target layer j, whether j is a new layer)
    origin = [entry for i in range(num_source) for entry in [(i, False)] + [(i, True)] * (i in grow_after)]
    source_state = source.state_dict()
    grown = {}
    for name, value in target.state_dict().items():
        if not name.startswith(_LAYER_PREFIX):
            if name not in source_state:
                raise ValueError(f"source model has no weight {name!r}")
            grown[name] = source_state[name]
        else:
            layer, rest = name[len(_LAYER_PREFIX):].split(".", 1)
            copied, is_new = origin[int(layer)]
            source_name = f"{_LAYER_PREFIX}{copied}.{rest}"
            if source_name not in source_state:
                raise ValueError(f"target layer {layer} ({rest}) has no counterpart in source layer {copied}: "
                                 "a new layer must be of the same kind (dense or MoE) as the layer it copies")
            grown[name] = source_state[source_name].clone()
            if is_new and rest.endswith(_RESIDUAL_OUTPUTS):
                grown[name].zero_()
        if grown[name].shape != value.shape:
            raise ValueError(f"{name}: source shape {tuple(grown[name].shape)} does not fit target {tuple(value.shape)}")
    with torch.no_grad():
        target.load_state_dict(grown, strict=True)
    return target
