"""Fixtures for the pipeline tests: a tiny official-layout checkpoint, its pipeline, a scripted backbone."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from unimask.pipelines import UniPipeline
from unimask.pipelines.tiny_uni_checkpoint import write_tiny_official_checkpoint


@pytest.fixture(scope="session", autouse=True)
def _one_thread():
    """Tiny models run far faster on one thread when the CPU is shared (no oversubscription)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory):
    """A tiny random checkpoint in the official LLaDA2.0-Uni directory layout."""
    return write_tiny_official_checkpoint(tmp_path_factory.mktemp("tiny_uni"))


@pytest.fixture(scope="session")
def pipe(tiny_root) -> UniPipeline:
    """The tiny pipeline; tests must not modify it (build a new one with from_pipe instead)."""
    pipeline = UniPipeline.from_pretrained(tiny_root)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


@pytest.fixture()
def image() -> np.ndarray:
    """A 40 x 48 RGB uint8 test image."""
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(40, 48, 3), dtype=np.uint8)


class ScriptedBackbone(nn.Module):
    """Wraps a backbone and pushes its logits towards a script, so a test can force what the text says.

    scripts[k] is the text written after the assistant tag (k = 0) or after the k-th ``<|/image|>`` of the
    answer: its i-th entry is the favoured id at offset i, end-of-sequence after the script ends (the last
    script is reused). Image positions keep the real logits (their vocabulary excludes the scripted ids).
    """

    def __init__(self, backbone: nn.Module, layout, scripts: list[list[int]]):
        super().__init__()
        self.inner = backbone
        self.config = backbone.config
        self.layout = layout
        self.scripts = scripts

    def forward(self, input_ids, attention_mask=None, position_ids=None, past_key_values=None, use_cache=False, **kwargs):
        output = self.inner(
            input_ids, attention_mask=attention_mask, position_ids=position_ids,
            past_key_values=past_key_values, use_cache=use_cache, **kwargs,
        )
        if past_key_values is not None:
            raise AssertionError("ScriptedBackbone expects full-sequence forwards (no SPRINT cache)")
        logits = output.logits
        assistant = self.layout.role_assistant_ids[-1]
        for row, ids in enumerate(input_ids.tolist()):
            starts = [i for i, token in enumerate(ids) if token == assistant]
            if not starts:
                continue
            anchor, closed = starts[-1] + 1, 0
            for position in range(anchor, len(ids)):
                script = self.scripts[min(closed, len(self.scripts) - 1)]
                offset = position - anchor
                target = script[offset] if offset < len(script) else self.layout.eos_id
                logits[row, position, target] += 100.0
                if ids[position] == self.layout.image_end_id:
                    anchor, closed = position + 1, closed + 1
        return output


@pytest.fixture()
def scripted_pipe(pipe):
    """Build a pipeline whose backbone follows ``scripts`` (see `ScriptedBackbone`)."""

    def build(scripts: list[list[int]]) -> UniPipeline:
        stub = ScriptedBackbone(pipe.backbone, pipe.token_layout, scripts)
        return UniPipeline.from_pipe(pipe, backbone=stub)

    return build
