"""Block-wise masked-diffusion sampling for the unified backbone (text, image and size tokens).

The sequence to complete is given whole: `input_ids (batch, seq)` where every position to generate holds
`mask_id`, and `token_kinds (batch, seq) int8` (PROMPT=0 given, TEXT=1, IMAGE=2 image codes only, SIZE=3
size tokens only). The sequence is cut into blocks of `block_length` aligned from index 0 (prompt
included), as the official sampler does; blocks without a masked position are skipped. Each remaining
block is denoised in at most `num_inference_steps` steps, each step being:

    forward (block-causal attention over the prefix and the block; SPRINT: cached prefix)
    -> guidance (simple or three-way CFG)            guidance.py
    -> type constraints (disallowed ids -> -inf, the mask id is never a candidate)
    -> candidates + confidence (remasking strategy)   remasking.py
    -> commit (fixed / adaptive schedule, threshold)  sampler_schedule.py (a diffusers scheduler)
    -> EOS fill of finished TEXT spans, callback

The step math lives in the scheduler (no model), the prefix pruning in `sprint.py`; this loop only
calls the model. It follows the backbone contract: `model(input_ids, attention_mask=(B, 1, q, k) bool,
position_ids, past_key_values=PrefixKVCache | None, use_cache)` -> `.logits (B, q, V)`,
`.past_key_values`.

Batching and per-sample lengths: rows share one length; pad each row on the right (the layout's
default) and pass `padding_mask (batch, seq) bool` (True = real token). Padding is never attended to and
never generated, and position ids count real tokens only, so a padded row decodes exactly as it would
alone (left padding works too, but shifts that row's block boundaries).

Guidance inputs: `uncond_input_ids` (and for three-way editing guidance `uncond_image_input_ids`, the
no-image branch; `uncond_input_ids` is then the no-text branch) must have the same shape as `input_ids`
with the generated region at the same indices: put the unconditional prompt right-aligned against the
generated region and left-pad it (`uncond_padding_mask` False there), as the official code does;
`sampler_inputs.build_unconditional_inputs` does this. Each step the branches receive the conditional
sequence's current tokens in the generated region.
"""

from __future__ import annotations

import time
from typing import Callable

import torch

from unimask.unimodal.attention_masks import padded_block_causal_mask
from unimask.unimodal.guidance import apply_guidance, apply_three_way_guidance
from unimask.unimodal.remasking import GeneratorArg, confidence_scores, sample_candidates
from unimask.unimodal.sampler_config import SamplerConfig, SamplerOutput, SamplingStats
from unimask.unimodal.sampler_schedule import MaskedBlockScheduler
from unimask.unimodal.sprint import prefix_scores, prefix_top1_confidence, select_prefix_entries

# Values of `unimask.tokenizers.token_layout.TokenKind` (not imported: the sampler does not depend on the layout).
PROMPT_KIND, TEXT_KIND, IMAGE_KIND, SIZE_KIND = 0, 1, 2, 3
TOKEN_KINDS = (PROMPT_KIND, TEXT_KIND, IMAGE_KIND, SIZE_KIND)

StepCallback = Callable[[int, int, torch.LongTensor], None]


def _segment_cumsum(values: torch.Tensor, segment_start: torch.BoolTensor) -> torch.Tensor:
    """Inclusive cumulative sum of non-negative `values (B, L)` restarting at every `segment_start`."""
    total = values.cumsum(dim=-1)
    offset = torch.where(segment_start, total - values, torch.zeros_like(total)).cummax(dim=-1).values
    return total - offset


