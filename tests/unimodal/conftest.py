"""Shared fixtures of the backbone tests: tiny configs, models and official-layout checkpoints."""

from __future__ import annotations

import pytest
import torch

from unimask.unimodal import LLaDA2MoeConfig, LLaDA2MoeModelLM
from unimask.unimodal.tiny_checkpoint import tiny_backbone_config_dict, write_tiny_official_backbone


def config_from_official_dict(official: dict) -> LLaDA2MoeConfig:
    """Build an `LLaDA2MoeConfig` from a config.json-shaped dict."""
    kwargs = {k: v for k, v in official.items() if k not in ("architectures", "model_type", "torch_dtype")}
    return LLaDA2MoeConfig(**kwargs)


@pytest.fixture(autouse=True)
def single_torch_thread():
    """Run these tiny-model tests on one intra-op thread (restored afterwards).

    On a busy 2-core machine, OpenMP threads of such small ops mostly wait for each other:
    one thread measured ~100x faster per step here.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def tiny_backbone_config() -> LLaDA2MoeConfig:
    """Hidden 32, 2 layers (layer 0 dense, layer 1 MoE: 8 experts, top-2, 4 groups, 1 shared), vocab 512."""
    return config_from_official_dict(tiny_backbone_config_dict())


@pytest.fixture
def tiny_backbone(tiny_backbone_config) -> LLaDA2MoeModelLM:
    """A seeded random tiny backbone in eval mode, fp32, with non-zero expert biases."""
    torch.manual_seed(0)
    model = LLaDA2MoeModelLM(tiny_backbone_config).eval()
    with torch.no_grad():
        for layer in model.model.layers:
            if hasattr(layer.mlp, "gate"):
                layer.mlp.gate.expert_bias.normal_(0.0, 0.05)
    return model


@pytest.fixture
def make_tiny_backbone():
    """Factory: ``make_tiny_backbone(**config_json_overrides) -> LLaDA2MoeModelLM`` (seed 0, eval)."""

    def make(**overrides) -> LLaDA2MoeModelLM:
        torch.manual_seed(0)
        return LLaDA2MoeModelLM(config_from_official_dict(tiny_backbone_config_dict(**overrides))).eval()

    return make


@pytest.fixture
def tiny_checkpoint_dir(tmp_path):
    """A tiny random backbone checkpoint in the official layout (2 shards + index)."""
    return write_tiny_official_backbone(tmp_path / "backbone", seed=1, num_shards=2)
