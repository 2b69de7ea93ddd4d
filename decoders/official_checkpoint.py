"""Strict loading of the decoder's diffusers-style folders: the official `decoder/`,
`decoder-turbo/`, `vae/` folders and unimask's own saved layout.

The official decoder transformer is diffusers' `ZImageTransformer2DModel` except that its caption
embedder is stored as `semantic_embedder.*`; it is renamed `cap_embedder.*` here. The official
loader also overrides two config values at load time (`axes_lens`, `cap_feat_dim`), and its
config may carry a `siglip_feat_dim` with no SigLIP weights behind it (dropped here).
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderKL, ZImageTransformer2DModel

from unimask.checkpoint_files import load_safetensors, load_state_dict_strict, read_json_object

OFFICIAL_KEY_RENAMES = {"semantic_embedder.": "cap_embedder."}
# RoPE table lengths the official loader forces: caption positions run along axis 0 up to
# 4 * h * w + image patches, far beyond the config's default 1024.
OFFICIAL_AXES_LENS = [32768, 1024, 1024]
WEIGHT_FILE_NAMES = ("diffusion_pytorch_model.safetensors", "model.safetensors")
INDEX_FILE_NAMES = ("diffusion_pytorch_model.safetensors.index.json", "model.safetensors.index.json")


def read_folder_weights(folder: str | Path) -> dict[str, torch.Tensor]:
    """All safetensors weights of a diffusers-style folder (single file or sharded with an
    index). Returns name -> tensor on CPU; raises `FileNotFoundError` when there are none."""
    folder = Path(folder)
    for name in WEIGHT_FILE_NAMES:
        if (folder / name).is_file():
            return load_safetensors(folder / name)
    for name in INDEX_FILE_NAMES:
        if (folder / name).is_file():
            weight_map = read_json_object(folder / name).get("weight_map")
            if not isinstance(weight_map, dict):
                raise ValueError(f"{folder / name} has no 'weight_map' object")
            state: dict[str, torch.Tensor] = {}
            for shard in sorted(set(weight_map.values())):
                shard_path = folder / shard
                if not isinstance(shard, str) or shard_path.resolve().parent != folder.resolve():
                    raise ValueError(f"{folder / name} names shard {shard!r} outside its folder")
                if not shard_path.is_file():
                    raise FileNotFoundError(f"{folder / name} names shard {shard!r}, which is missing")
                state.update(load_safetensors(shard_path))
            return state
    raise FileNotFoundError(f"no safetensors weights ({', '.join(WEIGHT_FILE_NAMES)}) in {folder}")




def read_folder_config(folder: str | Path) -> dict:
    """The `config.json` of a diffusers-style folder without its `_`-prefixed metadata keys."""
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"missing {path}")
    return {k: v for k, v in read_json_object(path).items() if not k.startswith("_")}


def remap_official_transformer_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename official decoder weight names to diffusers' (`semantic_embedder.*` ->
    `cap_embedder.*`); other names are kept."""
    renamed = {}
    for name, tensor in state.items():
        for old, new in OFFICIAL_KEY_RENAMES.items():
            if name.startswith(old):
                name = new + name[len(old) :]
        renamed[name] = tensor
    return renamed


def _build_strict(model_class, config: dict, state: dict[str, torch.Tensor], dtype: torch.dtype | None):
    try:
        with torch.device("meta"):
            model = model_class.from_config(config)
    except (TypeError, ValueError, KeyError) as error:  # wrong-typed or inconsistent config values
        raise ValueError(f"{model_class.__name__}: config.json has invalid values: {error}") from error
    load_state_dict_strict(model, state)
    if dtype is not None:
        model = model.to(dtype)
    return model.eval()


def load_official_transformer(
    folder: str | Path, cap_feat_dim: int | None = None, dtype: torch.dtype | None = None
) -> ZImageTransformer2DModel:
    """Load an official `decoder/` or `decoder-turbo/` folder into diffusers'
    `ZImageTransformer2DModel` strictly (a missing or unexpected weight raises `ValueError`).

    cap_feat_dim: SigVQ feature width (official 4096); overrides the config like the official
    loader. None keeps the config's value.
    """
    config = read_folder_config(folder)
    state = remap_official_transformer_keys(read_folder_weights(folder))
    config["axes_lens"] = list(OFFICIAL_AXES_LENS)
    if not any(name.startswith("siglip_") for name in state):
        config["siglip_feat_dim"] = None  # a config value without weights builds nothing
    if cap_feat_dim is not None:
        config["cap_feat_dim"] = cap_feat_dim
    return _build_strict(ZImageTransformer2DModel, config, state, dtype)


def load_transformer(folder: str | Path, dtype: torch.dtype | None = None) -> ZImageTransformer2DModel:
    """Load a transformer saved by unimask (`save_pretrained` layout, diffusers names) strictly."""
    return _build_strict(ZImageTransformer2DModel, read_folder_config(folder), read_folder_weights(folder), dtype)


def load_vae(folder: str | Path, dtype: torch.dtype | None = None) -> AutoencoderKL:
    """Load a diffusers `AutoencoderKL` folder (the official `vae/` or ours) strictly."""
    return _build_strict(AutoencoderKL, read_folder_config(folder), read_folder_weights(folder), dtype)
