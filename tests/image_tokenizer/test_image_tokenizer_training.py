"""Training stages: SigLIP step lowers its loss, VQ training raises codebook usage, probe, SigLIP2 mapping."""

import pytest
import torch
from transformers import GlmImageVisionConfig, GlmImageVisionModel, Siglip2VisionConfig, Siglip2VisionModel

from unimask.tokenizers.image_tokenizer import encode_vision_features
from unimask.tokenizers.image_tokenizer_training import (
    ImageTokenizerTrainingConfig,
    build_siglip_stage,
    build_vq_stage,
    codebook_statistics,
    siglip_stage_loss,
    vq_stage_loss,
)
from unimask.tokenizers.semantic_probe import nearest_centroid_accuracy, semantic_probe
from unimask.tokenizers.siglip2_conversion import glm_vision_state_dict_from_siglip2

USAGE_FLOOR = 0.6  # fraction of the 64 codes used on a held-out batch of 256 tokens after training


def block_images(count: int, seed: int) -> torch.Tensor:
    """(count, 3, 64, 64) synthetic images: a 4 x 4 grid of 16 px blocks of random colours."""
    generator = torch.Generator().manual_seed(seed)
    blocks = torch.rand(count, 3, 4, 4, generator=generator) * 4 - 2
    return blocks.repeat_interleave(16, dim=2).repeat_interleave(16, dim=3)


def siglip_recipe(tmp_path, image_size: int = 32, **options):
    """A ``tokenizer_siglip`` recipe of the tiny defaults (byte captions need text_vocab_size >= 257)."""
    from unimask.training.recipe import DataSection, TrainRecipe

    return TrainRecipe(stage="tokenizer_siglip", out_dir=str(tmp_path), data=DataSection(shards=["unused"]),
                       model={"text_vocab_size": 300}, stage_options={"image_size": image_size, **options})


def frozen_visual(config: ImageTokenizerTrainingConfig) -> GlmImageVisionModel:
    visual = GlmImageVisionModel(config.vision_config())
    with torch.no_grad():
        visual.patch_embed.proj.weight.normal_(std=0.05)
    return visual


