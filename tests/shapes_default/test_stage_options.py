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


def test_codebook_rows_keep_the_codebook_cosines_at_the_init_scale():
    from unimask.training.code_embeddings import codebook_embedding_rows

    codebook = torch.randn(40, 16) * torch.rand(40, 1) * 5
    rows = codebook_embedding_rows(codebook, 64, std=0.02, generator=torch.Generator().manual_seed(0))
    unit = torch.nn.functional.normalize(codebook, dim=-1)
    assert rows.shape == (40, 64)
    assert torch.allclose(torch.nn.functional.normalize(rows, dim=-1) @ torch.nn.functional.normalize(rows, dim=-1).T,
                          unit @ unit.T, atol=1e-5)
    assert torch.allclose(rows.norm(dim=1), torch.full((40,), 0.02 * 64**0.5), atol=1e-5)
    with pytest.raises(ValueError, match="dim <= hidden_size"):
        codebook_embedding_rows(torch.randn(4, 80), 64, std=0.02)


def test_backbone_image_code_rows_start_from_the_codebook(tmp_path):
    from unimask.tokenizers.tiny_image_tokenizer_checkpoint import write_tiny_official_image_tokenizer
    from unimask.tokenizers.image_tokenizer import SigLIPVQTokenizer
    from unimask.training.stage_backbone import BackboneStage

    folder = write_tiny_official_image_tokenizer(tmp_path / "image_tokenizer")
    codebook = SigLIPVQTokenizer.from_pretrained(folder).vqmodel.quantize.embedding.weight.detach()
    unit = torch.nn.functional.normalize(codebook, dim=-1)
    recipe = _backbone_recipe(tmp_path, image_embeddings_init=str(folder))
    recipe.model = {"preset": "tiny", "vocab_size": 256 + 64}
    model = BackboneStage(recipe).build_model()
    plain = BackboneStage(_backbone_recipe(tmp_path)).build_model()
    for weight in (model.get_input_embeddings().weight, model.lm_head.weight):
        rows = torch.nn.functional.normalize(weight[256:].detach(), dim=-1)
        assert torch.allclose(rows @ rows.T, unit @ unit.T, atol=1e-5)
    # text rows keep the usual random init scale
    assert abs(model.get_input_embeddings().weight[2:256].std().item() - plain.get_input_embeddings().weight[2:256].std().item()) < 5e-3

    mismatched = _backbone_recipe(tmp_path, image_embeddings_init=str(folder))  # tiny preset: 256 image codes
    with pytest.raises(ConfigError, match="64 codes, the backbone 256"):
        BackboneStage(mismatched).build_model()
    with pytest.raises(ConfigError, match="cannot be combined with init"):
        BackboneStage(_backbone_recipe(tmp_path, image_embeddings_init=str(folder), init=str(folder)))
    with pytest.raises(ConfigError, match="not a saved image tokenizer"):
        BackboneStage(_backbone_recipe(tmp_path, image_embeddings_init=str(tmp_path / "missing")))


def test_backbone_text_loss_weight_reaches_the_loss(tmp_path):
    from unimask.training.stage_backbone import BackboneStage

    plain = BackboneStage(_backbone_recipe(tmp_path))
    weighted = BackboneStage(_backbone_recipe(tmp_path, text_loss_weight=4.0))
    model = plain.build_model().eval()
    offset = plain.model_config.image_token_offset
    text_only = plain.make_batch([{"__key__": "t", "json": {"input_ids": list(range(10, 30)), "response_start": 4}}])
    image_only = plain.make_batch([{"__key__": "i", "json": {"input_ids": list(range(offset, offset + 20)), "response_start": 4}}])

    def loss(stage, batch):
        torch.manual_seed(0)  # the same masks for both stages
        with torch.no_grad():
            return stage.loss(model, batch)[0].item()

    assert loss(weighted, text_only) == pytest.approx(4.0 * loss(plain, text_only), rel=1e-5)
    assert loss(weighted, image_only) == pytest.approx(loss(plain, image_only), rel=1e-5)
    for bad in (0, -1.0, "2", True):
        with pytest.raises(ConfigError, match="text_loss_weight"):
            BackboneStage(_backbone_recipe(tmp_path, text_loss_weight=bad))


@pytest.mark.parametrize("shift", [0, -1.0, True, "6", 1000])
def test_decoder_time_shift_must_be_a_positive_number(tmp_path, shift):
    with pytest.raises(ConfigError, match="time_shift"):
        DecoderFlowStage(_recipe("decoder_flow", tmp_path, time_shift=shift))


def test_decoder_time_shift_reaches_the_flow_loss(tmp_path, monkeypatch):
    import unimask.decoders.training_losses as losses

    seen = {}

    def fake_loss(model, batch, condition_dropout, time_shift, draft_loss_weight):
        seen["time_shift"] = time_shift
        return torch.zeros(()), {}

    monkeypatch.setattr(losses, "flow_matching_loss", fake_loss)
    DecoderFlowStage(_recipe("decoder_flow", tmp_path, time_shift=1)).loss(None, {})
    assert seen == {"time_shift": 1.0}
    DecoderFlowStage(_recipe("decoder_flow", tmp_path)).loss(None, {})
    assert seen == {"time_shift": 6.0}
