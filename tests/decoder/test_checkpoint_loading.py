"""The tiny official-layout checkpoint loads strictly; our saved layout round-trips."""

import json
import shutil

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from unimask.decoders.decoder_presets import load_decoder_preset, random_transformer
from unimask.decoders.official_checkpoint import load_official_transformer, load_vae
from unimask.decoders.semantic_decoder import SemanticImageDecoder
from unimask.decoders.sigvq import SigVQEmbedding, load_sigvq_state_dict, sigvq_from_state_dict, upsample_token_grid

SIGVQ_KEYS = {
    "prior_token_embedding.weight",
    "prior_projector.net.0.proj.weight",
    "prior_projector.net.0.proj.bias",
    "prior_projector.net.2.weight",
    "prior_projector.net.2.bias",
}


def test_official_layout_has_the_release_names(tiny_root):
    assert sorted(p.name for p in (tiny_root / "image_tokenizer").iterdir()) == ["sigvq_embedding.pt"]
    for folder in ("decoder", "decoder-turbo"):
        keys = set(load_file(str(tiny_root / folder / "model.safetensors")))
        assert any(k.startswith("semantic_embedder.") for k in keys)
        assert not any(k.startswith("cap_embedder.") for k in keys)
        config = json.loads((tiny_root / folder / "config.json").read_text())
        assert config["_class_name"] == "ZImageTransformer2DModel" and "cap_feat_dim" in config
    state = torch.load(tiny_root / "image_tokenizer" / "sigvq_embedding.pt", weights_only=True)
    assert set(state) == SIGVQ_KEYS


def test_remapped_transformer_reproduces_the_written_model(tiny_root):
    preset = load_decoder_preset("tiny")
    written = random_transformer(preset["transformer"], seed=1)  # decoder-turbo uses seed + 1
    loaded = load_official_transformer(tiny_root / "decoder-turbo", cap_feat_dim=32)
    x = [torch.randn(16, 1, 4, 6)]
    t = torch.tensor([0.3])
    caption = [torch.randn(24, 32)]
    with torch.no_grad():
        expected = written(x, t, caption, return_dict=False)[0][0]
        actual = loaded(x, t, caption, return_dict=False)[0][0]
    torch.testing.assert_close(actual, expected)
    assert loaded.config.axes_lens == [32768, 1024, 1024]


def _copy_with_extra_key(tiny_root, tmp_path, folder, file_name):
    root = tmp_path / "root"
    shutil.copytree(tiny_root, root)
    path = root / folder / file_name
    state = load_file(str(path))
    state["stray.weight"] = torch.zeros(2)
    save_file(state, str(path))
    return root


def test_unexpected_transformer_key_raises(tiny_root, tmp_path):
    root = _copy_with_extra_key(tiny_root, tmp_path, "decoder", "model.safetensors")
    with pytest.raises(ValueError, match="unexpected.*stray.weight"):
        SemanticImageDecoder.from_pretrained(root, variant="normal")
    SemanticImageDecoder.from_pretrained(root, variant="turbo")  # the untouched folder still loads


def test_unexpected_vae_key_raises(tiny_root, tmp_path):
    root = _copy_with_extra_key(tiny_root, tmp_path, "vae", "diffusion_pytorch_model.safetensors")
    with pytest.raises(ValueError, match="unexpected"):
        load_vae(root / "vae")


def test_missing_transformer_key_raises(tiny_root, tmp_path):
    root = tmp_path / "root"
    shutil.copytree(tiny_root, root)
    path = root / "decoder-turbo" / "model.safetensors"
    state = load_file(str(path))
    del state["semantic_embedder.1.weight"]
    save_file(state, str(path))
    with pytest.raises(ValueError, match="missing.*cap_embedder.1.weight"):
        SemanticImageDecoder.from_pretrained(root)


def test_sigvq_loads_strictly_and_rejects_extra_keys(tiny_root, tmp_path):
    state = load_sigvq_state_dict(tiny_root / "image_tokenizer" / "sigvq_embedding.pt")
    model = sigvq_from_state_dict(state)
    assert (model.config.vocab_size, model.config.inner_dim) == (64, 32)
    assert not any(p.requires_grad for p in model.parameters())
    torch.save({**state, "extra": torch.zeros(1)}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="unexpected.*extra"):
        sigvq_from_state_dict(load_sigvq_state_dict(tmp_path / "bad.pt"))
    save_file(state, str(tmp_path / "sigvq.safetensors"))
    again = sigvq_from_state_dict(load_sigvq_state_dict(tmp_path / "sigvq.safetensors"))
    ids = torch.randint(0, 64, (2, 5))
    torch.testing.assert_close(again(ids), model(ids))


def test_sigvq_features_are_embedding_then_silu_feed_forward():
    model = SigVQEmbedding(vocab_size=10, inner_dim=8)
    ids = torch.tensor([[1, 7, 3]])
    embedded = model.prior_token_embedding.weight[ids]
    first, second = model.prior_projector.net[0].proj, model.prior_projector.net[2]
    hidden = F.silu(F.linear(embedded, first.weight, first.bias))
    expected = F.linear(hidden, second.weight, second.bias)
    torch.testing.assert_close(model(ids), expected)


def test_grid_upsampling_is_nearest_2x_row_major():
    grids = torch.arange(6).view(1, 2, 3)
    expected = F.interpolate(grids[:, None].float(), scale_factor=2, mode="nearest").long().view(1, -1)
    assert torch.equal(upsample_token_grid(grids), expected)


def test_saved_layout_round_trips(turbo_decoder, tmp_path, make_generators):
    turbo_decoder.save_pretrained(tmp_path / "ours")
    assert (tmp_path / "ours" / "sigvq" / "diffusion_pytorch_model.safetensors").is_file()
    again = SemanticImageDecoder.from_pretrained(tmp_path / "ours")
    assert again.config.decoder_variant == "turbo" and again.scheduler.config.stochastic_sampling
    grids = torch.randint(0, 64, (1, 2, 2))
    first = turbo_decoder(grids, generator=make_generators(3), output_type="pt").images
    second = again(grids, generator=make_generators(3), output_type="pt").images
    torch.testing.assert_close(first, second)
    with pytest.raises(ValueError, match="holds the 'turbo' decoder"):
        SemanticImageDecoder.from_pretrained(tmp_path / "ours", variant="normal")


def test_unknown_root_raises(tmp_path):
    with pytest.raises(ValueError, match="neither"):
        SemanticImageDecoder.from_pretrained(tmp_path)


def test_config_siglip_dim_without_weights_is_ignored(tiny_root, tmp_path):
    root = tmp_path / "root"
    shutil.copytree(tiny_root, root)
    config_path = root / "decoder" / "config.json"
    config = json.loads(config_path.read_text())
    config["siglip_feat_dim"] = 48
    config_path.write_text(json.dumps(config))
    transformer = load_official_transformer(root / "decoder", cap_feat_dim=32)
    assert transformer.siglip_embedder is None