def fill_after_eos(
    sequences: torch.LongTensor, text_positions: torch.BoolTensor, mask_id: int, eos_id: int
) -> int:
    """In place: in each contiguous run of `text_positions`, once an EOS has no mask before it in the run,
    set every later position of the run to EOS. sequences: (B, L) int64; text_positions: (B, L) bool.
    Returns how many still-masked positions were filled."""
    previous = torch.zeros_like(text_positions)
    previous[:, 1:] = text_positions[:, :-1]
    run_start = text_positions & ~previous
    is_mask = ((sequences == mask_id) & text_positions).long()
    masks_up_to = _segment_cumsum(is_mask, run_start)
    finished_eos = ((sequences == eos_id) & text_positions & (masks_up_to == 0)).long()
    after_eos = (_segment_cumsum(finished_eos, run_start) - finished_eos) > 0
    fill = after_eos & text_positions & (sequences != eos_id)
    filled_masks = int((fill & (sequences == mask_id)).sum())
    sequences[fill] = eos_id
    return filled_masks


class MaskedDiffusionSampler:
    """Runs block-wise masked-diffusion decoding with a backbone.

    Args:
        model: callable following the backbone contract (see the module docstring).
        mask_id: id of the mask token; eos_id: end-of-sequence id (None disables the EOS fill).
        kind_vocab_masks: {token kind: (vocab,) bool allowed ids}; kinds without an entry are unconstrained.
        config: default `SamplerConfig` (per-call overrides go to `__call__`).
    """

    def __init__(
        self,
        model: Callable,
        *,
        mask_id: int,
        eos_id: int | None = None,
        kind_vocab_masks: dict[int, torch.Tensor] | None = None,
        config: SamplerConfig | None = None,
    ):
        self.model = model
        self.mask_id = int(mask_id)
        self.eos_id = None if eos_id is None else int(eos_id)
        self.kind_vocab_masks = dict(kind_vocab_masks or {})
        for kind, vocab_mask in self.kind_vocab_masks.items():
            if kind not in TOKEN_KINDS or vocab_mask.ndim != 1 or vocab_mask.dtype != torch.bool:
                raise ValueError(
                    f"`kind_vocab_masks` needs kinds in {TOKEN_KINDS} mapped to (vocab,) bool tensors, got "
                    f"kind {kind!r} -> {tuple(vocab_mask.shape)} {vocab_mask.dtype}."
                )
            allowed = vocab_mask.clone()
            if self.mask_id < allowed.numel():
                allowed[self.mask_id] = False
            if not allowed.any():
                raise ValueError(f"`kind_vocab_masks[{kind}]` allows no token other than the mask id.")
        self.config = config or SamplerConfig()

    # ---------------------------------------------------------------- inputs

    def check_inputs(
        self,
        input_ids: torch.Tensor,
        token_kinds: torch.Tensor,
        padding_mask: torch.Tensor,
        branches: list[tuple[str, torch.Tensor, torch.Tensor]],
        generator: GeneratorArg,
    ) -> None:
        """Raise `ValueError` for malformed tensors (shapes, dtypes, kinds, guidance alignment)."""
        if input_ids.ndim != 2 or input_ids.dtype != torch.long:
            raise ValueError(f"`input_ids` must be (batch, seq) int64, got {tuple(input_ids.shape)} {input_ids.dtype}.")
        if token_kinds.shape != input_ids.shape:
            raise ValueError(f"`token_kinds` must have shape {tuple(input_ids.shape)}, got {tuple(token_kinds.shape)}.")
        if padding_mask.shape != input_ids.shape or padding_mask.dtype != torch.bool:
            raise ValueError(
                f"`padding_mask` must be bool of shape {tuple(input_ids.shape)}, got "
                f"{tuple(padding_mask.shape)} {padding_mask.dtype}."
            )
        bad_kind = ~torch.isin(token_kinds.long(), torch.tensor(TOKEN_KINDS, device=token_kinds.device))
        if bad_kind.any():
            raise ValueError(f"`token_kinds` values must be in {TOKEN_KINDS}, got {token_kinds[bad_kind][0].item()}.")
        generate = (input_ids == self.mask_id) & padding_mask
        if (generate & (token_kinds == PROMPT_KIND)).any():
            raise ValueError(
                "`input_ids` holds `mask_id` at a PROMPT position; give those positions a kind to generate."
            )
        for name, ids, valid in branches:
            if ids.shape != input_ids.shape or ids.dtype != torch.long or valid.shape != input_ids.shape:
                raise ValueError(
                    f"`{name}` must be int64 of shape {tuple(input_ids.shape)} (generated region at the same "
                    f"indices), got {tuple(ids.shape)} {ids.dtype}."
                )
            if (generate & ~valid).any():
                raise ValueError(f"`{name}` padding covers positions that are generated; right-align its prompt.")
        if isinstance(generator, list) and len(generator) != input_ids.shape[0]:
            raise ValueError(
                f"`generator` list must have one generator per row ({input_ids.shape[0]}), got {len(generator)}."
            )

    # ---------------------------------------------------------------- model calls

    def _full_forward(self, ids, valid, positions, end, block_length, use_cache):
        """Forward over indices [0, end) with the block-causal mask; padding never attended to."""
        return self.model(
            ids[:, :end],
            attention_mask=padded_block_causal_mask(valid[:, :end], block_length),
            position_ids=positions[:, :end],
            past_key_values=None,
            use_cache=use_cache,
        )

    def _cached_forward(self, ids, valid, positions, start, end, cache, cache_valid):
        """Forward over the block [start, end) attending to the (pruned) prefix cache."""
        rows, width = ids.shape[0], end - start
        prefix_part = cache_valid[:, None, :].expand(rows, width, cache_valid.shape[-1])
        block_part = valid[:, None, start:end] | torch.eye(width, dtype=torch.bool, device=ids.device)
        allowed = torch.cat([prefix_part, block_part.expand(rows, width, width)], dim=-1)
        return self.model(
            ids[:, start:end],
            attention_mask=allowed.unsqueeze(1),
            position_ids=positions[:, start:end],
            past_key_values=cache,
            use_cache=False,
        )

    def _prune(self, cache, logits, ids, kinds, generate, valid, start, config, stats):
        """Build the block's prefix cache from a full forward: keep the best prefix entries (sprint.py)."""
        text_ratio, image_ratio = config.resolved_text_keep_ratio, config.resolved_image_keep_ratio
        prefix_valid = valid[:, :start]
        stats.cache_builds += 1
        if text_ratio >= 1.0 and image_ratio >= 1.0:
            keep_index = torch.arange(start, device=ids.device).expand(ids.shape[0], start)
            stats.prefix_entries_kept += int(prefix_valid.sum())
            return cache.select(keep_index), prefix_valid
        scores = prefix_scores(
            cache.key_norm_importance()[:, :start].to(logits.device),
            prefix_top1_confidence(logits[:, :start]),
            config.confidence_alpha,
        )
        is_image = (kinds[:, :start] == IMAGE_KIND) & generate[:, :start]
        image_vocab = self.kind_vocab_masks.get(IMAGE_KIND)
        if image_vocab is not None:
            prefix_ids = ids[:, :start]
            in_vocab = prefix_ids < image_vocab.numel()
            is_image |= in_vocab & image_vocab.to(ids.device)[prefix_ids.clamp(max=image_vocab.numel() - 1)]
        keep_index, keep_valid = select_prefix_entries(scores, is_image, prefix_valid, text_ratio, image_ratio)
        stats.cache_prunes += 1
        kept = int(keep_valid.sum())
        stats.prefix_entries_kept += kept
        stats.prefix_entries_dropped += int(prefix_valid.sum()) - kept
        return cache.select(keep_index), keep_valid

    # ---------------------------------------------------------------- logits -> step

    @staticmethod
    def _guide(block_logits: torch.Tensor, n_branches: int, config: SamplerConfig) -> torch.Tensor:
        """Combine the branches' logits ((n_branches * B, n, V), conditional rows first) into (B, n, V)."""
        branch_logits = block_logits.float().chunk(n_branches)
        if n_branches == 1:
            return branch_logits[0]
        if n_branches == 2:
            return apply_guidance(*branch_logits, config.guidance_scale, config.guidance_rescale)
        return apply_three_way_guidance(
            *branch_logits, config.text_guidance_scale, config.image_guidance_scale, config.guidance_rescale
        )

    def _constrain(self, logits: torch.Tensor, kinds: torch.Tensor) -> torch.Tensor:
        """Set ids not allowed for each position's kind, and the mask id, to -inf. logits: (B, n, V)."""
        vocab = logits.shape[-1]
        if self.mask_id < vocab:
            never = torch.zeros(vocab, dtype=torch.bool, device=logits.device)
            never[self.mask_id] = True
            logits = logits.masked_fill(never, float("-inf"))
        for kind, vocab_mask in self.kind_vocab_masks.items():
            if vocab_mask.numel() != vocab:
                raise ValueError(f"`kind_vocab_masks[{kind}]` has {vocab_mask.numel()} entries, the model {vocab}.")
            disallowed = (kinds == kind)[..., None] & ~vocab_mask.to(logits.device)
            logits = logits.masked_fill(disallowed, float("-inf"))
        return logits

    # ---------------------------------------------------------------- main loop

    @torch.no_grad()
    def __call__(
        self,
        input_ids: torch.LongTensor,
        token_kinds: torch.Tensor,
        *,
        padding_mask: torch.BoolTensor | None = None,
        uncond_input_ids: torch.LongTensor | None = None,
        uncond_padding_mask: torch.BoolTensor | None = None,
        uncond_image_input_ids: torch.LongTensor | None = None,
        uncond_image_padding_mask: torch.BoolTensor | None = None,
        generator: GeneratorArg = None,
        callback_on_step_end: StepCallback | None = None,
        config: SamplerConfig | None = None,
        **config_overrides,
    ) -> SamplerOutput:
        """Fill every masked position of `input_ids`.

        input_ids: (B, L) int64, `mask_id` where to generate; token_kinds: (B, L) int (TokenKind values);
        padding_mask: (B, L) bool, True = real token (default all True). uncond_input_ids /
        uncond_padding_mask: unconditional branch for simple CFG, or the no-text branch of three-way
        guidance when uncond_image_input_ids / uncond_image_padding_mask (the no-image branch) are given.
        generator: `torch.Generator` or one per row. callback_on_step_end(step_index within the block,
        block_index, sequences (B, L)) runs after every step; in-place edits of `sequences` are kept.
        config / config_overrides: options (see `SamplerConfig`), defaulting to the sampler's config.
        Returns `SamplerOutput(sequences (B, L) int64, stats)`. Raises `ValueError` for bad inputs or
        options and `FloatingPointError` when the model's logits hold NaN or +inf.
        """
        started = time.perf_counter()
        config = (config or self.config).replace(**config_overrides) if config_overrides else (config or self.config)
        batch, length = input_ids.shape if input_ids.ndim == 2 else (0, 0)
        padding_mask = torch.ones_like(input_ids, dtype=torch.bool) if padding_mask is None else padding_mask
        branches = []
        if uncond_image_input_ids is not None and uncond_input_ids is None:
            raise ValueError("`uncond_image_input_ids` (three-way guidance) needs `uncond_input_ids` (no-text branch).")
        for name, ids, valid in (
            ("uncond_input_ids", uncond_input_ids, uncond_padding_mask),
            ("uncond_image_input_ids", uncond_image_input_ids, uncond_image_padding_mask),
        ):
            if ids is not None:
                branches.append((name, ids, torch.ones_like(ids, dtype=torch.bool) if valid is None else valid))
        self.check_inputs(input_ids, token_kinds, padding_mask, branches, generator)

        stats = SamplingStats(batch_size=batch)
        three_way = len(branches) == 2
        if three_way and config.text_guidance_scale == 0.0 and config.image_guidance_scale == 0.0:
            branches, three_way = [], False
        if len(branches) == 1 and config.guidance_scale == 0.0:
            branches = []
        use_sprint = config.use_sprint
        if use_sprint and three_way:
            use_sprint = False
            stats.fallback_reasons.append("use_sprint ignored: SPRINT does not support three-way guidance")

        sequences = input_ids.clone()
        kinds = token_kinds.to(torch.long)
        generate = (sequences == self.mask_id) & padding_mask
        branch_ids = torch.cat([input_ids] + [ids for _, ids, _ in branches])
        branch_valid = torch.cat([padding_mask] + [valid for _, _, valid in branches])
        branch_positions = (branch_valid.long().cumsum(dim=-1) - 1).clamp_min(0)
        branch_generate = generate.repeat(1 + len(branches), 1)
        branch_kinds = kinds.repeat(1 + len(branches), 1)
        n_branches = 1 + len(branches)
        text_positions = generate & (kinds == TEXT_KIND)
        scheduler = MaskedBlockScheduler(
            block_length=config.block_length,
            num_inference_steps=config.num_inference_steps,
            schedule=config.schedule,
            threshold=config.threshold,
            minimal_topk=config.minimal_topk,
        )

        block_length = config.block_length
        for block_index in range((length + block_length - 1) // block_length):
            start, end = block_index * block_length, min(length, (block_index + 1) * block_length)
            if not (generate[:, start:end] & (sequences[:, start:end] == self.mask_id)).any():
                stats.blocks_skipped += int(generate[:, start:end].any())
                continue
            stats.blocks_decoded += 1
            cache, cache_valid = None, None
            for step_index in range(config.num_inference_steps):
                masked = generate[:, start:end] & (sequences[:, start:end] == self.mask_id)
                if not masked.any():
                    break
                # Unconditional branches carry the conditional tokens in the generated region.
                current = torch.where(branch_generate, sequences.repeat(n_branches, 1), branch_ids)
                if cache is not None:
                    out = self._cached_forward(current, branch_valid, branch_positions, start, end, cache, cache_valid)
                    stats.cache_reuses += 1
                    block_logits = out.logits
                else:
                    build_cache = use_sprint and start > 0 and step_index == config.cache_warmup_steps - 1
                    out = self._full_forward(current, branch_valid, branch_positions, end, block_length, build_cache)
                    block_logits = out.logits[:, start:end]
                    if build_cache:
                        cache, cache_valid = self._prune(
                            out.past_key_values, out.logits, current, branch_kinds, branch_generate,
                            branch_valid, start, config, stats,
                        )
                stats.model_calls += 1
                stats.nfe += n_branches

                logits = self._constrain(self._guide(block_logits, n_branches, config), kinds[:, start:end])
                if torch.isnan(logits).any() or torch.isposinf(logits).any():
                    # Committing argmax/samples of NaN logits would silently return garbage tokens.
                    raise FloatingPointError(
                        f"the model returned non-finite logits (NaN or +inf) in block {block_index}, step "
                        f"{step_index}; no tokens were committed from them (check the weights and the dtype)"
                    )
                candidates, probs = sample_candidates(
                    logits, temperature=config.temperature, top_k=config.top_k, top_p=config.top_p,
                    generator=generator, active=masked,
                )
                candidate_probs = probs.gather(-1, candidates.unsqueeze(-1)).squeeze(-1)
                scores = confidence_scores(probs, candidates, config.remasking, generator=generator, active=masked)
                block, transfer = scheduler.step(
                    candidates, scores, candidate_probs, sequences[:, start:end], masked, step_index,
                    return_dict=False,
                )
                sequences[:, start:end] = block
                stats.tokens_committed += int(transfer.sum())
                stats.denoising_steps += 1
                if config.eos_early_stop and self.eos_id is not None:
                    stats.eos_filled += fill_after_eos(sequences, text_positions, self.mask_id, self.eos_id)
                if callback_on_step_end is not None:
                    callback_on_step_end(step_index, block_index, sequences)

        stats.wall_time_s = time.perf_counter() - started
        return SamplerOutput(sequences=sequences, stats=stats)


__all__ = [
    "IMAGE_KIND",
    "MaskedDiffusionSampler",
    "PROMPT_KIND",
    "SIZE_KIND",
    "TEXT_KIND",
    "fill_after_eos",
]
