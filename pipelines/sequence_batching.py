"""Turn built sequences (`SequenceSpec`) into one batched sampler call's tensors, and back.

Rows are right-padded (the sampler's preferred padding: block boundaries stay aligned from each row's
position 0, so a padded row decodes as it would alone). Unconditional CFG rows are aligned as the
sampler requires: each row's unconditional prompt (the unconditional spec up to its first generated
position) is right-aligned against the conditional row's first generated position and left-padded;
from there on the row mirrors the conditional one (`build_unconditional_inputs`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from unimask.tokenizers.sequence_builders import SequenceSpec
from unimask.tokenizers.token_layout import TokenKind, TokenLayout
from unimask.unimodal.sampler_inputs import SamplerInputs, build_unconditional_inputs

GUIDANCE_MODES = ("none", "simple", "three_way")


def _unconditional_prompt(spec: SequenceSpec, name: str) -> torch.Tensor:
    generated = spec.generated_positions()
    if not generated:
        raise ValueError(f"{name} sequence has no position to generate")
    return torch.tensor(spec.input_ids[: generated[0]], dtype=torch.long)


def specs_to_sampler_inputs(specs: Sequence[SequenceSpec], layout: TokenLayout, guidance: str) -> SamplerInputs:
    """Batch ``specs`` for one sampler call.

    guidance: "none" (conditional rows only), "simple" (adds every spec's ``uncond``) or "three_way"
    (adds ``uncond`` as the no-text branch and ``uncond_image`` as the no-image branch).
    Returns `SamplerInputs` with (batch, max_len) tensors: ``input_ids`` (pad id after each row),
    ``token_kinds`` int8, ``padding_mask`` bool, and the aligned unconditional branches.
    Raises ``ValueError`` when a spec lacks the unconditional sequence the guidance needs.
    """
    if guidance not in GUIDANCE_MODES:
        raise ValueError(f"guidance={guidance!r} is unknown; allowed: {GUIDANCE_MODES}")
    if not specs:
        raise ValueError("specs must not be empty")
    length = max(len(spec) for spec in specs)
    batch = len(specs)
    input_ids = torch.full((batch, length), layout.pad_id, dtype=torch.long)
    token_kinds = torch.full((batch, length), int(TokenKind.PROMPT), dtype=torch.int8)
    padding_mask = torch.zeros((batch, length), dtype=torch.bool)
    for row, spec in enumerate(specs):
        input_ids[row, : len(spec)] = torch.tensor(spec.input_ids, dtype=torch.long)
        token_kinds[row, : len(spec)] = torch.tensor(spec.token_kinds, dtype=torch.int8)
        padding_mask[row, : len(spec)] = True
    inputs = SamplerInputs(input_ids=input_ids, token_kinds=token_kinds, padding_mask=padding_mask)
    branches = {"none": (), "simple": ("uncond",), "three_way": ("uncond", "uncond_image")}[guidance]
    for branch in branches:
        prompts = []
        for row, spec in enumerate(specs):
            other = getattr(spec, branch)
            if other is None:
                raise ValueError(f"sequence {row} has no {branch} sequence, which {guidance} guidance needs")
            prompts.append(_unconditional_prompt(other, branch))
        ids, valid = build_unconditional_inputs(
            input_ids, padding_mask, prompts, mask_id=layout.mask_id, pad_id=layout.pad_id
        )
        if branch == "uncond":
            inputs.uncond_input_ids, inputs.uncond_padding_mask = ids, valid
        else:
            inputs.uncond_image_input_ids, inputs.uncond_image_padding_mask = ids, valid
    return inputs


def unpad_rows(sequences: torch.Tensor, specs: Sequence[SequenceSpec]) -> list[torch.Tensor]:
    """Each row of ``sequences: (batch, max_len)`` cut to its spec's length: list of (len_i,) int64 CPU."""
    return [sequences[row, : len(spec)].detach().cpu() for row, spec in enumerate(specs)]


def generated_text_ids(sequence: torch.Tensor, spec: SequenceSpec, layout: TokenLayout) -> list[int]:
    """The ids at ``spec``'s TEXT positions of ``sequence: (len,)``, cut at the first end-of-sequence."""
    ids = [int(sequence[p]) for p, kind in enumerate(spec.token_kinds) if kind == TokenKind.TEXT]
    return ids[: ids.index(layout.eos_id)] if layout.eos_id in ids else ids
