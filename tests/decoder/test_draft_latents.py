"""Draft latents: a decoder whose SigVQ has a learned latent patch per code reads the tiled draft
beside the noisy latents, and a stage can continue a draft-less decoder as one that reads it."""

import copy

import pytest
import torch
import yaml

from unimask.config import ConfigError
from unimask.decoders.decoder_presets import build_decoder, load_decoder_preset
from unimask.decoders.draft_widening import widen_state_for_draft
from unimask.decoders.semantic_decoder import SemanticImageDecoder
from unimask.decoders.sigvq import SigVQEmbedding, sigvq_from_state_dict
from unimask.decoders.training_losses import flow_matching_loss
from unimask.decoders.velocity import predict_velocity
from unimask.training.recipe import DataSection, TrainRecipe
from unimask.training.stage_decoder_flow import DecoderFlowStage

# tiny preset: 16 latent channels and an 8x VAE, so 2 latent pixels a 16 px token at multiplier 1
DRAFT_CHANNELS, DRAFT_PATCH = 4, 2


def draft_preset():
    preset = copy.deepcopy(load_decoder_preset("tiny"))
    preset["sigvq"].update(draft_channels=DRAFT_CHANNELS, draft_patch=DRAFT_PATCH)
    preset["transformer"]["in_channels"] += DRAFT_CHANNELS
    return preset


@pytest.fixture
def draft_decoder():
    return build_decoder(draft_preset(), variant="normal", seed=3)


def test_draft_places_each_codes_patch_in_its_cell():
    sigvq = SigVQEmbedding(vocab_size=8, inner_dim=4, draft_channels=3, draft_patch=2)
    token_grids = torch.tensor([[[1, 5, 2], [7, 0, 3]]])
    draft = sigvq.draft_latents(token_grids, (4, 6))
    assert draft.shape == (1, 3, 1, 4, 6)
    for row in range(2):
        for col in range(3):
            patch = draft[0, :, 0, row * 2 : row * 2 + 2, col * 2 : col * 2 + 2]
            assert torch.equal(patch, sigvq.draft_latent_patches[token_grids[0, row, col]])
    # a larger latent canvas (resolution multiplier 2) repeats every patch pixel
    doubled = sigvq.draft_latents(token_grids, (8, 12))
    assert torch.equal(doubled[..., ::2, ::2], draft)


def test_draft_settings_must_come_together():
    with pytest.raises(ValueError, match="draft_channels"):
        SigVQEmbedding(vocab_size=8, inner_dim=4, draft_channels=3)
    with pytest.raises(ValueError, match="no draft patches"):
        SigVQEmbedding(vocab_size=8, inner_dim=4).draft_latents(torch.zeros(1, 1, 1, dtype=torch.long), (2, 2))
    with pytest.raises(ValueError, match="latent_size"):
        SigVQEmbedding(vocab_size=8, inner_dim=4, draft_channels=1, draft_patch=1).condition(torch.zeros(1, 1, 1, dtype=torch.long))


def test_state_dict_round_trip_keeps_the_draft():
    sigvq = SigVQEmbedding(vocab_size=8, inner_dim=4, grid_position_size=4, draft_channels=3, draft_patch=2)
    loaded = sigvq_from_state_dict({k: v.clone() for k, v in sigvq.state_dict().items()})
    assert (loaded.config.draft_channels, loaded.config.draft_patch) == (3, 2)
    torch.testing.assert_close(loaded.draft_latent_patches, sigvq.draft_latent_patches)


def test_velocity_reads_the_draft_and_guidance_zeroes_it(draft_decoder, make_grids):
    transformer = draft_decoder.transformer
    latents, time = torch.randn(2, 16, 1, 4, 4), torch.full((2,), 0.5)
    condition = draft_decoder.sigvq.condition(make_grids(), latent_size=(4, 4))
    assert condition.draft.shape == (2, DRAFT_CHANNELS, 1, 4, 4)
    with torch.no_grad():
        transformer.all_x_embedder["2-1"].weight.normal_()  # make sure the draft columns are not ~0
        cond = predict_velocity(transformer, latents, time, condition)
        other = copy.copy(condition)
        other.draft = condition.draft.flip(-1)
        moved = predict_velocity(transformer, latents, time, other)
        uncond = predict_velocity(transformer, latents, time, condition.masked(torch.zeros(2, dtype=torch.bool)))
        guided = predict_velocity(transformer, latents, time, condition, guidance_scale=0.5)
    assert cond.shape == latents.shape
    assert not torch.allclose(cond, moved, atol=1e-5)
    expected = cond + 0.5 * (cond - uncond)
    scale = torch.clamp(cond.flatten(1).norm(dim=1) / expected.flatten(1).norm(dim=1), max=1.0)
    torch.testing.assert_close(guided, expected * scale.view(2, 1, 1, 1, 1), atol=1e-5, rtol=1e-4)


