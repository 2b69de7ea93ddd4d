"""Write a tiny random ``image_tokenizer/`` folder in the official LLaDA2.0-Uni layout.

Same file names, config keys and weight names as the release (``config.json`` with
``vision_config`` + ``vq_config``, ``preprocessor_config.json`` for ``Qwen2VLImageProcessor``,
``image_tokenizer.safetensors`` with ``model.visual.*`` / ``model.vqmodel.*`` weights, and the
decoder's ``sigvq_embedding.pt`` state dict), with tiny shapes. Written independently of
``SigLIPVQTokenizer.save_pretrained`` so that loading it checks the loader against the layout.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import GlmImageVisionConfig, GlmImageVisionModel, GlmImageVQVAE, GlmImageVQVAEConfig

TINY_VISION_CONFIG = {
    "depth": 2,
    "hidden_size": 32,
    "hidden_act": "gelu",
    "attention_bias": True,
    "attention_dropout": 0.0,
    "num_heads": 2,
    "in_channels": 3,
    "image_size": 128,
    "patch_size": 16,
    "spatial_merge_size": 1,
    "intermediate_size": 64,
    "initializer_range": 0.02,
    "layer_norm_eps": 1e-6,
}
TINY_VQ_CONFIG = {
    "embed_dim": 16,
    "num_embeddings": 64,
    "latent_channels": 32,
    "in_channels": 3,
    "initializer_range": 0.02,
}
TINY_SIGVQ_INNER_DIM = 32


def write_tiny_official_image_tokenizer(path: str | Path, seed: int = 0) -> Path:
    """Create folder ``path`` (e.g. ``<root>/image_tokenizer``) holding a tiny random image tokenizer
    in the official layout: vision hidden 32, 2 layers, 128 px base position grid; codebook 64 x 16;
    SigVQ embedding 64 x 32. Deterministic for a given ``seed``. Returns the folder path."""
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        visual = GlmImageVisionModel(GlmImageVisionConfig(**TINY_VISION_CONFIG))
        vqmodel = GlmImageVQVAE(GlmImageVQVAEConfig(**TINY_VQ_CONFIG))
        # The default init (std 0.02) makes every patch feature nearly equal; a unit-scale codebook and
        # projection spread the tiny model's tokens over the codebook like a trained one.
        with torch.no_grad():
            vqmodel.quantize.embedding.weight.normal_()
            vqmodel.quant_conv.weight.normal_(std=TINY_VISION_CONFIG["hidden_size"] ** -0.5)
            visual.patch_embed.proj.weight.normal_(std=0.05)
        num_codes, inner = TINY_VQ_CONFIG["num_embeddings"], TINY_SIGVQ_INNER_DIM
        sigvq_state = {
            "prior_token_embedding.weight": torch.randn(num_codes, inner),
            "prior_projector.net.0.proj.weight": torch.randn(inner, inner) * inner**-0.5,
            "prior_projector.net.0.proj.bias": torch.zeros(inner),
            "prior_projector.net.2.weight": torch.randn(inner, inner) * inner**-0.5,
            "prior_projector.net.2.bias": torch.zeros(inner),
        }
    finally:
        torch.random.set_rng_state(generator_state)

    weights = {f"model.visual.{k}": v.contiguous() for k, v in visual.state_dict().items()}
    weights.update({f"model.vqmodel.{k}": v.contiguous() for k, v in vqmodel.state_dict().items()})
    save_file(weights, str(folder / "image_tokenizer.safetensors"))
    torch.save(sigvq_state, folder / "sigvq_embedding.pt")

    config = {"vision_config": dict(TINY_VISION_CONFIG), "vq_config": dict(TINY_VQ_CONFIG)}
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    preprocessor = {
        "image_processor_type": "Qwen2VLImageProcessor",
        "do_convert_rgb": True,
        "do_resize": True,
        "resample": 3,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711],
        "min_pixels": 128 * 128,
        "max_pixels": 800 * 800,
        "size": {"shortest_edge": 128 * 128, "longest_edge": 800 * 800},
        "patch_size": 16,
        "temporal_patch_size": 1,
        "merge_size": 1,
    }
    (folder / "preprocessor_config.json").write_text(json.dumps(preprocessor, indent=2) + "\n")
    return folder
