"""Training objectives of the decoder stages, as pure functions for the shared trainer.

Batch keys (all stages):
    pixel_values: (batch, 3, H, W) float in [-1, 1]
    token_grids:  (batch, h, w) int64 semantic token ids (flow matching and distillation only),
                  with H = h * 16 * m and W = w * 16 * m for an integer resolution multiplier m.

`decoder_parts` is anything with `sigvq`, `transformer` and `vae` attributes (a
`SemanticImageDecoder`). SigVQ and VAE stay frozen in flow matching; only the transformer gets
gradients (and a SigVQ draft network, through its own regression loss `draft_loss`, or
`draft_pixel_loss` through the frozen VAE decoder). `vae_loss`
trains the VAE itself (reconstruction + KL, no perceptual term).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL
from diffusers.utils.torch_utils import randn_tensor

from unimask.decoders.flow_schedule import REFERENCE_TIME_SHIFT
from unimask.decoders.semantic_decoder import TOKEN_PIXELS
from unimask.decoders.vae_latents import encode_pixels, vae_downsampling_factor
from unimask.decoders.velocity import DecoderCondition, predict_velocity, reads_cell_features


def check_decoder_batch(batch: dict, decoder_parts, need_tokens: bool = True) -> None:
    """Raise `ValueError` when the batch keys, shapes, ranges or grid/image sizes disagree."""
    if "pixel_values" not in batch:
        raise ValueError(f"batch needs 'pixel_values'; got keys {sorted(batch)}")
    pixels = batch["pixel_values"]
    if pixels.dim() != 4 or pixels.shape[1] != 3:
        raise ValueError(f"pixel_values must be (batch, 3, H, W), got {tuple(pixels.shape)}")
    if not need_tokens:
        return
    if "token_grids" not in batch:
        raise ValueError(f"batch needs 'token_grids'; got keys {sorted(batch)}")
    grids = batch["token_grids"]
    if grids.dim() != 3 or grids.shape[0] != pixels.shape[0]:
        raise ValueError(
            f"token_grids must be (batch, h, w) with the pixel batch {pixels.shape[0]}, got {tuple(grids.shape)}"
        )
    if grids.dtype.is_floating_point:
        raise ValueError(f"token_grids must be integer ids, got {grids.dtype}")
    vocab = decoder_parts.sigvq.config.vocab_size
    if int(grids.min()) < 0 or int(grids.max()) >= vocab:
        raise ValueError(f"token_grids ids span [{int(grids.min())}, {int(grids.max())}]; allowed [0, {vocab})")
    height, width = pixels.shape[2:]
    multiplier = height / (grids.shape[1] * TOKEN_PIXELS)
    if multiplier != int(multiplier) or multiplier < 1 or width != grids.shape[2] * TOKEN_PIXELS * multiplier:
        raise ValueError(
            f"pixel size {height}x{width} is not the token grid {tuple(grids.shape[1:])} x 16 x an integer multiplier"
        )
    latent_per_token = TOKEN_PIXELS * multiplier / vae_downsampling_factor(decoder_parts.vae)
    if latent_per_token % decoder_parts.transformer.config.all_patch_size[0]:
        raise ValueError(f"{latent_per_token} latent pixels per token is not a multiple of the patch size")


def sample_data_time(
    batch: int, generator: torch.Generator | None, device: torch.device, time_shift: float = REFERENCE_TIME_SHIFT
) -> torch.Tensor:
    """Training data times t (0 noise, 1 data): u ~ U(0, 1) pushed through the sampler's time
    shift, so training visits noise levels as densely as sampling does. Returns (batch,) float32."""
    uniform = torch.rand(batch, generator=generator, device=generator.device if generator else "cpu").to(device)
    return uniform / (uniform + time_shift - time_shift * uniform)


def flow_matching_loss(
    decoder_parts,
    batch: dict,
    generator: torch.Generator | None = None,
    condition_dropout: float = 0.1,
    time_shift: float = REFERENCE_TIME_SHIFT,
    draft_loss_weight: float = 1.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Velocity-matching loss on the linear path x_t = t * x_data + (1 - t) * noise.

    The transformer predicts v = x_data - noise from (x_t, t, SigVQ features); a
    `condition_dropout` fraction of samples sees all-zero features, which is what guidance
    compares against. A SigVQ with a draft network (`has_draft_network`) adds `draft_loss_weight`
    times the draft's regression loss (`draft_loss`); the transformer reads the draft detached, so
    the draft stays an estimate of the latents. Returns (scalar loss with grad into the transformer, metrics).
    """
    check_decoder_batch(batch, decoder_parts)
    if not 0.0 <= condition_dropout < 1.0:
        raise ValueError(f"condition_dropout must be in [0, 1), got {condition_dropout}")
    transformer = decoder_parts.transformer
    device = transformer.device
    data = encode_pixels(decoder_parts.vae, batch["pixel_values"], generator=generator).to(device)
    sigvq_trains = any(p.requires_grad for p in decoder_parts.sigvq.parameters())
    with torch.set_grad_enabled(sigvq_trains and torch.is_grad_enabled()):
        condition = decoder_parts.sigvq.condition(
            batch["token_grids"], cells=reads_cell_features(transformer), latent_size=tuple(data.shape[-2:])
        ).to(device)
    draft_term, metrics = None, {}
    if getattr(decoder_parts.sigvq, "has_draft_network", False):
        draft_term = _draft_regression(condition.draft, data)
        metrics["draft_loss"] = float(draft_term.detach())
        condition = DecoderCondition(condition.sequence, condition.cells, condition.draft.detach())
    count = data.shape[0]
    rng_device = generator.device if generator is not None else "cpu"
    keep = torch.rand(count, generator=generator, device=rng_device).to(device) >= condition_dropout
    condition = condition.masked(keep)
    data_time = sample_data_time(count, generator, device, time_shift)
    noise = randn_tensor(data.shape, generator=generator, device=device, dtype=data.dtype)
    t = data_time.view(count, 1, 1, 1, 1)
    noisy = t * data + (1.0 - t) * noise
    predicted = predict_velocity(transformer, noisy, data_time, condition)
    loss = F.mse_loss(predicted, data - noise)
    metrics.update(flow_matching_loss=float(loss.detach()), condition_kept=float(keep.float().mean()))
    if draft_term is not None and draft_loss_weight > 0:
        loss = loss + draft_loss_weight * draft_term
    return loss, metrics