def test_siglip_step_lowers_loss_on_a_fixed_batch():
    config = ImageTokenizerTrainingConfig()
    model = build_siglip_stage(config)
    batch = {
        "pixel_values": block_images(8, seed=1),
        "text_ids": torch.randint(0, config.text_vocab_size, (8, 6)),
        "text_mask": torch.tensor([[1] * 6] * 4 + [[1] * 3 + [0] * 3] * 4),
    }
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    first_loss, metrics = siglip_stage_loss(model, batch)
    assert set(metrics) == {"siglip_loss", "logit_scale", "logit_bias", "retrieval_accuracy"}
    assert abs(metrics["logit_scale"] - 10.0) < 1e-4 and metrics["logit_bias"] == -10.0
    for _ in range(5):
        loss, _ = siglip_stage_loss(model, batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert model.visual.patch_embed.proj.weight.grad is not None  # the vision tower is trained
    final_loss, _ = siglip_stage_loss(model, batch)
    assert final_loss.item() < first_loss.item() - 0.05


def test_siglip_batch_validation():
    model = build_siglip_stage(ImageTokenizerTrainingConfig())
    with pytest.raises(ValueError, match="pixel_values"):
        siglip_stage_loss(model, {"pixel_values": torch.zeros(2, 3, 20, 32), "text_ids": torch.zeros(2, 4, dtype=torch.long)})
    with pytest.raises(ValueError, match="text_ids"):
        siglip_stage_loss(model, {"pixel_values": torch.zeros(2, 3, 32, 32), "text_ids": torch.zeros(3, 4, dtype=torch.long)})


@pytest.mark.parametrize("codebook_update", ["ema", "learnable"])
def test_vq_training_raises_codebook_usage_and_lowers_loss(codebook_update):
    config = ImageTokenizerTrainingConfig(codebook_update=codebook_update, ema_decay=0.8)
    model = build_vq_stage(config, frozen_visual(config))
    held_out = {"pixel_values": block_images(16, seed=99)}
    model.eval()
    _, before = vq_stage_loss(model, held_out)
    model.train()
    encoder_before = model.visual.blocks[0].mlp.fc1.weight.clone()
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    for step in range(30):
        loss, _ = vq_stage_loss(model, {"pixel_values": block_images(16, seed=step)})
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    _, after = vq_stage_loss(model, held_out)
    assert after["vq_loss"] < 0.5 * before["vq_loss"]
    assert after["codebook_usage"] >= USAGE_FLOOR > before["codebook_usage"]
    assert after["perplexity"] > before["perplexity"]
    assert after["quantized_cosine"] > before["quantized_cosine"]
    assert torch.equal(model.visual.blocks[0].mlp.fc1.weight, encoder_before)  # the encoder stays frozen

    # The trained stage becomes an inference tokenizer giving the same ids.
    tokenizer = model.to_tokenizer()
    with torch.no_grad():
        ids, _ = tokenizer.encode_pixel_values(held_out["pixel_values"])
        assert torch.equal(torch.stack(ids), model(held_out["pixel_values"]).ids)


def test_dead_codes_are_restarted():
    config = ImageTokenizerTrainingConfig(ema_decay=0.5, dead_code_threshold=0.2)
    model = build_vq_stage(config, frozen_visual(config))
    model.train()
    vq_stage_loss(model, {"pixel_values": block_images(4, seed=0)})
    for _ in range(3):
        _, metrics = vq_stage_loss(model, {"pixel_values": block_images(4, seed=0)})
    # Every code unused by a batch decays below the threshold within 3 steps and is restarted.
    assert metrics["dead_codes"] == 0.0
    assert (model.ema_cluster_size >= config.dead_code_threshold).all()


def test_codebook_statistics():
    stats = codebook_statistics(torch.tensor([0, 1, 2, 3]), 8)
    assert stats["codebook_usage"] == 0.5 and abs(stats["perplexity"] - 4.0) < 1e-5
    assert codebook_statistics(torch.zeros(10, dtype=torch.long), 8)["perplexity"] == pytest.approx(1.0)


def test_semantic_probe_on_labelled_images():
    config = ImageTokenizerTrainingConfig()
    model = build_vq_stage(config, frozen_visual(config))
    # Label = which of two colours fills the image; both feature kinds must separate them.
    colours = torch.tensor([[1.5, -1.5, 0.0], [-1.5, 0.0, 1.5]])
    labels = torch.tensor([0, 1] * 8)
    noise = 0.2 * torch.randn(16, 3, 64, 64)
    pixel_values = colours[labels].view(16, 3, 1, 1) + noise
    result = semantic_probe(model, pixel_values, labels)
    assert result["continuous_accuracy"] == 1.0 and result["quantized_accuracy"] >= 0.75
    assert nearest_centroid_accuracy(torch.eye(2), torch.tensor([0, 1]), torch.eye(2), torch.tensor([0, 1])) == 1.0


def test_config_validation():
    with pytest.raises(ValueError, match="codebook_update"):
        ImageTokenizerTrainingConfig(codebook_update="kmeans")
    with pytest.raises(ValueError, match="ema_decay"):
        ImageTokenizerTrainingConfig(ema_decay=1.0)


def test_siglip2_weights_map_onto_the_vision_tower():
    siglip2 = Siglip2VisionModel(
        Siglip2VisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, patch_size=16, num_patches=16)
    ).eval()
    visual = GlmImageVisionModel(
        GlmImageVisionConfig(
            depth=2, hidden_size=32, num_heads=2, intermediate_size=64, image_size=64, patch_size=16,
            hidden_act="gelu_pytorch_tanh", layer_norm_eps=siglip2.config.layer_norm_eps,
        )
    ).eval()
    visual.load_state_dict(glm_vision_state_dict_from_siglip2(siglip2.state_dict()), strict=True)
    image = torch.randn(1, 3, 64, 64)
    patches = image.reshape(1, 3, 4, 16, 4, 16).permute(0, 2, 4, 3, 5, 1).reshape(1, 16, 768)
    with torch.no_grad():
        reference = siglip2(
            pixel_values=patches,
            spatial_shapes=torch.tensor([[4, 4]]),
            pixel_attention_mask=torch.ones(1, 16, dtype=torch.long),
            output_hidden_states=True,
        ).hidden_states[-1][0]
        ours = encode_vision_features(visual, image)[0].reshape(16, 32)
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=1e-5)


