"""The backbone stage's grow_after: continue a saved backbone with more layers, starting from its function."""

import pytest
import torch

from unimask.config import ConfigError, from_mapping
from unimask.training.recipe import TrainRecipe
from unimask.training.stages import get_stage

MODEL = {"preset": "tiny", "vocab_size": 64, "image_token_offset": 32, "hidden_size": 32, "intermediate_size": 64,
         "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 16,
         "num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 16, "n_group": 1, "topk_group": 1,
         "first_k_dense_replace": 1}


def _stage(tmp_path, num_layers, **options):
    recipe = from_mapping(TrainRecipe, {
        "stage": "backbone", "out_dir": str(tmp_path / "run"), "model": {**MODEL, "num_hidden_layers": num_layers},
        "data": {"shards": ["unused"], "token_budget": 24}, "micro_batch_size": 2,
        "stage_options": {"mask_token_id": 1, **options},
    })
    return get_stage("backbone")(recipe)


@pytest.fixture
def saved_backbone(tmp_path):
    """A random 2-layer backbone of the recipe's kind saved in the official layout; returns (folder, model)."""
    torch.manual_seed(0)
    model = _stage(tmp_path, 2).build_model().eval()
    model.save_pretrained(tmp_path / "init")
    return tmp_path / "init", model


def test_grown_stage_model_starts_as_the_init_model(tmp_path, saved_backbone):
    folder, source = saved_backbone
    model = _stage(tmp_path, 3, init=str(folder), grow_after=[1]).build_model().eval()
    assert len(model.model.layers) == 3
    ids = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, source(input_ids=ids).logits, rtol=0, atol=1e-5)


def test_grow_after_errors_name_the_option(tmp_path, saved_backbone):
    folder, _ = saved_backbone
    with pytest.raises(ConfigError, match="grow_after grows the model of stage_options.init"):
        _stage(tmp_path, 3, grow_after=[1])
    with pytest.raises(ConfigError, match="model.num_hidden_layers must be 3, got 4"):
        _stage(tmp_path, 4, init=str(folder), grow_after=[1])
    with pytest.raises(ConfigError, match="stage_options.grow_after must be a non-empty list of layer indices in \\[0, 2\\)"):
        _stage(tmp_path, 3, init=str(folder), grow_after=[2])
    with pytest.raises(ConfigError, match="same kind"):
        _stage(tmp_path, 3, init=str(folder), grow_after=[0]).build_model()
