"""The output dataclass shared by every unimask pipeline."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from diffusers.utils import BaseOutput


@dataclass
class UniPipelineOutput(BaseOutput):
    """Result of a pipeline call, one entry per output sample (prompt x ``num_images_per_prompt``).

    task: the task that ran (see `unimask.pipelines.task_routing.PIPELINE_TASKS`).
    texts: the generated text of each sample (answer, chat reply, thinking text or interleaved text
        joined), None where the task produces no text.
    images: per sample, a list of its generated images in order, as PIL images (``output_type="pil"``),
        (H, W, 3) float arrays in [0, 1] ("np"), (3, H, W) float tensors in [0, 1] ("pt") or (h, w)
        int64 token grids ("tokens"); an empty list where the task produces no image.
    parts: per sample, the ordered output: ``str`` for text and an image (same type as in ``images``)
        for each image -- the interleaved result; other tasks give [text] or [image].
    token_ids: per sample, the full generated sequence, (seq,) int64 (prompt included, padding removed).
    stats: sampling statistics: ``nfe`` {stage: forward passes}, ``stages`` {stage: SamplingStats dict or
        decoder figures}, ``time_s`` {stage: seconds}, ``total_time_s``.
    """

    task: str
    texts: list[str | None]
    images: list[list[Any]]
    parts: list[list[Any]]
    token_ids: list[torch.Tensor]
    stats: dict[str, Any] = field(default_factory=dict)
