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