def test_hard_negatives_add_their_sigmoid_terms():
    config = ImageTokenizerTrainingConfig()
    model = build_siglip_stage(config)
    batch = {"pixel_values": block_images(4, seed=2), "text_ids": torch.randint(1, 200, (4, 6))}
    plain, _ = siglip_stage_loss(model, batch)
    negatives = torch.randint(1, 200, (4, 6))
    with_negatives, metrics = siglip_stage_loss(model, {**batch, "negative_text_ids": negatives})
    with torch.no_grad():
        images = model.image_embeddings(batch["pixel_values"])
        texts = model.text_embeddings(negatives, torch.ones_like(negatives, dtype=torch.bool))
        logits = model.logit_scale.exp() * images @ texts.T + model.logit_bias
        expected = plain - torch.nn.functional.logsigmoid(-logits).sum() / 4
    assert torch.allclose(with_negatives, expected, atol=1e-5)
    assert 0.0 <= metrics["hard_negative_accuracy"] <= 1.0
    with pytest.raises(ValueError, match="negative_text_ids"):
        siglip_stage_loss(model, {**batch, "negative_text_ids": negatives[:3]})


def test_hard_negative_caption_swaps_one_whole_word_of_a_group():
    import random

    from unimask.training.stage_tokenizer_siglip import hard_negative_caption

    groups = [["circle", "square", "triangle"], ["red", "blue"]]
    caption = "a small red circle at the top and a large blue square in the center"
    seen = set()
    for seed in range(40):
        negative = hard_negative_caption(caption, groups, random.Random(seed))
        changed = [(a, b) for a, b in zip(caption.split(), negative.split()) if a != b]
        assert len(changed) == 1 and len(negative.split()) == len(caption.split())
        original, replacement = changed[0]
        assert any(original in group and replacement in group for group in groups)
        seen.add(changed[0])
    assert len(seen) >= 6  # every occurrence and several replacements are drawn
    assert hard_negative_caption("a redder circles", [["red", "blue"]], random.Random(0)) is None


def test_siglip_stage_builds_hard_negatives_and_checks_groups(tmp_path):
    from PIL import Image

    from unimask.config import ConfigError
    from unimask.training.stage_tokenizer_siglip import SigLIPStage

    samples = [{"__key__": f"{i}", "images": [Image.new("RGB", (32, 32))], "json": {"caption": caption}}
               for i, caption in enumerate(["a red circle", "a blue square", "nothing here"])]
    stage = SigLIPStage(siglip_recipe(tmp_path, negative_word_groups=[["circle", "square"]]))
    batch = stage.make_batch(samples)
    decoded = ["".join(chr(i - 1) for i in row.tolist() if i) for row in batch["negative_text_ids"]]
    assert decoded == ["a red square", "a blue circle", "a red circle"]  # the last borrows the next caption
    assert torch.equal(stage.make_batch(samples)["negative_text_ids"], batch["negative_text_ids"])
    assert "negative_text_ids" not in SigLIPStage(siglip_recipe(tmp_path)).make_batch(samples)
    for bad in ([["circle"]], "circle", [["circle", ""]]):
        with pytest.raises(ConfigError, match="negative_word_groups"):
            SigLIPStage(siglip_recipe(tmp_path, negative_word_groups=bad))


