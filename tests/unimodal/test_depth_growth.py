"""Depth growth: a grown backbone computes the old one's logits, and its new layers can learn."""

import pytest
import torch

from unimask.unimodal import LLaDA2MoeModelLM
from unimask.unimodal.depth_growth import check_grow_after, grow_backbone_depth
from unimask.unimodal.tiny_checkpoint import tiny_backbone_config_dict

from .conftest import config_from_official_dict


def _model(num_layers: int, seed: int) -> LLaDA2MoeModelLM:
    torch.manual_seed(seed)
    model = LLaDA2MoeModelLM(config_from_official_dict(tiny_backbone_config_dict(num_hidden_layers=num_layers))).eval()
    with torch.no_grad():
        for layer in model.model.layers:
            if hasattr(layer.mlp, "gate"):
                layer.mlp.gate.expert_bias.normal_(0.0, 0.05)
    return model


def test_grown_model_keeps_the_logits_and_copies_the_layer_before():
    source = _model(3, seed=0)
    grown = grow_backbone_depth(source, _model(5, seed=1), [1, 2])
    ids = torch.randint(0, 512, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(grown(input_ids=ids).logits, source(input_ids=ids).logits, rtol=0, atol=1e-5)
    # Layers 0, 1, [copy of 1], 2, [copy of 2]: the copies share every weight but their residual outputs.
    new_layer, copied = grown.model.layers[2], source.model.layers[1]
    torch.testing.assert_close(new_layer.attention.query_key_value.weight, copied.attention.query_key_value.weight)
    torch.testing.assert_close(new_layer.mlp.gate.expert_bias, copied.mlp.gate.expert_bias)
    assert not new_layer.attention.dense.weight.any() and not new_layer.mlp.experts.down_proj.any()
    assert not new_layer.mlp.shared_experts.down_proj.weight.any()
    torch.testing.assert_close(grown.model.layers[3].attention.dense.weight, source.model.layers[2].attention.dense.weight)


def test_new_layers_get_gradients_from_the_first_step():
    grown = grow_backbone_depth(_model(2, seed=0), _model(3, seed=1), [1]).train()
    ids = torch.randint(0, 512, (2, 16), generator=torch.Generator().manual_seed(0))
    grown(input_ids=ids).logits.logsumexp(-1).mean().backward()
    new_layer = grown.model.layers[2]
    assert new_layer.attention.dense.weight.grad.abs().sum() > 0
    assert new_layer.mlp.shared_experts.down_proj.weight.grad.abs().sum() > 0


def test_a_dense_layer_cannot_be_copied_into_a_moe_position():
    with pytest.raises(ValueError, match="same kind"):
        grow_backbone_depth(_model(2, seed=0), _model(3, seed=1), [0])


def test_layer_count_must_fit():
    with pytest.raises(ValueError, match="needs 2 \\+ 1 layers"):
        grow_backbone_depth(_model(2, seed=0), _model(4, seed=1), [1])


@pytest.mark.parametrize("value", [[], [2], [-1], [1, 1], "1", [True], 1])
def test_bad_grow_after_is_named(value):
    with pytest.raises(ValueError, match="grow_after"):
        check_grow_after(value, 2)


def test_grow_after_is_sorted():
    assert check_grow_after((3, 1), 4) == [1, 3]
