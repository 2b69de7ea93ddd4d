"""Building sampler inputs: text continuation, unconditional branches, and the thinking-then-image flow.

These helpers only arrange tensors for `MaskedDiffusionSampler`; the prompt formats (chat roles, image
headers) belong to the token layout and the pipelines.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from unimask.unimodal.sampler import PROMPT_KIND, TEXT_KIND, MaskedDiffusionSampler
from unimask.unimodal.sampler_config import SamplerConfig, SamplerOutput, check_gen_length


@dataclass
class SamplerInputs:
    """Tensors for one sampler call (all (batch, seq); see `MaskedDiffusionSampler.__call__`)."""

    input_ids: torch.LongTensor
    token_kinds: torch.Tensor
    padding_mask: torch.BoolTensor
    uncond_input_ids: torch.LongTensor | None = None
    uncond_padding_mask: torch.BoolTensor | None = None
    uncond_image_input_ids: torch.LongTensor | None = None
    uncond_image_padding_mask: torch.BoolTensor | None = None

    def as_kwargs(self) -> dict:
        """Keyword arguments for `MaskedDiffusionSampler.__call__` (None entries dropped)."""
        return {name: value for name, value in vars(self).items() if value is not None}


def _as_rows(prompts: torch.Tensor | list[torch.Tensor], name: str) -> list[torch.Tensor]:
    rows = list(prompts.unbind(0)) if isinstance(prompts, torch.Tensor) and prompts.ndim == 2 else list(prompts)
    if not rows or any(row.ndim != 1 or row.dtype != torch.long for row in rows):
        raise ValueError(f"`{name}` must be a (batch, len) int64 tensor or a non-empty list of 1-D int64 tensors.")
    return rows


def text_continuation_inputs(
    prompts: torch.Tensor | list[torch.Tensor],
    *,
    gen_length: int,
    block_length: int,
    mask_id: int,
    pad_id: int,
) -> SamplerInputs:
    """Prompt then `gen_length` masked TEXT positions, per row, right-padded to a common length.

    prompts: (batch, prompt_len) int64 or a list of 1-D int64 prompts of different lengths;
    gen_length: a positive multiple of block_length. Returns `SamplerInputs` with seq = max prompt length +
    gen_length; kinds PROMPT then TEXT; padding (pad_id, padding_mask False) after shorter rows.
    """
    check_gen_length(gen_length, block_length)
    rows = _as_rows(prompts, "prompts")
    length = max(row.numel() for row in rows) + gen_length
    input_ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    token_kinds = torch.full((len(rows), length), PROMPT_KIND, dtype=torch.int8)
    padding_mask = torch.zeros((len(rows), length), dtype=torch.bool)
    for index, row in enumerate(rows):
        prompt_len = row.numel()
        input_ids[index, :prompt_len] = row
        input_ids[index, prompt_len : prompt_len + gen_length] = mask_id
        token_kinds[index, prompt_len : prompt_len + gen_length] = TEXT_KIND
        padding_mask[index, : prompt_len + gen_length] = True
    return SamplerInputs(input_ids=input_ids, token_kinds=token_kinds, padding_mask=padding_mask)


def build_unconditional_inputs(
    input_ids: torch.LongTensor,
    padding_mask: torch.BoolTensor,
    uncond_prompts: torch.Tensor | list[torch.Tensor],
    *,
    mask_id: int,
    pad_id: int,
) -> tuple[torch.LongTensor, torch.BoolTensor]:
    """Align unconditional prompts with a conditional batch (the official left-padding rule).

    input_ids / padding_mask: (batch, seq) of the conditional rows; uncond_prompts: one 1-D prompt per row.
    Each row's unconditional prompt ends where that row's generated region starts (its first `mask_id`),
    left-padded (padding_mask False) or, when longer, cut from the left; from there on the row is a copy of
    the conditional row. Returns (uncond_input_ids, uncond_padding_mask), both (batch, seq).
    """
    rows = _as_rows(uncond_prompts, "uncond_prompts")
    if len(rows) != input_ids.shape[0]:
        raise ValueError(f"`uncond_prompts` needs one prompt per row ({input_ids.shape[0]}), got {len(rows)}.")
    uncond_ids = input_ids.clone()
    uncond_valid = padding_mask.clone()
    for index, row in enumerate(rows):
        masked = (input_ids[index] == mask_id).nonzero()
        if masked.numel() == 0:
            raise ValueError(f"row {index} of `input_ids` has no `mask_id` position to generate.")
        gen_start = int(masked[0])
        kept = row[-gen_start:] if gen_start > 0 else row[:0]
        uncond_ids[index, :gen_start] = pad_id
        uncond_valid[index, :gen_start] = False
        uncond_ids[index, gen_start - kept.numel() : gen_start] = kept
        uncond_valid[index, gen_start - kept.numel() : gen_start] = True
    return uncond_ids, uncond_valid


@dataclass
class ThinkingOutput:
    """thinking: the reasoning-text call's output; image: the output of the call conditioned on it."""

    thinking: SamplerOutput
    image: SamplerOutput


def sample_with_thinking(
    sampler: MaskedDiffusionSampler,
    thinking_inputs: SamplerInputs,
    build_image_inputs: Callable[[torch.LongTensor], SamplerInputs],
    *,
    thinking_config: SamplerConfig | None = None,
    image_config: SamplerConfig | None = None,
    generator: torch.Generator | list[torch.Generator] | None = None,
) -> ThinkingOutput:
    """Thinking mode: generate the reasoning text span first, then the image conditioned on it.

    thinking_inputs: prompt plus masked TEXT span (official: thinking_steps 32, gen_length 4096);
    build_image_inputs(thinking_sequences (batch, seq)) -> inputs of the image call (the caller cuts the
    reasoning at its end marker and appends the image header and masked IMAGE positions).
    Returns `ThinkingOutput` with both calls' outputs and stats.
    """
    thinking = sampler(**thinking_inputs.as_kwargs(), config=thinking_config, generator=generator)
    image_inputs = build_image_inputs(thinking.sequences)
    image = sampler(**image_inputs.as_kwargs(), config=image_config, generator=generator)
    return ThinkingOutput(thinking=thinking, image=image)
