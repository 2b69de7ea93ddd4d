"""Candidate sampling and confidence scores for masked-diffusion decoding.

One denoising step turns the logits of the active block into candidate tokens (one per position) and a
score per position saying how sure the model is; the schedule then commits the best-scored masked
positions. This module holds those two pieces and nothing else:

- `sample_candidates`: temperature / top-k / top-p sampling (greedy at temperature 0), with a
  `torch.Generator` or one generator per batch row, returning the candidates and their probabilities.
- `confidence_scores`: the remasking strategies `low_confidence` (probability of the candidate),
  `top_k_margin` (top-1 minus top-2 probability), `neg_entropy` (1 - entropy / log V) and `random`.

All probabilities are taken under the distribution the candidate was drawn from (after temperature and
filtering), as diffusers' `BlockRefinementScheduler` does; at temperature 0 that is the plain softmax.
"""

from __future__ import annotations

import math

import torch

REMASKING_STRATEGIES = ("low_confidence", "top_k_margin", "neg_entropy", "random")

GeneratorArg = torch.Generator | list[torch.Generator] | None


def filter_logits(logits: torch.Tensor, top_k: int | None, top_p: float | None) -> torch.Tensor:
    """Keep the `top_k` largest logits and the smallest nucleus of mass `top_p`, the rest set to -inf.

    logits: (..., vocab) float. top_k: None or >= 1; top_p: None or in (0, 1].
    Returns a tensor of the same shape; positions whose logits are all -inf stay all -inf.
    """
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, sorted_index = torch.sort(logits, dim=-1, descending=True)
        cumulative = torch.softmax(sorted_logits, dim=-1).cumsum(dim=-1)
        # Drop a token once the mass before it already exceeds top_p; the best token always stays.
        drop_sorted = (cumulative - torch.softmax(sorted_logits, dim=-1)) > top_p
        drop_sorted[..., 0] = False
        drop = torch.zeros_like(drop_sorted).scatter(-1, sorted_index, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def _draw(probs: torch.Tensor, active: torch.BoolTensor, generator: GeneratorArg) -> torch.Tensor:
    """One index per active position of `probs: (B, N, V)` (others: argmax). With a list of generators,
    row b draws with generator[b] and only for its own active positions, so a row's draws do not depend on
    the rest of the batch."""
    drawn = probs.argmax(dim=-1)
    if isinstance(generator, list):
        for row, row_generator in enumerate(generator):
            if active[row].any():
                picks = torch.multinomial(probs[row][active[row]], 1, generator=row_generator).squeeze(-1)
                drawn[row, active[row]] = picks
    elif active.any():
        drawn[active] = torch.multinomial(probs[active], 1, generator=generator).squeeze(-1)
    return drawn


def sample_candidates(
    logits: torch.Tensor,
    *,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: GeneratorArg = None,
    active: torch.BoolTensor | None = None,
) -> tuple[torch.LongTensor, torch.Tensor]:
    """Draw one candidate token per position.

    logits: (batch, positions, vocab) float; disallowed tokens already -inf. temperature 0 is greedy
    (argmax, `top_k`/`top_p` ignored); otherwise logits / temperature are filtered by `top_k` and `top_p` and
    sampled with `generator` (one `torch.Generator`, or a list with one per batch row) at the `active`
    (batch, positions) bool positions only (default all), the others taking the argmax.
    Returns (candidates: (batch, positions) int64, probs: (batch, positions, vocab) float32) where `probs`
    is the distribution the candidates were drawn from.
    """
    logits = logits.float()
    if temperature == 0.0:
        probs = torch.softmax(logits, dim=-1)
        return logits.argmax(dim=-1), probs
    filtered = filter_logits(logits / temperature, top_k, top_p)
    probs = torch.softmax(filtered, dim=-1)
    if active is None:
        active = torch.ones(probs.shape[:-1], dtype=torch.bool, device=probs.device)
    return _draw(probs, active, generator), probs


def _uniform(active: torch.BoolTensor, generator: GeneratorArg) -> torch.Tensor:
    """Uniform noise at the active positions (zero elsewhere), drawn per row with a list of generators."""
    noise = torch.zeros(active.shape, device=active.device)
    if isinstance(generator, list):
        for row, row_generator in enumerate(generator):
            count = int(active[row].sum())
            if count:
                noise[row, active[row]] = torch.rand(count, device=active.device, generator=row_generator)
    elif active.any():
        noise[active] = torch.rand(int(active.sum()), device=active.device, generator=generator)
    return noise


def confidence_scores(
    probs: torch.Tensor,
    candidates: torch.LongTensor,
    strategy: str,
    *,
    generator: GeneratorArg = None,
    active: torch.BoolTensor | None = None,
) -> torch.Tensor:
    """Score every position by how confident the model is; higher is committed first.

    probs: (batch, positions, vocab) float, candidates: (batch, positions) int64, strategy one of
    `REMASKING_STRATEGIES`. Returns (batch, positions) float32: `low_confidence` -> p(candidate),
    `top_k_margin` -> p(top-1) - p(top-2), `neg_entropy` -> 1 - H(p) / log(vocab) in [0, 1],
    `random` -> uniform noise from `generator` at the `active` positions (default all).
    """
    if strategy == "low_confidence":
        return probs.gather(-1, candidates.unsqueeze(-1)).squeeze(-1)
    if strategy == "top_k_margin":
        top2 = torch.topk(probs, 2, dim=-1).values
        return top2[..., 0] - top2[..., 1]
    if strategy == "neg_entropy":
        entropy = -(probs * torch.log(probs.clamp_min(1e-12))).sum(dim=-1)
        return 1.0 - entropy / math.log(probs.shape[-1])
    if strategy == "random":
        if active is None:
            active = torch.ones(candidates.shape, dtype=torch.bool, device=candidates.device)
        return _uniform(active, generator)
    raise ValueError(f"`remasking` must be one of {REMASKING_STRATEGIES}, got {strategy!r}.")