def _check_draft_batch(decoder_parts, batch: dict, loss_name: str) -> None:
    """Raise `ValueError` when the batch does not fit the decoder or its SigVQ has no draft network."""
    check_decoder_batch(batch, decoder_parts)
    if not getattr(decoder_parts.sigvq, "has_draft_network", False):
        raise ValueError(f"{loss_name} needs a SigVQ with a draft network (draft_layers > 0)")


def draft_loss(decoder_parts, batch: dict, generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """Regression of the SigVQ draft network's latents to the clean VAE latents of the batch images
    (mean squared error); the transformer is not run. Returns (scalar loss, metrics).

    Raises:
        ValueError: the SigVQ has no draft network.
    """
    _check_draft_batch(decoder_parts, batch, "draft_loss")
    data = encode_pixels(decoder_parts.vae, batch["pixel_values"], generator=generator)
    draft = decoder_parts.sigvq.draft_latents(batch["token_grids"], tuple(data.shape[-2:]))
    loss = _draft_regression(draft, data.to(draft.device))
    return loss, {"draft_loss": float(loss.detach())}


def draft_pixel_loss(
    decoder_parts, batch: dict, foreground_weight: float = 1.0
) -> tuple[torch.Tensor, dict[str, float]]:
    """Mean absolute error, in pixels, between the batch images and the SigVQ draft network's draft decoded
    by the frozen VAE (gradients flow through the VAE decoder into the network); the transformer is not run.

    Why pixels and L1: `draft_loss` weighs errors in latent space, where a small error can decode to a wrong
    colour or a missing object edge; L1 in pixels weighs them where the image shows them, and per pixel it is
    minimised by the median, which for flat-coloured images is the likelier value rather than a blend.
    batch: ``pixel_values`` (B, 3, H, W) in [-1, 1] and ``token_grids`` (B, h, w) int64; the draft is
    (B, C, 1, H / f, W / f) for the VAE's downsampling f and decodes to (B, 3, H, W) in [0, 1].
    foreground_weight (>= 1): the weight of foreground pixels, those whose target colour differs from the
    image's top-left pixel (the background of a flat-background image such as Shapes World's), against 1 for
    the rest; the loss is the weighted mean. Why: where the codes leave an object's outline a pixel or two
    uncertain, the median draws a pixel as object only when it is more likely object than not, which erodes
    a square's corners (two uncertain edges meet there) until it reads as a disc; weight w draws it as object
    from probability 1 / (1 + w), so outlines keep their corners. 1.0 is the plain mean.
    Returns (scalar loss, metrics with ``draft_pixel_loss``: the plain mean absolute error).

    Raises:
        ValueError: the SigVQ has no draft network, the batch does not fit the decoder, or
            ``foreground_weight`` is not a number >= 1.
    """
    from unimask.decoders.vae_latents import decode_latents

    if isinstance(foreground_weight, bool) or not isinstance(foreground_weight, (int, float)) or not foreground_weight >= 1:
        raise ValueError(f"foreground_weight must be a number >= 1, got {foreground_weight!r}")
    _check_draft_batch(decoder_parts, batch, "draft_pixel_loss")
    pixels = batch["pixel_values"]
    factor = vae_downsampling_factor(decoder_parts.vae)
    latent_size = (pixels.shape[2] // factor, pixels.shape[3] // factor)
    draft = decoder_parts.sigvq.draft_latents(batch["token_grids"], latent_size)
    if draft.shape[1] != decoder_parts.vae.config.latent_channels:
        raise ValueError(f"the draft network writes {draft.shape[1]} channels, the VAE decodes "
                         f"{decoder_parts.vae.config.latent_channels}; sigvq.draft_channels must equal them")
    images = decode_latents(decoder_parts.vae, draft)  # [0, 1]
    target = (pixels.to(images.device, images.dtype) + 1.0) / 2.0
    error = (images - target).abs()
    if foreground_weight == 1.0:
        loss = error.mean()
        return loss, {"draft_pixel_loss": float(loss.detach())}
    weight = 1.0 + (foreground_weight - 1.0) * foreground_mask(target)
    loss = (error * weight).sum() / (weight.sum() * error.shape[1])
    return loss, {"draft_pixel_loss": float(error.mean().detach())}


# Summed absolute channel difference up to which a pixel is still the background colour: one 8-bit level, so
# exact 8-bit renders split exactly and any other colour is foreground.
_BACKGROUND_TOLERANCE = 1 / 255


def foreground_mask(images: torch.Tensor) -> torch.Tensor:
    """Pixels whose colour differs from their image's top-left pixel: images (B, 3, H, W) in [0, 1] ->
    (B, 1, H, W) float, 1.0 for foreground and 0.0 for background."""
    background = images[:, :, :1, :1]
    return ((images - background).abs().sum(dim=1, keepdim=True) > _BACKGROUND_TOLERANCE).to(images.dtype)


def _draft_regression(draft: torch.Tensor, data: torch.Tensor) -> torch.Tensor:
    if draft.shape != data.shape:
        raise ValueError(f"the draft network writes {tuple(draft.shape)} for latents of {tuple(data.shape)}; "
                         "sigvq.draft_channels must equal the VAE's latent channels")
    return F.mse_loss(draft.float(), data.float())


def vae_loss(
    vae: AutoencoderKL,
    batch: dict,
    kl_weight: float = 1e-6,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """AutoencoderKL objective: L1 reconstruction of a posterior sample plus `kl_weight` times the
    KL to N(0, I) (summed over latent elements, averaged over the batch); no perceptual or
    adversarial term. batch: {"pixel_values": (batch, 3, H, W) in [-1, 1]}. Returns (loss, metrics).
    """
    if "pixel_values" not in batch or batch["pixel_values"].dim() != 4:
        raise ValueError("batch needs 'pixel_values' shaped (batch, 3, H, W)")
    if kl_weight < 0:
        raise ValueError(f"kl_weight must be >= 0, got {kl_weight}")
    pixels = batch["pixel_values"].to(device=vae.device, dtype=vae.dtype)
    posterior = vae.encode(pixels).latent_dist
    reconstruction = vae.decode(posterior.sample(generator=generator)).sample
    reconstruction_loss = (reconstruction.float() - pixels.float()).abs().mean()
    kl = posterior.kl().float().mean()
    loss = reconstruction_loss + kl_weight * kl
    return loss, {
        "vae_loss": float(loss.detach()),
        "reconstruction_l1": float(reconstruction_loss.detach()),
        "kl": float(kl.detach()),
    }
