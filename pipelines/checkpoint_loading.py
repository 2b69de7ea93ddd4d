"""Find and load the components of a unified checkpoint directory, in either layout.

Official LLaDA2.0-Uni layout (detected by a root ``config.json`` with ``model_type`` "llada2_moe")::

    config.json, *.safetensors (+ index), tokenizer.json ...   backbone + text tokenizer
    image_tokenizer/                                           SigLIP-VQ tokenizer (+ sigvq_embedding.pt)
    decoder/  decoder-turbo/  vae/                             image decoder (normal / turbo) + VAE

Our own layout (detected by ``model_index.json``, written by `UniPipelineBase.save_pretrained`)::

    model_index.json  token_layout.json  generation_defaults.json
    backbone/  text_tokenizer/  image_tokenizer/  decoder/ (a saved SemanticImageDecoder)

Either may carry ``token_layout.json`` and ``generation_defaults.json`` at the root; without them the
layout is resolved from the tokenizer and the defaults are the official ones.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from unimask.decoders.semantic_decoder import SemanticImageDecoder
from unimask.pipelines.generation_defaults import GenerationDefaults
from unimask.tokenizers.image_tokenizer import SigLIPVQTokenizer
from unimask.tokenizers.text_tokenizer import load_text_tokenizer
from unimask.tokenizers.token_layout import (
    OFFICIAL_IMAGE_TOKEN_OFFSET,
    OFFICIAL_VOCAB_SIZE,
    TOKEN_LAYOUT_FILE,
    TokenLayout,
)
from unimask.unimodal.modeling_llada2_moe import LLaDA2MoeModelLM

OWN_LAYOUT = "unimask"
OFFICIAL_LAYOUT = "official"
COMPONENT_FOLDERS = ("backbone", "text_tokenizer", "image_tokenizer", "decoder")


def detect_layout(path: str | Path) -> str:
    """``"unimask"`` (our ``model_index.json`` layout) or ``"official"``; anything else raises ``ValueError``."""
    root = Path(path)
    if not root.is_dir():
        raise ValueError(f"path={str(path)!r} is not a directory")
    index = root / "model_index.json"
    if index.is_file() and "backbone" in json.loads(index.read_text()):
        return OWN_LAYOUT
    config = root / "config.json"
    if config.is_file() and json.loads(config.read_text()).get("model_type") == "llada2_moe":
        return OFFICIAL_LAYOUT
    raise ValueError(
        f"path={str(path)!r} is neither a saved unimask pipeline (model_index.json with a 'backbone' entry) nor "
        "an official LLaDA2.0-Uni directory (config.json with model_type 'llada2_moe')"
    )


def resolve_token_layout(root: Path, tokenizer: Any, backbone_config: Any, codebook_size: int) -> TokenLayout:
    """``token_layout.json`` when present; else the official layout for the published vocabulary sizes, or
    a layout whose special tokens are looked up by their strings in ``tokenizer``."""
    if (root / TOKEN_LAYOUT_FILE).is_file():
        return TokenLayout.from_pretrained(root)
    if backbone_config.vocab_size == OFFICIAL_VOCAB_SIZE and backbone_config.image_token_offset == OFFICIAL_IMAGE_TOKEN_OFFSET:
        return TokenLayout.official(tokenizer)
    return TokenLayout.from_tokenizer(
        tokenizer,
        image_token_offset=backbone_config.image_token_offset,
        codebook_size=codebook_size,
        vocab_size=backbone_config.vocab_size,
    )


def load_decoder(root: Path, layout: str, variant: str, torch_dtype: torch.dtype | None) -> SemanticImageDecoder:
    """The decoder of ``variant`` ("turbo" | "normal") from a checkpoint ``root`` of ``layout``."""
    if layout == OFFICIAL_LAYOUT:
        return SemanticImageDecoder.from_pretrained(root, variant=variant, torch_dtype=torch_dtype)
    folder = root / "decoder" if variant == _saved_decoder_variant(root) else root / f"decoder-{variant}"
    if not folder.is_dir():
        raise ValueError(
            f"decoder={variant!r} is not saved in {root}; it holds the {_saved_decoder_variant(root)!r} decoder"
        )
    return SemanticImageDecoder.from_pretrained(folder, torch_dtype=torch_dtype)


def _saved_decoder_variant(root: Path) -> str:
    return json.loads((root / "decoder" / "model_index.json").read_text()).get("decoder_variant", "turbo")


def load_components(
    path: str | Path, torch_dtype: torch.dtype | None = None, decoder: str | None = None
) -> dict[str, Any]:
    """Load every component of the checkpoint at ``path`` (either layout).

    torch_dtype: dtype of the backbone and decoder weights (None: as stored; the image tokenizer stays
    float32 unless a dtype is given). decoder: "turbo", "normal" or None (turbo for the official layout,
    the saved one for ours). Returns a dict with ``backbone``, ``text_tokenizer``, ``image_tokenizer``,
    ``decoder``, ``token_layout``, ``generation_defaults``, ``layout`` and ``root``.
    """
    root = Path(path)
    layout = detect_layout(root)
    if decoder not in (None, "turbo", "normal"):
        raise ValueError(f"decoder={decoder!r} is unknown; allowed values are 'turbo', 'normal' or None")
    backbone_kwargs = {} if torch_dtype is None else {"dtype": torch_dtype}
    image_dtype = torch_dtype or torch.float32
    if layout == OFFICIAL_LAYOUT:
        backbone = LLaDA2MoeModelLM.from_pretrained(root, **backbone_kwargs)
        text_tokenizer = load_text_tokenizer(root)
        image_tokenizer = SigLIPVQTokenizer.from_pretrained(root / "image_tokenizer", dtype=image_dtype)
        variant = decoder or "turbo"
    else:
        backbone = LLaDA2MoeModelLM.from_pretrained(root / "backbone", **backbone_kwargs)
        text_tokenizer = load_text_tokenizer(root / "text_tokenizer")
        image_tokenizer = SigLIPVQTokenizer.from_pretrained(root / "image_tokenizer", dtype=image_dtype)
        variant = decoder or _saved_decoder_variant(root)
    backbone.eval()
    return {
        "backbone": backbone,
        "text_tokenizer": text_tokenizer,
        "image_tokenizer": image_tokenizer,
        "decoder": load_decoder(root, layout, variant, torch_dtype),
        "token_layout": resolve_token_layout(root, text_tokenizer, backbone.config, image_tokenizer.codebook_size),
        "generation_defaults": GenerationDefaults.from_pretrained(root),
        "layout": layout,
        "root": root,
    }
