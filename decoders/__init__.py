"""Semantic-token diffusion image decoder (LLaDA2.0-Uni's SigVQ + Z-Image DiT + VAE).

Modules: `semantic_decoder` (the `SemanticImageDecoder` pipeline), `sigvq` (token features),
`flow_schedule` (reference sampling schedules on diffusers' scheduler), `velocity` (guided
velocity), `vae_latents`, `official_checkpoint` (strict loading), `training_losses`,
`distillation`, `decoder_presets`, `tiny_decoder_checkpoint`, `draft_widening` and `draft_network`
(the Shapes World decoders' draft input).
"""

from unimask.decoders.decoder_presets import build_decoder, load_decoder_preset
from unimask.decoders.distillation import distillation_gap, distillation_loss
from unimask.decoders.draft_network import DraftNetwork
from unimask.decoders.semantic_decoder import DecoderOutput, SemanticImageDecoder
from unimask.decoders.sigvq import SigVQEmbedding
from unimask.decoders.tiny_decoder_checkpoint import write_tiny_official_decoder
from unimask.decoders.training_losses import draft_loss, flow_matching_loss, vae_loss

__all__ = [
    "DecoderOutput",
    "DraftNetwork",
    "SemanticImageDecoder",
    "SigVQEmbedding",
    "build_decoder",
    "distillation_gap",
    "distillation_loss",
    "draft_loss",
    "flow_matching_loss",
    "load_decoder_preset",
    "vae_loss",
    "write_tiny_official_decoder",
]
