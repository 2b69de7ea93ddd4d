"""Official checkpoint layout: strict loading, save/load round trip, config keys, presets."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from unimask.unimodal import LLaDA2MoeConfig, LLaDA2MoeModelLM
from unimask.unimodal.checkpoint_layout import checkpoint_tensor_shapes, official_backbone_shapes
from unimask.unimodal.configuration_llada2_moe import OFFICIAL_CONFIG_KEYS
from unimask.unimodal.tiny_checkpoint import write_tiny_official_backbone
from unimask.presets import read_component_preset


def read_all_tensors(directory: Path) -> dict[str, torch.Tensor]:
    tensors = {}
    for file in sorted(directory.glob("*.safetensors")):
        tensors.update(load_file(str(file)))
    return tensors


def test_tiny_checkpoint_has_official_layout(tiny_checkpoint_dir):
    config = json.loads((tiny_checkpoint_dir / "config.json").read_text())
    assert set(OFFICIAL_CONFIG_KEYS) <= set(config)
    assert config["architectures"] == ["LLaDA2MoeModelLM"] and config["model_type"] == "llada2_moe"
    assert "auto_map" not in config
    index = json.loads((tiny_checkpoint_dir / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == {"model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"}
    names = set(checkpoint_tensor_shapes(tiny_checkpoint_dir))
    assert "model.layers.1.mlp.experts.7.down_proj.weight" in names
    assert "model.layers.1.mlp.gate.expert_bias" in names
    assert "model.layers.0.mlp.gate_proj.weight" in names and "lm_head.weight" in names


def test_loads_strictly_with_every_tensor_in_place(tiny_checkpoint_dir):
    model, info = LLaDA2MoeModelLM.from_pretrained(tiny_checkpoint_dir, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    stored = read_all_tensors(tiny_checkpoint_dir)
    moe = model.model.layers[1].mlp
    width = model.config.moe_intermediate_size
    for expert in range(8):
        prefix = f"model.layers.1.mlp.experts.{expert}"
        assert torch.equal(moe.experts.gate_up_proj[expert, :width], stored[f"{prefix}.gate_proj.weight"])
        assert torch.equal(moe.experts.gate_up_proj[expert, width:], stored[f"{prefix}.up_proj.weight"])
        assert torch.equal(moe.experts.down_proj[expert], stored[f"{prefix}.down_proj.weight"])
    assert torch.equal(moe.gate.expert_bias, stored["model.layers.1.mlp.gate.expert_bias"])
    assert torch.equal(model.model.word_embeddings.weight, stored["model.word_embeddings.weight"])
    assert torch.equal(model.lm_head.weight, stored["lm_head.weight"])
    assert not model.training


def _rewrite(directory: Path, edit) -> None:
    tensors = read_all_tensors(directory)
    for file in directory.glob("*.safetensors"):
        file.unlink()
    (directory / "model.safetensors.index.json").unlink()
    edit(tensors)
    save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda t: t.update({"model.layers.0.attention.extra.weight": torch.zeros(2)}),
         r"unexpected keys: \['model.layers.0.attention.extra.weight'\]"),
        (lambda t: t.pop("model.layers.1.attention.dense.weight"),
         r"missing keys: \['model.layers.1.attention.dense.weight'\]"),
        (lambda t: t.pop("model.layers.1.mlp.experts.5.up_proj.weight"),
         r"missing keys: \['model.layers.1.mlp.experts.5.up_proj.weight'\]"),
        (lambda t: t.update({"model.norm.weight": torch.ones(31)}),
         r"model.norm.weight: checkpoint \(31,\) vs expected \(32,\)"),
    ],
)
def test_mismatched_checkpoint_raises_listing_keys(tmp_path, edit, message):
    directory = write_tiny_official_backbone(tmp_path / "bad")
    _rewrite(directory, edit)
    with pytest.raises(ValueError, match=message):
        LLaDA2MoeModelLM.from_pretrained(directory)


def test_save_load_round_trip_writes_official_names(tiny_backbone, tmp_path):
    tiny_backbone.save_pretrained(tmp_path / "saved")
    saved = read_all_tensors(tmp_path / "saved")
    assert set(saved) == set(official_backbone_shapes(tiny_backbone.config.to_dict()))
    config = json.loads((tmp_path / "saved" / "config.json").read_text())
    assert config["architectures"] == ["LLaDA2MoeModelLM"] and config["model_type"] == "llada2_moe"
    reloaded = LLaDA2MoeModelLM.from_pretrained(tmp_path / "saved")
    ids = torch.randint(0, 512, (2, 9))
    with torch.no_grad():
        assert torch.equal(tiny_backbone(ids).logits, reloaded(ids).logits)
    assert torch.equal(
        tiny_backbone.model.layers[1].mlp.gate.expert_bias, reloaded.model.layers[1].mlp.gate.expert_bias
    )


def test_loads_in_bfloat16(tiny_checkpoint_dir):
    model = LLaDA2MoeModelLM.from_pretrained(tiny_checkpoint_dir, dtype=torch.bfloat16)
    assert model.model.layers[1].mlp.experts.gate_up_proj.dtype == torch.bfloat16
    with torch.no_grad():
        out = model(torch.randint(0, 512, (1, 16)))
    assert out.logits.dtype == torch.float32 and torch.isfinite(out.logits).all()


def test_config_round_trips_and_validates(tmp_path):
    config = LLaDA2MoeConfig()
    assert (config.rotary_dim, config.num_experts, config.n_group) == (64, 256, 8)
    config.save_pretrained(tmp_path)
    assert LLaDA2MoeConfig.from_pretrained(tmp_path).to_dict() == config.to_dict()
    with pytest.raises(ValueError, match="num_experts=10 must be a multiple of n_group=4"):
        LLaDA2MoeConfig(num_experts=10, n_group=4)
    expected = r"num_experts_per_tok=9 must be in \[1, topk_group \* experts_per_group = 8\]"
    with pytest.raises(ValueError, match=expected):
        LLaDA2MoeConfig(num_experts=16, n_group=4, topk_group=2, num_experts_per_tok=9)
    with pytest.raises(ValueError, match="rope_scaling"):
        LLaDA2MoeConfig(rope_scaling={"rope_type": "linear", "factor": 2.0})


@pytest.mark.parametrize("name", ["llada2-uni-16b", "tiny"])
def test_backbone_presets_are_official_config_dicts(name):
    preset = read_component_preset("backbone", name)
    assert set(OFFICIAL_CONFIG_KEYS) <= set(preset)
    skip = ("architectures", "model_type", "torch_dtype")
    config = LLaDA2MoeConfig(**{k: v for k, v in preset.items() if k not in skip})
    if name == "llada2-uni-16b":
        published = dict(vocab_size=173568, hidden_size=2048, intermediate_size=5120, num_hidden_layers=20,
                         num_attention_heads=16, num_key_value_heads=4, head_dim=128, rope_theta=600000,
                         max_position_embeddings=8192, num_experts=256, num_experts_per_tok=8, n_group=8,
                         topk_group=4, routed_scaling_factor=2.5, moe_intermediate_size=512,
                         first_k_dense_replace=1, pad_token_id=156892, image_token_offset=157184)
        assert {key: getattr(config, key) for key in published} == published
        assert config.rotary_dim == 64