def test_region_loss_contrasts_region_features_with_phrases():
    config = ImageTokenizerTrainingConfig()
    model = build_siglip_stage(config)
    pixels = block_images(2, seed=3)  # 64 px -> 4 x 4 patches
    cells = torch.zeros(3, 16, dtype=torch.bool)
    cells[0, :2] = True
    cells[1, 5] = True
    cells[2, 10:12] = True
    phrases = torch.tensor([[5, 6, 0], [7, 8, 9], [5, 6, 0]])  # regions 0 and 2 share a phrase
    batch = {"pixel_values": pixels, "text_ids": torch.randint(1, 200, (2, 5)),
             "region_sample": torch.tensor([0, 0, 1]), "region_cells": cells, "region_text_ids": phrases}
    plain, _ = siglip_stage_loss(model, {k: batch[k] for k in ("pixel_values", "text_ids")})
    total, metrics = siglip_stage_loss(model, batch, region_weight=0.5)
    with torch.no_grad():
        features = model.patch_features(pixels).flatten(1, 2)
        pooled = torch.stack([features[0, :2].mean(0), features[0, 5], features[1, 10:12].mean(0)])
        regions = torch.nn.functional.normalize(model.image_head(pooled), dim=-1)
        distinct = phrases[:2]  # one embedding per distinct phrase: [5, 6], [7, 8, 9]
        texts = model.text_embeddings(distinct, distinct > 0)
        logits = model.logit_scale.exp() * regions @ texts.T + model.logit_bias
        labels = torch.tensor([[1, -1], [-1, 1], [1, -1]], dtype=torch.float32)
        region_loss = -torch.nn.functional.logsigmoid(labels * logits).sum() / 3
    assert torch.allclose(total, plain + 0.5 * region_loss, atol=1e-4)
    assert abs(metrics["region_loss"] - region_loss.item()) < 1e-4 and 0 <= metrics["region_accuracy"] <= 1
    assert torch.allclose(siglip_stage_loss(model, batch, region_weight=0.0)[0], plain, atol=1e-6)
    indexed = {**batch, "region_phrase_ids": distinct, "region_phrase_index": torch.tensor([0, 1, 0])}
    del indexed["region_text_ids"]
    assert torch.allclose(siglip_stage_loss(model, indexed, region_weight=0.5)[0], total, atol=1e-5)
    with pytest.raises(ValueError, match="regions disagree"):
        siglip_stage_loss(model, {**batch, "region_cells": cells[:, :8]})
    with pytest.raises(ValueError, match="regions disagree"):
        siglip_stage_loss(model, {**indexed, "region_phrase_index": torch.tensor([0, 2, 0])})


def test_siglip_stage_reads_grounded_regions(tmp_path):
    from PIL import Image

    from unimask.config import ConfigError
    from unimask.training.stage_tokenizer_siglip import SigLIPStage

    # 64 px images at image_size 32: boxes are halved, then cover the 16 px patches they overlap.
    samples = [
        {"__key__": "a", "images": [Image.new("RGB", (64, 64))],
         "json": {"caption": "x", "regions": [{"box": [0, 0, 20, 20], "text": "red circle"}, {"box": [40, 40, 64, 64], "text": "blue"}]}},
        {"__key__": "b", "images": [Image.new("RGB", (64, 64))], "json": {"caption": "y"}},
        {"__key__": "c", "images": [Image.new("RGB", (64, 64))], "json": {"caption": "z", "regions": [{"box": [20, 0, 40, 30], "text": "red circle"}]}},
    ]
    batch = SigLIPStage(siglip_recipe(tmp_path, region_loss_weight=1.0)).make_batch(samples)
    assert batch["region_sample"].tolist() == [0, 0, 2]
    assert batch["region_cells"].tolist() == [[True, False, False, False], [False, False, False, True], [True, True, False, False]]
    distinct = ["".join(chr(i - 1) for i in row.tolist() if i) for row in batch["region_phrase_ids"]]
    assert [distinct[i] for i in batch["region_phrase_index"].tolist()] == ["red circle", "blue", "red circle"]
    assert distinct == ["blue", "red circle"]  # each phrase encoded once
    assert "region_sample" not in SigLIPStage(siglip_recipe(tmp_path)).make_batch(samples)
    with pytest.raises(ValueError, match="region must be"):
        SigLIPStage(siglip_recipe(tmp_path, region_loss_weight=1.0)).make_batch([{**samples[0], "json": {"caption": "x", "regions": [{"box": [1, 2]}]}}])
    for bad in (-1, "1", True):
        with pytest.raises(ConfigError, match="region_loss_weight"):
            SigLIPStage(siglip_recipe(tmp_path, region_loss_weight=bad))


