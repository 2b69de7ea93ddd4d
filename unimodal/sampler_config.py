"""Options, statistics and output of the masked-diffusion sampler.

`SamplerConfig` carries every sampling option with the defaults of the public LLaDA2.0-Uni examples
(reference page "Sampler defaults"); names follow diffusers' `LLaDA2Pipeline` /
`BlockRefinementScheduler` where the meaning is the same (`num_inference_steps`, `minimal_topk`,
`threshold`, `temperature`, `top_k`, `top_p`, `guidance_scale`, `guidance_rescale`) and the official
SPRINT names otherwise (`use_sprint`, `keep_ratio`, `text_keep_ratio`, `image_keep_ratio`,
`cache_warmup_steps`, `confidence_alpha`). Guidance scales are zero-based (0 = off), see `guidance.py`.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass, field

import numpy as np
import torch
from diffusers.utils import BaseOutput

from unimask.unimodal.remasking import REMASKING_STRATEGIES
from unimask.unimodal.sampler_schedule import SCHEDULES


@dataclass
class SamplerConfig:
    """All sampling options; validated on construction (`ValueError` naming the option and allowed range).

    block_length: tokens per block, blocks aligned from index 0 of the whole sequence (prompt included).
    num_inference_steps: denoising steps per block (official `steps`).
    schedule: `fixed` (official quota, threshold rule) or `adaptive` (SPRINT), see `sampler_schedule.py`.
    remasking: confidence strategy, one of `low_confidence`, `top_k_margin`, `neg_entropy`, `random`.
    threshold: candidate probability above which positions are accepted in batch, in (0, 1]; 1.0 = off.
    minimal_topk: least positions committed per step while any are masked (>= 1).
    temperature / top_k / top_p: candidate sampling (temperature 0 = greedy).
    eos_early_stop: once EOS is committed in a TEXT span with nothing masked before it, fill the rest
        of that span with EOS (so its remaining blocks cost no forward pass).
    guidance_scale: simple CFG strength (0 = off; official cfg_scale - 1).
    text_guidance_scale / image_guidance_scale: three-way editing CFG (0 = off; text = official
        cfg_text_scale - 1, image = official cfg_image_scale).
    guidance_rescale: std rescale of guided logits in [0, 1] (official cfg_rescale; 0.7 in the official
        image generation, 0 = off here).
    use_sprint: reuse the prefix KV cache built at step `cache_warmup_steps - 1` of each block, pruned by
        `keep_ratio` / `text_keep_ratio` / `image_keep_ratio` (None -> keep_ratio) with score weight
        `confidence_alpha`. Not used with three-way guidance (recorded in the stats).
    """

    block_length: int = 32
    num_inference_steps: int = 32
    schedule: str = "fixed"
    remasking: str = "low_confidence"
    threshold: float = 0.95
    minimal_topk: int = 1
    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None
    eos_early_stop: bool = True
    guidance_scale: float = 1.0
    text_guidance_scale: float = 3.0
    image_guidance_scale: float = 0.0
    guidance_rescale: float = 0.0
    use_sprint: bool = False
    cache_warmup_steps: int = 1
    keep_ratio: float = 0.5
    text_keep_ratio: float | None = None
    image_keep_ratio: float | None = None
    confidence_alpha: float = 0.5

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise `ValueError` for any option outside its allowed values (wrong types, NaN and inf included)."""
        for name in ("block_length", "num_inference_steps", "minimal_topk", "cache_warmup_steps"):
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise ValueError(f"`{name}` must be an integer >= 1, got {value!r}.")
        if self.top_k is not None and not _is_int(self.top_k):
            raise ValueError(f"`top_k` must be None or an integer >= 1, got {self.top_k!r}.")
        for name in ("eos_early_stop", "use_sprint"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"`{name}` must be True or False, got {getattr(self, name)!r}.")
        for name in (
            "threshold", "temperature", "top_p", "guidance_scale", "text_guidance_scale", "image_guidance_scale",
            "guidance_rescale", "keep_ratio", "text_keep_ratio", "image_keep_ratio", "confidence_alpha",
        ):
            value = getattr(self, name)
            optional = name in ("top_p", "text_keep_ratio", "image_keep_ratio")
            if not (value is None and optional) and not _is_finite_number(value):
                raise ValueError(f"`{name}` must be a finite number{' or None' if optional else ''}, got {value!r}.")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"`schedule` must be one of {SCHEDULES}, got {self.schedule!r}.")
        if self.remasking not in REMASKING_STRATEGIES:
            raise ValueError(f"`remasking` must be one of {REMASKING_STRATEGIES}, got {self.remasking!r}.")
        if not 0.0 < self.threshold <= 1.0:
            raise ValueError(f"`threshold` must be in (0, 1], got {self.threshold}.")
        if self.temperature < 0.0:
            raise ValueError(f"`temperature` must be >= 0, got {self.temperature}.")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"`top_k` must be None or >= 1, got {self.top_k}.")
        if self.top_p is not None and not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"`top_p` must be None or in (0, 1], got {self.top_p}.")
        for name in ("guidance_scale", "text_guidance_scale", "image_guidance_scale"):
            if getattr(self, name) < 0.0:
                raise ValueError(f"`{name}` must be >= 0 (0 = no guidance), got {getattr(self, name)}.")
        if not 0.0 <= self.guidance_rescale <= 1.0:
            raise ValueError(f"`guidance_rescale` must be in [0, 1], got {self.guidance_rescale}.")
        for name in ("keep_ratio", "text_keep_ratio", "image_keep_ratio"):
            value = getattr(self, name)
            if value is not None and not 0.0 < value <= 1.0:
                raise ValueError(f"`{name}` must be in (0, 1], got {value}.")
        if not 0.0 <= self.confidence_alpha <= 1.0:
            raise ValueError(f"`confidence_alpha` must be in [0, 1], got {self.confidence_alpha}.")

    @classmethod
    def sprint(cls, **overrides) -> "SamplerConfig":
        """The public SPRINT settings: prefix cache, adaptive schedule, threshold 0.93, keep_ratio 0.5."""
        options = dict(use_sprint=True, schedule="adaptive", threshold=0.93, keep_ratio=0.5, cache_warmup_steps=1)
        options.update(overrides)
        return cls(**options)

    def replace(self, **changes) -> "SamplerConfig":
        """A validated copy with `changes` applied."""
        return dataclasses.replace(self, **changes)

    @property
    def resolved_text_keep_ratio(self) -> float:
        """`text_keep_ratio`, or `keep_ratio` when unset."""
        return self.keep_ratio if self.text_keep_ratio is None else self.text_keep_ratio

    @property
    def resolved_image_keep_ratio(self) -> float:
        """`image_keep_ratio`, or `keep_ratio` when unset."""
        return self.keep_ratio if self.image_keep_ratio is None else self.image_keep_ratio


