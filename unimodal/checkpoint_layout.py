"""The official LLaDA2.0-Uni backbone checkpoint layout: weight names and shapes, a check of a
checkpoint directory against them (read from the safetensors headers, no tensor is loaded), and a
streaming reader that copies every stored tensor straight into a model's allocated parameters.

The reader uses plain file reads (``readinto`` the destination's memory) instead of memory-mapping the
shards: mapped file pages count in the process's resident memory for as long as the mapping lives, and
stacking the per-expert tensors through a mapping made a second copy, so loading peaked at about twice
the checkpoint size (``benchmarks/load.py``). Read pages stay in the kernel's page cache, outside the
process, and each expert is written directly into its slice of the stacked parameter.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open


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


def checkpoint_files(directory: str | Path) -> list[Path]:
    """The safetensors files of a checkpoint directory: ``model.safetensors``, the shards named by
    ``model.safetensors.index.json``, or every ``*.safetensors``; raises ValueError when there are none."""
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
    return files


def checkpoint_tensor_shapes(directory: str | Path) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor in a safetensors checkpoint directory (single file or index)."""
    files = checkpoint_files(directory)
    shapes: dict[str, tuple[int, ...]] = {}
    for file in files:
        try:
            with safe_open(str(file), framework="pt") as handle:
                for name in handle.keys():
                    shapes[name] = tuple(handle.get_slice(name).get_shape())
        except (SafetensorError, OSError) as error:
            raise ValueError(
                f"{file} is not a readable safetensors file (truncated, corrupt, or another format such as "
                f"a pickle, which is never loaded): {error}"
            ) from None
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


_SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}
_EXPERT_WEIGHT = re.compile(r"^(?P<prefix>.+\.mlp\.experts)\.(?P<expert>\d+)\.(?P<proj>gate|up|down)_proj\.weight$")


def _destination(name: str, targets: dict[str, torch.Tensor]) -> torch.Tensor | None:
    """The tensor (or slice of a stacked expert parameter) that official weight ``name`` fills."""
    match = _EXPERT_WEIGHT.match(name)
    if match is None:
        return targets.get(name)
    prefix, expert, proj = match["prefix"], int(match["expert"]), match["proj"]
    if proj == "down":
        stacked = targets.get(f"{prefix}.down_proj")
        return None if stacked is None else stacked[expert]
    stacked = targets.get(f"{prefix}.gate_up_proj")
    if stacked is None:
        return None
    width = stacked.shape[1] // 2
    return stacked[expert, :width] if proj == "gate" else stacked[expert, width:]


def _read_into(handle, destination: torch.Tensor, dtype: torch.dtype, shape: tuple[int, ...], nbytes: int) -> None:
    """Read ``nbytes`` at the handle's position (a stored ``dtype`` tensor of ``shape``) into ``destination``."""
    if destination.dtype == dtype and destination.is_contiguous() and destination.device.type == "cpu":
        buffer = destination.view(-1).view(torch.uint8).numpy()
        if handle.readinto(buffer) != nbytes:
            raise ValueError(f"truncated tensor data in {handle.name}")
        return
    stored = torch.frombuffer(bytearray(handle.read(nbytes)), dtype=dtype).view(shape) if nbytes else None
    if stored is not None:
        destination.copy_(stored)


@torch.no_grad()
def read_official_weights_into(model: torch.nn.Module, directory: str | Path) -> None:
    """Fill every parameter and persistent buffer of ``model`` from an official-layout checkpoint.

    model: a backbone whose tensors are allocated (not on the meta device) with stacked experts
    (``...mlp.experts.gate_up_proj`` (E, 2I, H), ``...mlp.experts.down_proj`` (E, H, I)).
    directory: the checkpoint directory (one file or shards + index), official per-expert names.
    Tensors are read shard by shard with plain reads into the destination memory (converted when the
    stored dtype differs). Raises ValueError naming any stored tensor without a destination, any shape
    mismatch, or any model tensor left unfilled.
    """
    targets = {name: tensor for name, tensor in model.named_parameters()}
    persistent = {
        f"{module_name}.{buffer}" if module_name else buffer
        for module_name, module in model.named_modules()
        for buffer in module._buffers
        if buffer not in module._non_persistent_buffers_set
    }
    targets.update({name: tensor for name, tensor in model.named_buffers() if name in persistent})
    filled = {name: 0 for name in targets}
    needed = {name: (tensor.shape[0] * 2 if name.endswith("experts.gate_up_proj") else
                     tensor.shape[0] if name.endswith("experts.down_proj") else 1)
              for name, tensor in targets.items()}
    for file in checkpoint_files(directory):
        with open(file, "rb") as handle:
            header_size = int.from_bytes(handle.read(8), "little")
            header = json.loads(handle.read(header_size))
            data_start = 8 + header_size
            entries = sorted(
                ((name, entry) for name, entry in header.items() if name != "__metadata__"),
                key=lambda item: item[1]["data_offsets"][0],
            )
            for name, entry in entries:
                destination = _destination(name, targets)
                if destination is None:
                    raise ValueError(f"checkpoint tensor {name!r} in {file.name} has no place in {type(model).__name__}")
                shape = tuple(entry["shape"])
                if tuple(destination.shape) != shape:
                    raise ValueError(f"checkpoint tensor {name!r}: shape {shape} vs model {tuple(destination.shape)}")
                begin, end = entry["data_offsets"]
                handle.seek(data_start + begin)
                _read_into(handle, destination, _SAFETENSORS_DTYPES[entry["dtype"]], shape, end - begin)
                match = _EXPERT_WEIGHT.match(name)
                if match is None:
                    filled[name] += 1
                else:
                    stacked = "down_proj" if match["proj"] == "down" else "gate_up_proj"
                    filled[f"{match['prefix']}.{stacked}"] += 1
    unfilled = sorted(name for name in targets if filled[name] != needed[name])
    if unfilled:
        raise ValueError(f"checkpoint at {directory} left model tensors unfilled or filled twice: {unfilled}")


__all__ = [
    "check_official_checkpoint",
    "checkpoint_files",
    "checkpoint_tensor_shapes",
    "official_backbone_shapes",
    "read_official_weights_into",
]
