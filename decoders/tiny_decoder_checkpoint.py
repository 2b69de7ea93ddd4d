"""Writes a tiny random decoder checkpoint in the official LLaDA2.0-Uni layout, for tests.

Same folder names, config keys and weight names as the release (`decoder/`, `decoder-turbo/`:
config.json + model.safetensors with `semantic_embedder.*`; `vae/`: a diffusers AutoencoderKL
folder; `image_tokenizer/sigvq_embedding.pt`: a plain state dict), with tiny dimensions.
"""

from __future__ import annotations

import json
from pathlib import Path

import diffusers
import torch
from diffusers import AutoencoderKL
from safetensors.torch import save_file

from unimask.decoders.decoder_presets import load_decoder_preset, random_transformer
from unimask.decoders.sigvq import SigVQEmbedding

TINY_PRESET = "tiny"


def _write_official_transformer(folder: Path, config: dict, seed: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    state = random_transformer(config, seed).state_dict()
    renamed = {
        ("semantic_embedder." + name[len("cap_embedder.") :] if name.startswith("cap_embedder.") else name): tensor
        for name, tensor in state.items()
    }
    save_file({name: tensor.contiguous() for name, tensor in renamed.items()}, str(folder / "model.safetensors"))
    official_config = {"_class_name": "ZImageTransformer2DModel", "_diffusers_version": diffusers.__version__}
    official_config.update(config)
    (folder / "config.json").write_text(json.dumps(official_config, indent=2))


def write_tiny_official_decoder(root: str | Path, seed: int = 0) -> Path:
    """Write tiny random `decoder/`, `decoder-turbo/`, `vae/` and
    `image_tokenizer/sigvq_embedding.pt` under `root` (other files of image_tokenizer/ are left to
    the image-tokenizer writer). Returns `root` as a Path."""
    root = Path(root)
    preset = load_decoder_preset(TINY_PRESET)
    # The release's config carries an (unused) siglip_feat_dim key.
    transformer_config = dict(preset["transformer"], siglip_feat_dim=None)
    _write_official_transformer(root / "decoder", transformer_config, seed)
    _write_official_transformer(root / "decoder-turbo", transformer_config, seed + 1)
    torch.manual_seed(seed + 2)
    AutoencoderKL(**preset["vae"]).save_pretrained(root / "vae", safe_serialization=True)
    torch.manual_seed(seed + 3)
    sigvq = SigVQEmbedding(**preset["sigvq"])
    (root / "image_tokenizer").mkdir(parents=True, exist_ok=True)
    torch.save(sigvq.state_dict(), root / "image_tokenizer" / "sigvq_embedding.pt")
    return root
