"""Map a SigLIP2 vision checkpoint onto the image tokenizer's ``GlmImageVisionModel`` tower.

Stage 1 of the tokenizer can start from a pretrained SigLIP2 tower instead of random weights:
`glm_vision_state_dict_from_siglip2` renames (and, for the patch embedding, reshapes) its tensors.
"""

from __future__ import annotations

import torch

__all__ = ["glm_vision_state_dict_from_siglip2"]


def glm_vision_state_dict_from_siglip2(
    siglip2_state: dict[str, torch.Tensor], patch_size: int = 16
) -> dict[str, torch.Tensor]:
    """Map a SigLIP2 vision tower (transformers ``Siglip2VisionModel`` state dict; a ``vision_model.``
    prefix is accepted) onto ``GlmImageVisionModel`` names.

    - ``embeddings.patch_embedding`` (Linear over patches flattened as (row, col, channel)) ->
      ``patch_embed.proj`` (Conv2d, weight (D, C, p, p));
    - ``embeddings.position_embedding`` -> ``embeddings.position_embedding`` (same square table);
    - per layer ``self_attn.{q,k,v}_proj`` -> ``attn.qkv`` (concatenated), ``self_attn.out_proj`` ->
      ``attn.proj``, ``layer_norm1/2`` -> ``norm1/2``, ``mlp.fc1/fc2`` unchanged;
    - ``post_layernorm`` and the pooling ``head`` have no counterpart and are dropped.
    Use ``hidden_act="gelu_pytorch_tanh"`` and SigLIP2's ``layer_norm_eps`` in the vision config.
    At the table's own grid size both towers compute the same features (up to SigLIP2's final
    layer norm); at other sizes the position tables are resampled slightly differently.
    """
    state = {k.removeprefix("vision_model."): v for k, v in siglip2_state.items()}
    patch_weight = state["embeddings.patch_embedding.weight"]
    dim = patch_weight.shape[0]
    channels = patch_weight.shape[1] // (patch_size * patch_size)
    mapped = {
        "patch_embed.proj.weight": patch_weight.view(dim, patch_size, patch_size, channels).permute(0, 3, 1, 2),
        "patch_embed.proj.bias": state["embeddings.patch_embedding.bias"],
        "embeddings.position_embedding.weight": state["embeddings.position_embedding.weight"],
    }
    num_layers = 1 + max(int(k.split(".")[2]) for k in state if k.startswith("encoder.layers."))
    for i in range(num_layers):
        src, dst = f"encoder.layers.{i}.", f"blocks.{i}."
        for kind in ("weight", "bias"):
            mapped[f"{dst}attn.qkv.{kind}"] = torch.cat([state[f"{src}self_attn.{n}_proj.{kind}"] for n in "qkv"])
            mapped[f"{dst}attn.proj.{kind}"] = state[f"{src}self_attn.out_proj.{kind}"]
            mapped[f"{dst}norm1.{kind}"] = state[f"{src}layer_norm1.{kind}"]
            mapped[f"{dst}norm2.{kind}"] = state[f"{src}layer_norm2.{kind}"]
            mapped[f"{dst}mlp.fc1.{kind}"] = state[f"{src}mlp.fc1.{kind}"]
            mapped[f"{dst}mlp.fc2.{kind}"] = state[f"{src}mlp.fc2.{kind}"]
    return mapped
