"""The backbone stage's answer_full_mask_rate: understanding answers trained from the all-masked state."""

import pytest
import torch

from unimask.config import ConfigError, from_mapping
from unimask.training.recipe import TrainRecipe
from unimask.training.stage_backbone import _all_text_responses
from unimask.training.stages import get_stage

MODEL = {"preset": "tiny", "vocab_size": 64, "image_token_offset": 32, "hidden_size": 32, "intermediate_size": 64,
         "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 16,
         "num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 16, "n_group": 1, "topk_group": 1}


def _stage(tmp_path, **options):
    recipe = from_mapping(TrainRecipe, {
        "stage": "backbone", "out_dir": str(tmp_path), "model": MODEL,
        "data": {"shards": ["unused"], "token_budget": 24}, "micro_batch_size": 2,
        "stage_options": {"mask_token_id": 1, **options},
    })
    return get_stage("backbone")(recipe)


def _samples():
    answer = {"input_ids": [5, 6, 7, 8, 9, 10, 11], "response_start": 4}  # prompt 4, text answer 3
    image = {"input_ids": [5, 6, 40, 41, 42, 43], "response_start": 2}  # an image response
    interleaved = {"input_ids": [5, 6, 12, 40, 41, 13], "response_start": 2}  # text and codes
    return [{"__key__": str(i), "json": meta} for i, meta in enumerate([answer, image, interleaved, answer])]


def test_answer_positions_cover_only_all_text_responses(tmp_path):
    batch = _stage(tmp_path).make_batch(_samples())
    answers = _all_text_responses(batch["maskable"], batch["modality"], batch["document_ids"])
    # Exactly the two text answers' 3 positions each are marked, and all of them are maskable.
    assert int(answers.sum()) == 6
    assert bool((batch["maskable"] | ~answers).all())
    assert bool((batch["input_ids"][answers] < 32).all())


def test_rate_one_masks_every_answer_position(tmp_path):
    stage = _stage(tmp_path, answer_full_mask_rate=1.0)
    batch = stage.make_batch(_samples())
    seen = {}

    def capture(module, args, kwargs):
        seen["ids"] = (args[0] if args else kwargs["input_ids"]).clone()

    model = stage.build_model()
    model.register_forward_pre_hook(capture, with_kwargs=True)
    torch.manual_seed(0)
    loss, _ = stage.loss(model, batch)
    assert torch.isfinite(loss)
    answers = _all_text_responses(batch["maskable"], batch["modality"], batch["document_ids"])
    assert int(answers.sum()) == 6
    assert bool((seen["ids"][answers] == 1).all())
    assert _stage(tmp_path)._forced_answers(batch) is None


@pytest.mark.parametrize("options", [{"answer_full_mask_rate": 1.5}, {"answer_full_mask_rate": True},
                                     {"answer_full_mask_rate": 0.5, "objective": "block"}])
def test_bad_answer_full_mask_rate_raises(tmp_path, options):
    with pytest.raises(ConfigError, match="answer_full_mask_rate"):
        _stage(tmp_path, **options)
