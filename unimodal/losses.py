"""Training objectives of the masked-diffusion backbone, on joint text + image-code sequences.

* `masked_diffusion_loss` — the MDLM / LLaDA ELBO: a ratio t ~ U[eps, 1] per sequence (optionally
  stratified over the batch), each maskable token replaced by the mask token with probability t,
  cross-entropy on the masked tokens weighted by 1/t, normalised by the number of maskable tokens.
* `sft_masked_diffusion_loss` — the same with only response tokens maskable.
* `block_diffusion_loss` — BD3-LM / LLaDA2.0 block diffusion: one ratio per block, noisy and clean
  copies packed in one sequence of length 2L under `block_diffusion_training_mask`.
* `block_size_schedule` — LLaDA2.0's warmup-stable-decay schedule over block sizes.

Every loss returns ``(loss, metrics)``: a scalar to back-propagate and a dict of floats, with
per-modality entries (``modality``: 0 text, 1 image) such as ``ce/text`` and ``acc/image``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .attention_masks import block_diffusion_training_mask, positions_in_documents

MODALITY_NAMES = {0: "text", 1: "image"}


def sample_mask_ratios(
    count: int,
    *,
    stratified: bool = True,
    eps: float = 1e-3,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Draw masking ratios t in [eps, 1].

    Args:
        count: number of ratios.
        stratified: low-discrepancy draw: one uniform per stratum ``[i/count, (i+1)/count)``, in
            random order (lower-variance ELBO estimate than i.i.d. draws).
        eps: smallest ratio (keeps the 1/t weight bounded).
        generator: CPU random generator for reproducibility.
        device: device of the result.

    Returns:
        (count,) float32.
    """
    if count < 1:
        raise ValueError(f"count={count} must be >= 1")
    if not 0.0 <= eps < 1.0:
        raise ValueError(f"eps={eps} must be in [0, 1)")
    uniform = torch.rand(count, generator=generator)
    if stratified:
        uniform = (torch.randperm(count, generator=generator) + uniform) / count
    return (eps + (1.0 - eps) * uniform).to(device)


def _check_token_tensors(input_ids: torch.Tensor, **named: torch.Tensor | None) -> None:
    if input_ids.ndim != 2:
        raise ValueError(f"input_ids must be (batch, seq), got shape {tuple(input_ids.shape)}")
    for name, tensor in named.items():
        if tensor is not None and tensor.shape != input_ids.shape:
            raise ValueError(
                f"{name} has shape {tuple(tensor.shape)}, expected {tuple(input_ids.shape)} like input_ids"
            )


def check_text_loss_weight(text_loss_weight: object) -> float:
    """``text_loss_weight`` as a float; ValueError unless it is a finite number > 0 (not a bool)."""
    if isinstance(text_loss_weight, bool) or not isinstance(text_loss_weight, (int, float)) or not (
        math.isfinite(text_loss_weight) and text_loss_weight > 0
    ):
        raise ValueError(f"text_loss_weight={text_loss_weight!r} must be a finite number > 0 (1.0: the plain ELBO)")
    return float(text_loss_weight)


def _check_text_loss_weight(text_loss_weight: float, modality: torch.Tensor | None) -> None:
    check_text_loss_weight(text_loss_weight)
    if text_loss_weight != 1.0 and modality is None:
        raise ValueError("text_loss_weight != 1 needs modality (0 text / 1 image per position) to know the text positions")


def _modality_weighted(token_weight: torch.Tensor, modality: torch.Tensor | None, text_loss_weight: float) -> torch.Tensor:
    """(B, L) token weights with text positions (modality 0) scaled by ``text_loss_weight``."""
    if text_loss_weight == 1.0:
        return token_weight
    return token_weight * torch.where(modality == 0, float(text_loss_weight), 1.0)