def test_region_per_patch_makes_every_owned_cell_a_region(tmp_path):
    from PIL import Image

    from unimask.config import ConfigError
    from unimask.training.stage_tokenizer_siglip import SigLIPStage

    # image_size 32: a 2 x 2 patch grid; "cells" replace the box, and each cell becomes one region.
    regions = [{"box": [0, 0, 64, 64], "text": "red circle", "cells": [0, 3]},
               {"box": [0, 0, 64, 64], "text": "white background", "cells": [1, 2]}]
    samples = [{"__key__": "a", "images": [Image.new("RGB", (64, 64))], "json": {"caption": "x", "regions": regions}}]
    pooled = SigLIPStage(siglip_recipe(tmp_path, region_loss_weight=1.0)).make_batch(samples)
    assert pooled["region_cells"].tolist() == [[True, False, False, True], [False, True, True, False]]
    batch = SigLIPStage(siglip_recipe(tmp_path, region_loss_weight=1.0, region_per_patch=True)).make_batch(samples)
    assert batch["region_cells"].int().argmax(1).tolist() == [0, 3, 1, 2] and batch["region_cells"].sum().item() == 4
    assert batch["region_phrase_index"].tolist() == [0, 0, 1, 1] and batch["region_phrase_ids"].shape[0] == 2
    with pytest.raises(ValueError, match="region cells"):
        SigLIPStage(siglip_recipe(tmp_path, region_loss_weight=1.0)).make_batch(
            [{**samples[0], "json": {"caption": "x", "regions": [{**regions[0], "cells": [4]}]}}])
    with pytest.raises(ConfigError, match="region_per_patch"):
        SigLIPStage(siglip_recipe(tmp_path, region_per_patch="yes"))


def test_position_free_tower_gives_a_plain_background_one_feature_and_keeps_it_so(tmp_path):
    from unimask.config import ConfigError
    from unimask.training.stage_tokenizer_siglip import SigLIPStage

    pixels = torch.full((1, 3, 64, 64), 0.5)
    pixels[:, :, :16, :16] = -1.0  # one dark patch in a plain image
    stage = SigLIPStage(siglip_recipe(tmp_path, image_size=64, position_free=True))
    model = stage.build_model()
    position = model.visual.embeddings.position_embedding.weight
    assert not position.requires_grad and torch.count_nonzero(position) == 0
    with torch.no_grad():
        plain = model.patch_features(pixels).flatten(1, 2)[0, 1:]  # every patch but the dark one
    assert torch.allclose(plain, plain[:1].expand_as(plain), atol=1e-5)
    loss, _ = siglip_stage_loss(model, {"pixel_values": pixels.repeat(2, 1, 1, 1), "text_ids": torch.randint(1, 200, (2, 5))})
    loss.backward()
    assert position.grad is None
    with torch.no_grad():
        learned = SigLIPStage(siglip_recipe(tmp_path, image_size=64)).build_model().patch_features(pixels).flatten(1, 2)[0, 1:]
    assert not torch.allclose(learned, learned[:1].expand_as(learned), atol=1e-3)
    with pytest.raises(ConfigError, match="position_free"):
        SigLIPStage(siglip_recipe(tmp_path, image_size=64, position_free="yes"))
