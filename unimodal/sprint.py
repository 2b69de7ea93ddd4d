"""SPRINT prefix pruning: which cached prefix tokens the current block keeps attending to.

SPRINT (LLaDA2.0-Uni) computes the prefix KV cache once per block (all completed blocks before the
current one; with the block-causal mask the prefix never sees the current block, so its keys and values
do not change while the block is denoised) and reuses it for the remaining steps of the block. Before
reuse it may drop prefix entries: each prefix token i gets

    s_i = alpha * importance_i + (1 - alpha) * confidence_i

where `importance` is the cache's key-norm importance in [0, 1] and `confidence` is the model's top-1
probability at that position in the forward pass that built the cache. Text and image tokens are
ranked separately and keep ceil(count * ratio) entries each (`text_keep_ratio`, `image_keep_ratio`);
a ratio of 1.0 keeps every token of that kind. Padding never survives.

`select_prefix_entries` returns the `(batch, n)` index for `PrefixKVCache.select` plus a validity mask:
rows keep different numbers of entries, so shorter rows are filled up to the common `n` with entries the
attention mask must hide.
"""

from __future__ import annotations

import torch


def prefix_top1_confidence(prefix_logits: torch.Tensor) -> torch.Tensor:
    """Top-1 probability per position. prefix_logits: (batch, prefix, vocab). Returns (batch, prefix) float32."""
    logits = prefix_logits.float()
    return torch.exp(logits.max(dim=-1).values - torch.logsumexp(logits, dim=-1))


def prefix_scores(importance: torch.Tensor, confidence: torch.Tensor, alpha: float = 0.5) -> torch.Tensor:
    """s = alpha * importance + (1 - alpha) * confidence; both (batch, prefix) in [0, 1]. Returns (batch, prefix)."""
    return alpha * importance.float() + (1.0 - alpha) * confidence.float()


def _keep_best(scores: torch.Tensor, candidates: torch.BoolTensor, ratio: float) -> torch.BoolTensor:
    """Per row, the ceil(count * ratio) best-scored positions among `candidates` (batch, prefix) bool."""
    if ratio >= 1.0:
        return candidates
    count = candidates.sum(dim=-1)
    keep_count = torch.ceil(count.float() * ratio).long()
    ranked = scores.masked_fill(~candidates, float("-inf"))
    order = ranked.argsort(dim=-1, descending=True, stable=True)
    positions = torch.arange(scores.shape[-1], device=scores.device).expand_as(order)
    rank = torch.empty_like(order).scatter_(-1, order, positions)
    return (rank < keep_count.unsqueeze(-1)) & candidates


def select_prefix_entries(
    scores: torch.Tensor,
    is_image: torch.BoolTensor,
    valid: torch.BoolTensor,
    text_keep_ratio: float,
    image_keep_ratio: float,
) -> tuple[torch.LongTensor, torch.BoolTensor]:
    """Choose the prefix entries to keep.

    scores: (batch, prefix) float from `prefix_scores`; is_image: (batch, prefix) bool, image-code tokens
    (the rest are text); valid: (batch, prefix) bool, False for padding; ratios in (0, 1].
    Returns (keep_index: (batch, n) int64 ascending per row, keep_valid: (batch, n) bool) with
    n = the largest per-row keep count; entries with keep_valid False are filler to be masked out.
    """
    keep = _keep_best(scores, valid & ~is_image, text_keep_ratio) | _keep_best(
        scores, valid & is_image, image_keep_ratio
    )
    prefix = scores.shape[-1]
    n = max(int(keep.sum(dim=-1).max()), 1) if prefix > 0 else 0
    positions = torch.arange(prefix, device=scores.device).expand_as(keep)
    # Kept entries first, in their original order, then the rest as filler.
    order = torch.where(keep, positions, positions + prefix).argsort(dim=-1)[:, :n]
    return order, keep.gather(-1, order)


def kept_fraction(keep_valid: torch.BoolTensor, valid: torch.BoolTensor) -> float:
    """Share of the valid prefix entries that survived pruning (1.0 when nothing was valid)."""
    total = int(valid.sum())
    return 1.0 if total == 0 else int(keep_valid.sum()) / total


__all__ = [
    "kept_fraction",
    "prefix_scores",
    "prefix_top1_confidence",
    "select_prefix_entries",
]