def test_a_draft_reading_transformer_refuses_a_condition_without_draft(draft_decoder, make_grids):
    condition = build_decoder("tiny", seed=3).sigvq.condition(make_grids())
    with pytest.raises(ValueError, match="input channels"):
        predict_velocity(draft_decoder.transformer, torch.randn(2, 16, 1, 4, 4), torch.rand(2), condition)


def test_flow_matching_trains_the_draft_patches(draft_decoder, make_grids):
    draft_decoder.sigvq.draft_latent_patches.requires_grad_(True)
    with torch.no_grad():
        draft_decoder.transformer.all_x_embedder["2-1"].weight.normal_()
    batch = {"pixel_values": torch.rand(2, 3, 32, 32) * 2 - 1, "token_grids": make_grids()}
    loss, _ = flow_matching_loss(draft_decoder, batch, generator=torch.Generator().manual_seed(0))
    loss.backward()
    assert draft_decoder.sigvq.draft_latent_patches.grad.abs().sum() > 0


def test_saved_draft_decoder_decodes_the_same(draft_decoder, tmp_path, make_grids):
    draft_decoder.save_pretrained(tmp_path)
    loaded = SemanticImageDecoder.from_pretrained(tmp_path)
    assert loaded.sigvq.config.draft_channels == DRAFT_CHANNELS
    common = {"num_inference_steps": 3, "output_type": "pt", "resolution_multiplier": 2, "guidance_scale": 1.0}
    first = draft_decoder(make_grids(1, 1, 2), generator=torch.Generator().manual_seed(0), **common).images
    again = loaded(make_grids(1, 1, 2), generator=torch.Generator().manual_seed(0), **common).images
    assert first.shape == (1, 3, 32, 64)
    torch.testing.assert_close(first, again)


def test_widened_state_predicts_what_the_draft_less_decoder_did(make_grids):
    plain = build_decoder("tiny", variant="normal", seed=5)
    widened = build_decoder(draft_preset(), variant="normal", seed=6)
    state = widen_state_for_draft(plain.transformer.state_dict(), widened.transformer.state_dict())
    widened.transformer.load_state_dict(state)
    latents, time = torch.randn(2, 16, 1, 4, 4), torch.rand(2)
    token_grids = make_grids()
    with torch.no_grad():
        before = predict_velocity(plain.transformer, latents, time, plain.sigvq.condition(token_grids))
        condition = plain.sigvq.condition(token_grids)
        condition.draft = widened.sigvq.draft_latents(token_grids, (4, 4))
        after = predict_velocity(widened.transformer, latents, time, condition)
    torch.testing.assert_close(after, before, atol=1e-5, rtol=1e-4)


def test_decoder_flow_continues_a_draft_less_decoder_with_the_draft(tmp_path):
    def recipe(preset, **options):
        return TrainRecipe(stage="decoder_flow", out_dir=str(tmp_path / "out"), data=DataSection(shards=["unused"]),
                           model={"preset": preset}, stage_options=options)

    first = DecoderFlowStage(recipe("tiny")).build_model()
    for part in ("transformer", "sigvq"):
        getattr(first, part).save_pretrained(tmp_path / "decoder" / part)
    preset_path = tmp_path / "draft.yaml"
    preset_path.write_text(yaml.safe_dump(draft_preset()))
    parts = DecoderFlowStage(recipe(str(preset_path), init=str(tmp_path / "decoder"))).build_model()
    embedder = parts.transformer.all_x_embedder["2-1"].weight.view(32, 4, 16 + DRAFT_CHANNELS)
    assert torch.equal(embedder[..., :16], first.transformer.all_x_embedder["2-1"].weight.view(32, 4, 16))
    assert not embedder[..., 16:].any()
    assert parts.sigvq.draft_latent_patches.requires_grad
    assert torch.equal(parts.sigvq.prior_token_embedding.weight, first.sigvq.prior_token_embedding.weight)
    # a decoder of another depth is still refused
    other = copy.deepcopy(draft_preset())
    other["transformer"]["n_layers"] = 3
    other_path = tmp_path / "other.yaml"
    other_path.write_text(yaml.safe_dump(other))
    with pytest.raises(ConfigError, match="does not fit"):
        DecoderFlowStage(recipe(str(other_path), init=str(tmp_path / "decoder"))).build_model()


def test_preset_channels_must_add_up(tmp_path):
    preset = draft_preset()
    preset["transformer"]["in_channels"] = 16
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(preset))
    with pytest.raises(ValueError, match="draft_channels"):
        load_decoder_preset(path)