def _is_int(value) -> bool:
    """An int (numpy ints too) that is not a bool (`True` would otherwise pass as 1)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def _is_finite_number(value) -> bool:
    """A finite real number (numpy scalars too) that is not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_)) and math.isfinite(value)


def check_gen_length(gen_length: int, block_length: int) -> None:
    """Raise `ValueError` unless gen_length >= 1 and gen_length % block_length == 0."""
    if not _is_int(gen_length) or gen_length < 1 or gen_length % block_length != 0:
        raise ValueError(
            f"`gen_length` must be a positive multiple of `block_length`={block_length}, got {gen_length!r}."
        )


@dataclass
class SamplingStats:
    """What one sampler call cost.

    nfe: forward evaluations, one per guidance branch per step (a simple-CFG step counts 2, a three-way
    step 3), independent of the batch size. model_calls: actual calls of the model (branches are batched).
    denoising_steps: steps taken over all blocks. tokens_committed: positions committed by the schedule,
    summed over the batch (EOS fill not included, see eos_filled). cache_builds / cache_reuses: SPRINT
    prefix caches built and forward passes that reused one; cache_prunes: caches that were pruned;
    prefix_entries_kept / prefix_entries_dropped: valid prefix entries after pruning, summed over rows.
    fallback_reasons: features requested but not applied, and why. wall_time_s: seconds for the call.
    """

    batch_size: int = 0
    nfe: int = 0
    model_calls: int = 0
    denoising_steps: int = 0
    blocks_decoded: int = 0
    blocks_skipped: int = 0
    tokens_committed: int = 0
    eos_filled: int = 0
    cache_builds: int = 0
    cache_reuses: int = 0
    cache_prunes: int = 0
    prefix_entries_kept: int = 0
    prefix_entries_dropped: int = 0
    fallback_reasons: list[str] = field(default_factory=list)
    wall_time_s: float = 0.0

    @property
    def tokens_per_step(self) -> float:
        """Average positions committed per denoising step per sequence."""
        return self.tokens_committed / max(1, self.denoising_steps * max(1, self.batch_size))

    def as_dict(self) -> dict:
        """Plain-dict view (for JSON), including `tokens_per_step`."""
        return {**dataclasses.asdict(self), "tokens_per_step": self.tokens_per_step}


@dataclass
class SamplerOutput(BaseOutput):
    """sequences: (batch, seq) int64, the input with every generated position filled; stats: `SamplingStats`."""

    sequences: torch.LongTensor
    stats: SamplingStats
