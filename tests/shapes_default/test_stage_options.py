"""Stage options added for the Shapes build: VAE crops and pinned posterior variance, decoder init_vae."""

import numpy as np
import pytest
import torch
from PIL import Image

from unimask.config import ConfigError
from unimask.training.recipe import DataSection, TrainRecipe
from unimask.training.stage_decoder_flow import DecoderFlowStage
from unimask.training.stage_vae import VAEStage


def _recipe(stage, tmp_path, **options):
    return TrainRecipe(stage=stage, out_dir=str(tmp_path / "out"), data=DataSection(shards=["unused"]),
                       model={"preset": "tiny"}, stage_options=options)


def _samples(count):
    rng = np.random.default_rng(0)
    return [{"__key__": f"{i:08d}", "images": [Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))]}
            for i in range(count)]


def test_vae_crops_are_deterministic_and_at_pixel_scale(tmp_path):
    stage = VAEStage(_recipe("vae", tmp_path, image_size=64, crop_size=32))
    samples = _samples(3)
    batch = stage.make_batch(samples)["pixel_values"]
    assert batch.shape == (3, 3, 32, 32)
    assert torch.equal(batch, stage.make_batch(samples)["pixel_values"])
    whole = VAEStage(_recipe("vae", tmp_path, image_size=64)).make_batch(samples)["pixel_values"]
    # Each crop is a window of the un-resized image, at a multiple of 8 px.
    found = any(torch.equal(batch[0], whole[0, :, top : top + 32, left : left + 32])
                for top in range(0, 33, 8) for left in range(0, 33, 8))
    assert found


def test_vae_posterior_logvar_is_pinned(tmp_path):
    stage = VAEStage(_recipe("vae", tmp_path, posterior_logvar_init=-10.0))
    model = stage.build_model()
    with torch.no_grad():
        posterior = model.encode(torch.rand(1, 3, 64, 64) * 2 - 1).latent_dist
    assert torch.allclose(posterior.logvar, torch.full_like(posterior.logvar, -10.0))


@pytest.mark.parametrize("options", [{"crop_size": 12}, {"crop_size": 128}, {"init": "/nonexistent"}, {"bogus": 1}])
def test_vae_bad_options_raise(tmp_path, options):
    with pytest.raises(ConfigError):
        VAEStage(_recipe("vae", tmp_path, **options))


def test_decoder_flow_loads_a_trained_vae(tmp_path):
    source = VAEStage(_recipe("vae", tmp_path)).build_model()
    source.save_pretrained(tmp_path / "vae")
    stage = DecoderFlowStage(_recipe("decoder_flow", tmp_path, init_vae=str(tmp_path / "vae")))
    parts = stage.build_model()
    for name, tensor in source.state_dict().items():
        assert torch.equal(parts.vae.state_dict()[name], tensor)
    assert not any(p.requires_grad for p in parts.vae.parameters())
    with pytest.raises(ConfigError, match="init_vae"):
        DecoderFlowStage(_recipe("decoder_flow", tmp_path, init_vae=str(tmp_path / "missing")))


def test_vae_freeze_encoder_trains_only_the_decoder(tmp_path):
    model = VAEStage(_recipe("vae", tmp_path, freeze_encoder=True)).build_model()
    assert not any(p.requires_grad for p in model.encoder.parameters())
    assert all(p.requires_grad for p in model.decoder.parameters())


def test_decoder_flow_continues_from_a_saved_decoder(tmp_path):
    first = DecoderFlowStage(_recipe("decoder_flow", tmp_path)).build_model()
    with torch.no_grad():
        for parameter in first.transformer.parameters():
            parameter.add_(0.5)
    for part in ("transformer", "sigvq"):
        getattr(first, part).save_pretrained(tmp_path / "decoder" / part)
    stage = DecoderFlowStage(_recipe("decoder_flow", tmp_path, init=str(tmp_path / "decoder")))
    parts = stage.build_model()
    for part in ("transformer", "sigvq"):
        for name, tensor in getattr(first, part).state_dict().items():
            assert torch.equal(getattr(parts, part).state_dict()[name], tensor), (part, name)
    assert all(p.requires_grad for p in parts.transformer.parameters())
    with pytest.raises(ConfigError, match="init"):
        DecoderFlowStage(_recipe("decoder_flow", tmp_path, init=str(tmp_path / "missing")))


def _backbone_recipe(tmp_path, **options):
    return TrainRecipe(stage="backbone", out_dir=str(tmp_path / "out"), data=DataSection(shards=["unused"]),
                       model={"preset": "tiny"}, stage_options={"mask_token_id": 1, **options})


def test_backbone_continues_from_a_saved_backbone(tmp_path):
    from unimask.training.stage_backbone import BackboneStage

    source = BackboneStage(_backbone_recipe(tmp_path)).build_model()
    with torch.no_grad():
        source.lm_head.weight.add_(1.0)
    source.save_pretrained(tmp_path / "backbone")
    model = BackboneStage(_backbone_recipe(tmp_path, init=str(tmp_path / "backbone"))).build_model()
    for name, tensor in source.state_dict().items():
        assert torch.equal(model.state_dict()[name], tensor), name
    with pytest.raises(ConfigError, match="init"):
        BackboneStage(_backbone_recipe(tmp_path, init=str(tmp_path / "missing")))


def test_backbone_init_of_another_architecture_is_refused(tmp_path):
    from unimask.training.stage_backbone import BackboneStage

    recipe = _backbone_recipe(tmp_path)
    recipe.model = {"preset": "tiny", "hidden_size": 48, "head_dim": 12}
    BackboneStage(recipe).build_model().save_pretrained(tmp_path / "other")
    stage = BackboneStage(_backbone_recipe(tmp_path, init=str(tmp_path / "other")))
    with pytest.raises(ConfigError, match="does not fit"):
        stage.build_model()
