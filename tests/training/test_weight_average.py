"""average_pretrained: the uniform mean of saved models' weights, written atomically, with clear errors."""

import pytest
import torch

from unimask.training.weight_average import average_pretrained
from unimask.unimodal import LLaDA2MoeConfig, LLaDA2MoeModelLM
from unimask.unimodal.tiny_checkpoint import tiny_backbone_config_dict


def _config(**changes) -> LLaDA2MoeConfig:
    official = {**tiny_backbone_config_dict(), **changes}
    skipped = ("architectures", "model_type", "torch_dtype")
    return LLaDA2MoeConfig(**{k: v for k, v in official.items() if k not in skipped})


def _saved(folder, seed: int, **changes) -> LLaDA2MoeModelLM:
    torch.manual_seed(seed)
    model = LLaDA2MoeModelLM(_config(**changes)).eval()
    with torch.no_grad():
        for layer in model.model.layers:
            if hasattr(layer.mlp, "gate"):
                layer.mlp.gate.expert_bias.normal_(0.0, 0.05)
    model.save_pretrained(folder)
    return model


def test_average_is_the_mean_of_every_weight_and_loads_as_the_same_model(tmp_path):
    models = [_saved(tmp_path / name, seed) for name, seed in (("a", 0), ("b", 1), ("c", 2))]
    out = average_pretrained(LLaDA2MoeModelLM, [tmp_path / "a", tmp_path / "b", tmp_path / "c"], tmp_path / "mean")
    averaged = LLaDA2MoeModelLM.from_pretrained(out).state_dict()
    states = [model.state_dict() for model in models]
    assert averaged.keys() == states[0].keys()
    for name, tensor in averaged.items():
        torch.testing.assert_close(tensor, sum(state[name] for state in states) / 3, msg=name)
    # The mean differs from each model: nothing was copied from the first one.
    assert not torch.equal(averaged["model.word_embeddings.weight"], states[0]["model.word_embeddings.weight"])
    assert (out / "model.safetensors").is_file()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no staging folder left


def test_average_replaces_an_existing_output(tmp_path):
    _saved(tmp_path / "a", 0)
    _saved(tmp_path / "b", 1)
    (tmp_path / "mean").mkdir()
    (tmp_path / "mean" / "stale.txt").write_text("old")
    average_pretrained(LLaDA2MoeModelLM, [tmp_path / "a", tmp_path / "b"], tmp_path / "mean")
    assert not (tmp_path / "mean" / "stale.txt").exists()
    assert (tmp_path / "mean" / "config.json").is_file()


def test_average_refuses_one_model_and_other_architectures(tmp_path):
    _saved(tmp_path / "a", 0)
    with pytest.raises(ValueError, match="folders: need at least two"):
        average_pretrained(LLaDA2MoeModelLM, [tmp_path / "a"], tmp_path / "mean")
    _saved(tmp_path / "wide", 1, routed_scaling_factor=1.0)
    with pytest.raises(ValueError, match=r"folders: .*another config.*routed_scaling_factor"):
        average_pretrained(LLaDA2MoeModelLM, [tmp_path / "a", tmp_path / "wide"], tmp_path / "mean")
    assert not (tmp_path / "mean").exists()
