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
    glm_vision_state_dict_from_siglip2,
    nearest_centroid_accuracy,
    semantic_probe,
    siglip_stage_loss,
    vq_stage_loss,
)

USAGE_FLOOR = 0.6  # fraction of the 64 codes used on a held-out batch of 256 tokens after training


def block_images(count: int, seed: int) -> torch.Tensor:
    """(count, 3, 64, 64) synthetic images: a 4 x 4 grid of 16 px blocks of random colours."""
    generator = torch.Generator().manual_seed(seed)
    blocks = torch.rand(count, 3, 4, 4, generator=generator) * 4 - 2
    return blocks.repeat_interleave(16, dim=2).repeat_interleave(16, dim=3)


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
