"""Named decoder presets (`configs/models/decoder/*.yaml`) and random-initialised decoders built
from them (for training from scratch, tests and benchmarks)."""

from __future__ import annotations

from pathlib import Path

import torch
import yaml
from diffusers import AutoencoderKL, ZImageTransformer2DModel

import unimask.configs
from unimask.decoders.flow_schedule import make_decoder_scheduler
from unimask.decoders.semantic_decoder import SemanticImageDecoder
from unimask.decoders.sigvq import SigVQEmbedding

PRESET_FOLDER = Path(unimask.configs.__file__).parent / "models" / "decoder"
PRESET_SECTIONS = ("sigvq", "transformer", "vae")


def available_decoder_presets() -> list[str]:
    """Names of the shipped decoder presets."""
    return sorted(path.stem for path in PRESET_FOLDER.glob("*.yaml"))


def load_decoder_preset(name_or_path: str | Path) -> dict:
    """Read a preset by name (e.g. "tiny", "shapes", "official") or YAML path. Returns a dict
    with "sigvq", "transformer", "vae" constructor arguments, "default_grid" and
    "resolution_multiplier"; raises `ValueError` for unknown names or missing sections."""
    path = Path(name_or_path)
    if not path.suffix:
        path = PRESET_FOLDER / f"{name_or_path}.yaml"
    if not path.is_file():
        raise ValueError(f"unknown decoder preset {name_or_path!r}; shipped: {available_decoder_presets()}")
    preset = yaml.safe_load(path.read_text())
    missing = [section for section in PRESET_SECTIONS if section not in preset]
    if missing:
        raise ValueError(f"decoder preset {path} lacks sections {missing}")
    if preset["sigvq"]["inner_dim"] != preset["transformer"]["cap_feat_dim"]:
        raise ValueError(f"{path}: sigvq.inner_dim must equal transformer.cap_feat_dim")
    cell_dim = preset["transformer"].get("siglip_feat_dim")
    if cell_dim is not None and cell_dim != preset["sigvq"]["inner_dim"]:
        raise ValueError(f"{path}: transformer.siglip_feat_dim must equal sigvq.inner_dim (or be absent)")
    draft_channels = preset["sigvq"].get("draft_channels", 0)
    if preset["vae"]["latent_channels"] + draft_channels != preset["transformer"]["in_channels"]:
        raise ValueError(f"{path}: transformer.in_channels must equal vae.latent_channels plus sigvq.draft_channels")
    if preset["sigvq"].get("draft_layers") and draft_channels != preset["vae"]["latent_channels"]:
        raise ValueError(f"{path}: a draft network (sigvq.draft_layers) regresses the latents, so sigvq.draft_channels "
                         "must equal vae.latent_channels")
    return preset


def random_transformer(config: dict, seed: int) -> ZImageTransformer2DModel:
    """A `ZImageTransformer2DModel` from `config` with every weight initialised (the pad tokens
    are `torch.empty` in diffusers, so they get small normal values here)."""
    torch.manual_seed(seed)
    model = ZImageTransformer2DModel(**config)
    with torch.no_grad():
        model.x_pad_token.normal_(std=0.02)
        model.cap_pad_token.normal_(std=0.02)
        if model.siglip_pad_token is not None:
            model.siglip_pad_token.normal_(std=0.02)
    return model


def build_decoder(preset: str | Path | dict, variant: str = "turbo", seed: int = 0) -> SemanticImageDecoder:
    """A `SemanticImageDecoder` with random weights from a preset name, path or loaded dict."""
    config = preset if isinstance(preset, dict) else load_decoder_preset(preset)
    torch.manual_seed(seed)
    sigvq = SigVQEmbedding(**config["sigvq"])
    transformer = random_transformer(config["transformer"], seed + 1)
    torch.manual_seed(seed + 2)
    vae = AutoencoderKL(**config["vae"])
    return SemanticImageDecoder(sigvq, transformer, vae, make_decoder_scheduler(variant), decoder_variant=variant)