def _masked_ce_and_metrics(
    logits: torch.Tensor,
    targets: torch.Tensor,
    masked: torch.Tensor,
    token_weight: torch.Tensor,
    maskable: torch.Tensor,
    modality: torch.Tensor | None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Weighted CE on the masked positions, per-sample normalised by the maskable count."""
    masked_logits = logits[masked].float()
    masked_targets = targets[masked]
    token_ce = F.cross_entropy(masked_logits, masked_targets, reduction="none")
    per_token = torch.zeros(targets.shape, dtype=token_ce.dtype, device=token_ce.device)
    per_token = per_token.masked_scatter(masked, token_ce * token_weight[masked])
    maskable_count = maskable.sum(dim=1).clamp_min(1)
    loss = (per_token.sum(dim=1) / maskable_count).mean()
    if token_ce.numel() == 0:
        loss = loss + logits.sum() * 0.0

    metrics: dict[str, float] = {
        "loss": loss.item(),
        "mask_ratio": (masked.sum() / maskable.sum().clamp_min(1)).item(),
        "masked_tokens": float(masked.sum().item()),
    }
    with torch.no_grad():
        correct = masked_logits.argmax(dim=-1) == masked_targets
        if token_ce.numel():
            metrics["ce"] = token_ce.mean().item()
            metrics["acc"] = correct.float().mean().item()
        if modality is not None:
            masked_modality = modality[masked]
            for value, name in MODALITY_NAMES.items():
                selected = masked_modality == value
                count = int(selected.sum())
                metrics[f"masked_tokens/{name}"] = float(count)
                if count:
                    metrics[f"ce/{name}"] = token_ce[selected].mean().item()
                    metrics[f"acc/{name}"] = correct[selected].float().mean().item()
    return loss, metrics


def _add_router_terms(
    loss: torch.Tensor, metrics: dict[str, float], output, router_z_loss_weight: float
) -> torch.Tensor:
    if output.router_stats:
        loads = torch.stack([stats.expert_load for stats in output.router_stats])
        metrics["expert_load_cv"] = (loads.std(dim=1) / loads.mean(dim=1).clamp_min(1e-9)).mean().item()
    if output.aux_loss is not None:
        metrics["router_z_loss"] = output.aux_loss.item()
        if router_z_loss_weight:
            loss = loss + router_z_loss_weight * output.aux_loss
    metrics["total_loss"] = loss.item()
    return loss


def masked_diffusion_loss(
    model,
    input_ids: torch.Tensor,
    *,
    mask_token_id: int,
    maskable: torch.Tensor | None = None,
    modality: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
    position_ids: torch.Tensor | None = None,
    stratified: bool = True,
    eps: float = 1e-3,
    router_z_loss_weight: float = 0.0,
    text_loss_weight: float = 1.0,
    generator: torch.Generator | None = None,
    force_masked: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Masked-diffusion ELBO on (text + image-code) sequences.

    Args:
        model: an `LLaDA2MoeModelLM` (any callable returning ``.logits`` (B, L, V)).
        input_ids: (B, L) int64 clean sequences.
        mask_token_id: id of the mask token.
        maskable: (B, L) bool, positions that may be masked (default: all). Prompt and padding
            positions should be False.
        modality: (B, L) int, 0 text / 1 image, for per-modality metrics.
        attention_mask: passed to the model (e.g. `bidirectional_mask` with packed documents).
        position_ids: passed to the model.
        stratified: stratify the ratios t over the batch.
        eps: smallest masking ratio.
        router_z_loss_weight: weight of the router z-loss added to the loss (0: not added).
        text_loss_weight: factor on the CE of masked text positions (``modality`` 0) against image
            codes (1.0: the plain ELBO); needs ``modality`` when not 1.
        generator: CPU generator for the ratios and the masks.
        force_masked: (B, L) bool, maskable positions masked whatever the sample's ratio and weighted
            as at ratio 1 (the all-masked state a sampler starts from; see the backbone stage's
            ``answer_full_mask_rate``). Default: none.

    Returns:
        ``(loss, metrics)``: () float32 loss = mean over samples of ``sum_masked CE / t`` (text
        positions times ``text_loss_weight``) divided by the sample's maskable count; metrics dict
        of floats (``loss``, ``ce``, ``acc``, ``mask_ratio``, ``ce/text``, ``ce/image``, ...).
    """
    _check_token_tensors(input_ids, maskable=maskable, modality=modality)
    _check_text_loss_weight(text_loss_weight, modality)
    batch = input_ids.shape[0]
    device = input_ids.device
    maskable = torch.ones_like(input_ids, dtype=torch.bool) if maskable is None else maskable.bool()
    ratio = sample_mask_ratios(batch, stratified=stratified, eps=eps, generator=generator, device=device)
    draws = torch.rand(input_ids.shape, generator=generator).to(device)
    masked = (draws < ratio[:, None]) & maskable
    inverse_ratio = (1.0 / ratio)[:, None].expand_as(input_ids)
    if force_masked is not None:
        if force_masked.shape != input_ids.shape:
            raise ValueError(f"force_masked has shape {tuple(force_masked.shape)}; it must match input_ids {tuple(input_ids.shape)}")
        forced = force_masked.bool().to(device) & maskable
        masked = masked | forced
        inverse_ratio = torch.where(forced, 1.0, inverse_ratio)
    noisy = input_ids.masked_fill(masked, mask_token_id)
    output = model(
        noisy,
        attention_mask=attention_mask,
        position_ids=position_ids,
        output_router_stats=router_z_loss_weight > 0,
    )
    token_weight = _modality_weighted(inverse_ratio, modality, text_loss_weight)
    loss, metrics = _masked_ce_and_metrics(output.logits, input_ids, masked, token_weight, maskable, modality)
    return _add_router_terms(loss, metrics, output, router_z_loss_weight), metrics


def sft_masked_diffusion_loss(
    model, input_ids: torch.Tensor, response_mask: torch.Tensor, *, mask_token_id: int, **kwargs
) -> tuple[torch.Tensor, dict[str, float]]:
    """SFT variant: only the response tokens are masked and scored; the prompt stays clean.

    Args:
        model, input_ids, mask_token_id, **kwargs: as in `masked_diffusion_loss`.
        response_mask: (B, L) bool, True on response tokens (the loss is normalised by their count).

    Returns:
        ``(loss, metrics)`` as in `masked_diffusion_loss`.
    """
    if "maskable" in kwargs:
        raise ValueError("pass the response positions as response_mask, not maskable")
    return masked_diffusion_loss(model, input_ids, mask_token_id=mask_token_id, maskable=response_mask, **kwargs)


def _block_segments(input_ids: torch.Tensor, block_length: int, document_ids: torch.Tensor | None) -> torch.Tensor:
    """(B, L) int64 index of each token's (document, block) segment, counted from 0 per row."""
    if document_ids is None:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(input_ids)
        return positions // block_length
    positions = positions_in_documents(document_ids)
    starts = positions % block_length == 0
    return starts.long().cumsum(dim=1) - 1


def block_diffusion_loss(
    model,
    input_ids: torch.Tensor,
    *,
    mask_token_id: int,
    block_length: int,
    maskable: torch.Tensor | None = None,
    modality: torch.Tensor | None = None,
    document_ids: torch.Tensor | None = None,
    stratified: bool = True,
    eps: float = 1e-3,
    router_z_loss_weight: float = 0.0,
    text_loss_weight: float = 1.0,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Block-diffusion ELBO with the packed ``[noisy ; clean]`` layout (one forward of length 2L).

    Each block (aligned from position 0 of the row, or of each packed document) gets its own ratio
    t; its maskable tokens are masked with probability t; the noisy copy is predicted under
    `block_diffusion_training_mask` (noisy block b sees itself and clean blocks < b), CE weighted
    by 1/t of the block and normalised by the sample's maskable count.

    Args:
        model: an `LLaDA2MoeModelLM`.
        input_ids: (B, L) int64 clean sequences.
        mask_token_id: id of the mask token.
        block_length: tokens per block (L itself gives plain masked diffusion).
        maskable: (B, L) bool positions that may be masked (default: all).
        modality: (B, L) int, 0 text / 1 image, for per-modality metrics.
        document_ids: (B, L) ids of packed documents (no attention across them; positions and
            blocks restart per document).
        stratified, eps, router_z_loss_weight, text_loss_weight, generator: as in
            `masked_diffusion_loss`.

    Returns:
        ``(loss, metrics)`` as in `masked_diffusion_loss`, plus ``block_length``.
    """
    _check_token_tensors(input_ids, maskable=maskable, modality=modality, document_ids=document_ids)
    _check_text_loss_weight(text_loss_weight, modality)
    if not isinstance(block_length, int) or block_length < 1:
        raise ValueError(f"block_length={block_length!r} must be a positive integer")
    batch, seq_len = input_ids.shape
    device = input_ids.device
    maskable = torch.ones_like(input_ids, dtype=torch.bool) if maskable is None else maskable.bool()
    segments = _block_segments(input_ids, block_length, document_ids)
    num_segments = int(segments.max()) + 1
    ratios = sample_mask_ratios(
        batch * num_segments, stratified=stratified, eps=eps, generator=generator, device=device
    ).view(batch, num_segments)
    token_ratio = ratios.gather(1, segments)
    draws = torch.rand(input_ids.shape, generator=generator).to(device)
    masked = (draws < token_ratio) & maskable
    noisy = input_ids.masked_fill(masked, mask_token_id)

    if document_ids is None:
        positions = torch.arange(seq_len, device=device).expand(batch, seq_len)
    else:
        positions = positions_in_documents(document_ids)
    mask = block_diffusion_training_mask(seq_len, block_length, document_ids=document_ids, device=device)
    output = model(
        torch.cat([noisy, input_ids], dim=1),
        attention_mask=mask,
        position_ids=torch.cat([positions, positions], dim=1),
        output_router_stats=router_z_loss_weight > 0,
    )
    noisy_logits = output.logits[:, :seq_len]
    loss, metrics = _masked_ce_and_metrics(
        noisy_logits, input_ids, masked, _modality_weighted(1.0 / token_ratio, modality, text_loss_weight), maskable, modality
    )
    metrics["block_length"] = float(block_length)
    return _add_router_terms(loss, metrics, output, router_z_loss_weight), metrics


def block_size_schedule(
    step: int,
    *,
    warmup_steps: int,
    stable_steps: int,
    decay_steps: int,
    max_block_length: int,
    start_block_length: int = 1,
    final_block_length: int = 32,
) -> int:
    """Block length at ``step`` under LLaDA2.0's warmup-stable-decay (WSD) block schedule.

    Warmup grows the block from ``start_block_length`` (1 = autoregressive) to ``max_block_length``
    (the sequence length = full masked diffusion) in powers of two, evenly in log2 space; stable
    keeps ``max_block_length``; decay shrinks it to ``final_block_length`` (the inference block
    size) the same way, and it stays there afterwards.

    Args:
        step: training step, >= 0.
        warmup_steps, stable_steps, decay_steps: phase lengths, >= 0.
        max_block_length: block length of the stable phase (usually the sequence length).
        start_block_length: block length at step 0 (clamped to ``max_block_length``).
        final_block_length: block length after the decay (clamped to ``max_block_length``).

    Returns:
        The block length, an int in [1, max_block_length].
    """
    for name, value in (("step", step), ("warmup_steps", warmup_steps), ("stable_steps", stable_steps),
                        ("decay_steps", decay_steps)):
        if value < 0:
            raise ValueError(f"{name}={value} must be >= 0")
    for name, value in (("max_block_length", max_block_length), ("start_block_length", start_block_length),
                        ("final_block_length", final_block_length)):
        if value < 1:
            raise ValueError(f"{name}={value} must be >= 1")
    # Packed batches can be shorter than the configured block sizes: clamp rather than fail.
    start_block_length = min(start_block_length, max_block_length)
    final_block_length = min(final_block_length, max_block_length)

    def log_interpolate(low: int, high: int, progress: float) -> int:
        if progress >= 1.0:
            return high
        exponent = math.log2(low) + progress * (math.log2(high) - math.log2(low))
        return int(min(max_block_length, max(1, 2 ** round(exponent))))

    if step < warmup_steps:
        return log_interpolate(start_block_length, max_block_length, step / warmup_steps)
    step -= warmup_steps
    if step < stable_steps:
        return max_block_length
    step -= stable_steps
    if step < decay_steps:
        return log_interpolate(max_block_length, final_block_length, (step + 1) / decay_steps)
    return final_block_length


__all__ = [
    "MODALITY_NAMES",
    "block_diffusion_loss",
    "block_size_schedule",
    "check_text_loss_weight",
    "masked_diffusion_loss",
    "sample_mask_ratios",
    "sft_masked_diffusion_loss",
]
