"""The official LLaDA2.0-Uni backbone checkpoint layout: weight names and shapes, and a check of a
checkpoint directory against them (read from the safetensors headers, no tensor is loaded)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors import safe_open


def official_backbone_shapes(config: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """Official weight name -> shape for a backbone config.json dict (experts one by one).

    Args:
        config: config.json keys (``hidden_size``, ``num_experts``, ...); optional ones default
            as in the official code.

    Returns:
        Dict of weight name -> shape tuple, in checkpoint order.
    """
    hidden, heads, kv_heads = config["hidden_size"], config["num_attention_heads"], config["num_key_value_heads"]
    head_dim = config.get("head_dim") or hidden // heads
    num_experts = config.get("num_experts") or 0
    first_dense = config.get("first_k_dense_replace", 0)
    num_shared = config.get("num_shared_experts") or 0
    shapes: dict[str, tuple[int, ...]] = {
        "model.word_embeddings.weight": (config["vocab_size"], hidden),
        "model.norm.weight": (hidden,),
        "lm_head.weight": (config["vocab_size"], hidden),
    }

    def swiglu(prefix: str, width: int) -> None:
        shapes[f"{prefix}.gate_proj.weight"] = (width, hidden)
        shapes[f"{prefix}.up_proj.weight"] = (width, hidden)
        shapes[f"{prefix}.down_proj.weight"] = (hidden, width)

    for layer in range(config["num_hidden_layers"]):
        prefix = f"model.layers.{layer}"
        shapes[f"{prefix}.input_layernorm.weight"] = (hidden,)
        shapes[f"{prefix}.post_attention_layernorm.weight"] = (hidden,)
        shapes[f"{prefix}.attention.query_key_value.weight"] = ((heads + 2 * kv_heads) * head_dim, hidden)
        if config.get("use_qkv_bias", False):
            shapes[f"{prefix}.attention.query_key_value.bias"] = ((heads + 2 * kv_heads) * head_dim,)
        shapes[f"{prefix}.attention.query_layernorm.weight"] = (head_dim,)
        shapes[f"{prefix}.attention.key_layernorm.weight"] = (head_dim,)
        shapes[f"{prefix}.attention.dense.weight"] = (hidden, heads * head_dim)
        if config.get("use_bias", False):
            shapes[f"{prefix}.attention.dense.bias"] = (hidden,)
        if not num_experts or layer < first_dense:
            swiglu(f"{prefix}.mlp", config["intermediate_size"])
            continue
        shapes[f"{prefix}.mlp.gate.weight"] = (num_experts, hidden)
        shapes[f"{prefix}.mlp.gate.expert_bias"] = (num_experts,)
        for expert in range(num_experts):
            swiglu(f"{prefix}.mlp.experts.{expert}", config["moe_intermediate_size"])
        if num_shared:
            swiglu(f"{prefix}.mlp.shared_experts", config["moe_intermediate_size"] * num_shared)
    return shapes


def checkpoint_tensor_shapes(directory: str | Path) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor in a safetensors checkpoint directory (single file or index)."""
    directory = Path(directory)
    single = directory / "model.safetensors"
    index = directory / "model.safetensors.index.json"
    if single.is_file():
        files = [single]
    elif index.is_file():
        files = [directory / name for name in sorted(set(json.loads(index.read_text())["weight_map"].values()))]
    else:
        files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise ValueError(f"no safetensors weights found in {directory}")
    shapes: dict[str, tuple[int, ...]] = {}
    for file in files:
        with safe_open(str(file), framework="pt") as handle:
            for name in handle.keys():
                shapes[name] = tuple(handle.get_slice(name).get_shape())
    return shapes


def check_official_checkpoint(directory: str | Path, config: dict[str, Any]) -> None:
    """Raise ValueError listing every missing, unexpected or mis-shaped weight of a checkpoint.

    Args:
        directory: checkpoint directory with safetensors weights.
        config: its config.json as a dict (gives the expected names and shapes).
    """
    expected = official_backbone_shapes(config)
    found = checkpoint_tensor_shapes(directory)
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    mismatched = sorted(
        f"{name}: checkpoint {found[name]} vs expected {expected[name]}"
        for name in set(expected) & set(found)
        if tuple(found[name]) != tuple(expected[name])
    )
    problems = {"missing": missing, "unexpected": unexpected, "mis-shaped": mismatched}
    if any(problems.values()):
        details = "; ".join(f"{kind} keys: {keys}" for kind, keys in problems.items() if keys)
        raise ValueError(f"checkpoint at {directory} does not have the official backbone layout: {details}")


__all__ = ["check_official_checkpoint", "checkpoint_tensor_shapes", "official_backbone_shapes"]
