"""Write small random backbone checkpoints in the official LLaDA2.0-Uni layout.

The files are produced directly from the official names and shapes (not through
`LLaDA2MoeModelLM.save_pretrained`), so loading them tests the official layout for real:
``config.json`` with every official key, per-expert weights ``mlp.experts.{e}.*_proj.weight``,
safetensors shards and ``model.safetensors.index.json``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from .checkpoint_layout import official_backbone_shapes
from .configuration_llada2_moe import OFFICIAL_CONFIG_KEYS, LLaDA2MoeConfig

# Tiny sizes; the token ids match `TokenLayout.shapes(text_vocab_size=256, codebook_size=256)`
# (eos = pad = 0, image codes at 256 + [0, 256)).
TINY_BACKBONE_CONFIG: dict[str, Any] = {
    "architectures": ["LLaDA2MoeModelLM"],
    "model_type": "llada2_moe",
    "vocab_size": 512,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 8,
    "hidden_act": "silu",
    "use_qkv_bias": False,
    "use_qk_norm": True,
    "use_bias": False,
    "use_rmsnorm": True,
    "norm_head": False,
    "norm_softmax": False,
    "rms_norm_eps": 1e-6,
    "embedding_dropout": 0.0,
    "attention_dropout": 0.0,
    "output_dropout": 0.0,
    "initializer_range": 0.02,
    "max_position_embeddings": 512,
    "max_window_layers": 2,
    "use_sliding_window": False,
    "sliding_window": 4096,
    "rope_theta": 600000.0,
    "rope_scaling": None,
    "partial_rotary_factor": 0.5,
    "rotary_dim": 4,
    "pad_token_id": 0,
    "eos_token_id": 0,
    "num_experts": 8,
    "num_shared_experts": 1,
    "num_experts_per_tok": 2,
    "n_group": 4,
    "topk_group": 2,
    "routed_scaling_factor": 2.5,
    "moe_intermediate_size": 16,
    "first_k_dense_replace": 1,
    "moe_router_enable_expert_bias": True,
    "norm_topk_prob": True,
    "router_dtype": "fp32",
    "score_function": "sigmoid",
    "output_router_logits": False,
    "using_split_qkv_in_self_attention": False,
    "image_token_offset": 256,
    "tie_word_embeddings": False,
    "use_cache": False,
    "torch_dtype": "float32",
}


def tiny_backbone_config_dict(**overrides: Any) -> dict[str, Any]:
    """The tiny official-layout config.json as a dict, with ``overrides`` applied.

    ``head_dim`` and ``rotary_dim`` follow ``hidden_size`` / ``num_attention_heads`` /
    ``partial_rotary_factor`` unless given. Raises ValueError for keys the official config lacks.
    """
    unknown = set(overrides) - set(TINY_BACKBONE_CONFIG)
    if unknown:
        raise ValueError(f"unknown backbone config keys {sorted(unknown)}; allowed: {sorted(TINY_BACKBONE_CONFIG)}")
    config = {**TINY_BACKBONE_CONFIG, **overrides}
    if "head_dim" not in overrides:
        config["head_dim"] = config["hidden_size"] // config["num_attention_heads"]
    if "rotary_dim" not in overrides:
        config["rotary_dim"] = int(config["head_dim"] * config["partial_rotary_factor"])
    if "max_window_layers" not in overrides:
        config["max_window_layers"] = config["num_hidden_layers"]
    assert set(config) == set(OFFICIAL_CONFIG_KEYS) | {"torch_dtype"}
    return config


def random_official_tensor(name: str, shape: tuple[int, ...], generator: torch.Generator, std: float) -> torch.Tensor:
    """A random tensor fit for weight ``name``: ones(+noise) for norms, small values for the
    expert bias, N(0, std) otherwise. float32."""
    if name.endswith("layernorm.weight") or name.endswith("norm.weight"):
        return 1.0 + 0.1 * torch.randn(shape, generator=generator)
    if name.endswith("expert_bias"):
        return 0.01 * torch.randn(shape, generator=generator)
    return std * torch.randn(shape, generator=generator)


def write_tiny_official_backbone(
    path: str | Path, *, seed: int = 0, num_shards: int = 1, dtype: torch.dtype = torch.float32, **overrides: Any
) -> Path:
    """Write a random backbone checkpoint directory in the official LLaDA2.0-Uni layout.

    Args:
        path: directory to create (may exist).
        seed: seed of the random weights.
        num_shards: 1 writes ``model.safetensors``; more writes ``model-0000i-of-0000n.safetensors``.
            Both write ``model.safetensors.index.json``.
        dtype: dtype of the stored tensors.
        **overrides: config.json keys to change (e.g. ``num_hidden_layers=4``, ``vocab_size=768``).

    Returns:
        The directory path.
    """
    if num_shards < 1:
        raise ValueError(f"num_shards={num_shards} must be >= 1")
    config = tiny_backbone_config_dict(**overrides)
    config["torch_dtype"] = str(dtype).removeprefix("torch.")
    LLaDA2MoeConfig(**{k: v for k, v in config.items() if k not in ("architectures", "model_type")})
    directory = Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(seed)
    tensors = {
        name: random_official_tensor(name, shape, generator, config["initializer_range"]).to(dtype)
        for name, shape in official_backbone_shapes(config).items()
    }
    write_safetensors_shards(directory, tensors, num_shards)
    (directory / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return directory


def write_safetensors_shards(directory: Path, tensors: dict[str, torch.Tensor], num_shards: int) -> None:
    """Save ``tensors`` as ``num_shards`` safetensors files plus ``model.safetensors.index.json``."""
    names = list(tensors)
    per_shard = -(-len(names) // num_shards)
    weight_map: dict[str, str] = {}
    for shard in range(num_shards):
        filename = "model.safetensors" if num_shards == 1 else f"model-{shard + 1:05d}-of-{num_shards:05d}.safetensors"
        chunk = names[shard * per_shard : (shard + 1) * per_shard]
        shard_tensors = {name: tensors[name].contiguous() for name in chunk}
        save_file(shard_tensors, str(directory / filename), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(chunk, filename))
    total_size = sum(tensor.numel() * tensor.element_size() for tensor in tensors.values())
    index = {"metadata": {"total_size": total_size}, "weight_map": weight_map}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")


__all__ = [
    "TINY_BACKBONE_CONFIG",
    "tiny_backbone_config_dict",
    "write_tiny_official_backbone",
]
