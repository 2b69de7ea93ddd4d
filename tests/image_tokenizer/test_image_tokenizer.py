"""SigLIP-VQ tokenizer: strict official-layout loading, quantizer correctness, encode API."""

import json
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file, save_file

from unimask.tokenizers.image_tokenizer import ImageTokens, SigLIPVQTokenizer, quantize_features
from unimask.tokenizers.tiny_image_tokenizer_checkpoint import TINY_VQ_CONFIG


def test_tiny_checkpoint_has_the_official_layout(tiny_checkpoint_root):
    folder = tiny_checkpoint_root / "image_tokenizer"
    assert sorted(p.name for p in folder.iterdir()) == [
        "config.json",
        "image_tokenizer.safetensors",
        "preprocessor_config.json",
        "sigvq_embedding.pt",
    ]
    config = json.loads((folder / "config.json").read_text())
    assert set(config) == {"vision_config", "vq_config"}
    assert {"depth", "hidden_size", "num_heads", "patch_size", "image_size", "spatial_merge_size"} <= set(config["vision_config"])
    assert {"num_embeddings", "embed_dim", "latent_channels"} <= set(config["vq_config"])
    keys = load_file(str(folder / "image_tokenizer.safetensors")).keys()
    assert all(k.startswith(("model.visual.", "model.vqmodel.")) for k in keys)
    assert {"model.vqmodel.quantize.embedding.weight", "model.vqmodel.quant_conv.weight", "model.vqmodel.post_quant_conv.weight",
            "model.visual.patch_embed.proj.weight", "model.visual.embeddings.position_embedding.weight",
            "model.visual.blocks.1.attn.qkv.weight"} <= set(keys)
    sigvq = torch.load(folder / "sigvq_embedding.pt", weights_only=True)
    assert sigvq["prior_token_embedding.weight"].shape[0] == TINY_VQ_CONFIG["num_embeddings"]
    assert {"prior_projector.net.0.proj.weight", "prior_projector.net.2.weight"} <= set(sigvq)


def test_loads_strictly_from_root_or_folder(tiny_checkpoint_root, tiny_tokenizer):
    from_folder = SigLIPVQTokenizer.from_pretrained(tiny_checkpoint_root / "image_tokenizer")
    file_state = load_file(str(tiny_checkpoint_root / "image_tokenizer" / "image_tokenizer.safetensors"))
    loaded = from_folder.official_state_dict()
    assert loaded.keys() == file_state.keys()
    for name, tensor in file_state.items():
        assert torch.equal(loaded[name], tensor), name
    assert tiny_tokenizer.codebook_size == TINY_VQ_CONFIG["num_embeddings"]


@pytest.mark.parametrize("change", ["extra", "missing", "shape"])
def test_mismatched_weights_raise(tiny_checkpoint_root, tmp_path, change):
    folder = tmp_path / "image_tokenizer"
    shutil.copytree(tiny_checkpoint_root / "image_tokenizer", folder)
    weights = folder / "image_tokenizer.safetensors"
    state = load_file(str(weights))
    if change == "extra":
        state["model.visual.unused.weight"] = torch.zeros(2)
        match = "unexpected \\['model.visual.unused.weight'\\]"
    elif change == "missing":
        del state["model.vqmodel.post_quant_conv.bias"]
        match = "missing \\['model.vqmodel.post_quant_conv.bias'\\]"
    else:
        state["model.vqmodel.quantize.embedding.weight"] = torch.zeros(3, TINY_VQ_CONFIG["embed_dim"])
        match = "shapes"
    save_file(state, str(weights))
    with pytest.raises(ValueError, match=match):
        SigLIPVQTokenizer.from_pretrained(folder)


def test_missing_config_raises(tmp_path):
    with pytest.raises(ValueError, match="config.json"):
        SigLIPVQTokenizer.from_pretrained(tmp_path)


def test_quantizer_returns_brute_force_nearest_code(tiny_tokenizer):
    features = torch.randn(2, 3, 5, tiny_tokenizer.visual.config.hidden_size)
    with torch.no_grad():
        ids = quantize_features(tiny_tokenizer.vqmodel, features)
        check_nearest(tiny_tokenizer.vqmodel, features, ids)


def check_nearest(vq, features, ids):
    codebook = F.normalize(vq.quantize.embedding.weight, dim=-1)
    for b in range(2):
        for i in range(3):
            for j in range(5):
                latent = F.normalize(vq.quant_conv.weight[:, :, 0, 0] @ features[b, i, j] + vq.quant_conv.bias, dim=-1)
                distances = [float(((latent - code) ** 2).sum()) for code in codebook]
                assert ids[b, i, j].item() == int(np.argmin(distances))


def test_encode_shapes_world_grid_and_features(tiny_tokenizer, random_images):
    tokens = tiny_tokenizer.encode(random_images[:2], target_size="shapes_world", return_features=True)
    assert isinstance(tokens, ImageTokens)
    assert tokens.ids.shape == (2, 8, 8) and tokens.ids.dtype == torch.int64
    assert tokens.grids == [(8, 8), (8, 8)]
    assert tokens.features.shape == (2, 8, 8, tiny_tokenizer.visual.config.hidden_size)
    assert 0 <= tokens.ids.min() and tokens.ids.max() < tiny_tokenizer.codebook_size
    assert tokens.ids.unique().numel() > 8  # the tiny random model spreads tokens over the codebook
    # Features and ids agree: re-quantising the returned features gives the returned ids.
    assert torch.equal(quantize_features(tiny_tokenizer.vqmodel, tokens.features), tokens.ids)


def test_encode_is_deterministic_and_batch_equals_one_by_one(tiny_tokenizer, random_images):
    batched = tiny_tokenizer.encode(random_images, target_size="smart_multi", return_features=True)
    again = tiny_tokenizer.encode(random_images, target_size="smart_multi", return_features=True)
    assert isinstance(batched.ids, list)  # mixed grids stay a list
    assert batched.grids == [(8, 8), (8, 8), (6, 12), (12, 8)]
    for index, image in enumerate(random_images):
        single = tiny_tokenizer.encode(image, target_size="smart_multi", return_features=True)
        assert torch.equal(single.ids[0], batched.ids[index])
        assert torch.equal(again.ids[index], batched.ids[index])
        torch.testing.assert_close(single.features[0], batched.features[index], atol=1e-5, rtol=1e-5)
    chunked = tiny_tokenizer.encode(random_images, target_size="smart_multi", batch_size=3)
    assert all(torch.equal(a, b) for a, b in zip(chunked.ids_list(), batched.ids_list()))


def test_default_policy_is_the_understanding_crop_list(tiny_tokenizer):
    tokens = tiny_tokenizer.encode(Image.new("RGB", (1024, 512), (30, 60, 90)))
    assert tokens.grids == [(22, 44)] and tokens.ids.shape == (1, 22, 44)


def test_odd_modes_encode(tiny_tokenizer):
    modes = ["RGB", "RGBA", "L", "P", "CMYK", "I;16", "1", "LA", "I", "F"]
    images = [Image.new(mode, (96, 80)) for mode in modes]
    tokens = tiny_tokenizer.encode(images, target_size="shapes_world")
    assert tokens.ids.shape == (len(modes), 8, 8)
    black = tokens.ids[0]
    white = tiny_tokenizer.encode(Image.new("RGB", (96, 80), (255, 255, 255)), target_size="shapes_world").ids[0]
    assert not torch.equal(white, black)
    for mode, ids in zip(modes, tokens.ids):
        if mode in ("RGBA", "LA", "CMYK"):  # transparent black composites to white; zero ink is white
            assert torch.equal(ids, white), mode
        else:
            assert torch.equal(ids, black), mode


def test_bad_sizes_raise(tiny_tokenizer):
    with pytest.raises(ValueError, match="zero size"):
        tiny_tokenizer.encode(np.zeros((0, 0, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match=r"\[16, 16384\]"):
        tiny_tokenizer.encode(Image.new("RGB", (8, 8)))
    with pytest.raises(ValueError, match="batch_size"):
        tiny_tokenizer.encode(Image.new("RGB", (32, 32)), batch_size=0)


def test_save_pretrained_round_trip(tiny_tokenizer, random_images, tmp_path):
    folder = tiny_tokenizer.save_pretrained(tmp_path / "image_tokenizer")
    reloaded = SigLIPVQTokenizer.from_pretrained(folder, size_policy="shapes_world")
    expected = tiny_tokenizer.encode(random_images, target_size="shapes_world")
    assert torch.equal(reloaded.encode(random_images).ids, expected.ids)
    assert reloaded.preprocessor_config == tiny_tokenizer.preprocessor_config


def test_from_config_validates_dimensions():
    with pytest.raises(ValueError, match="latent_channels"):
        SigLIPVQTokenizer.from_config(
            {"depth": 1, "hidden_size": 32, "num_heads": 2, "intermediate_size": 64, "image_size": 64},
            {"embed_dim": 8, "num_embeddings": 16, "latent_channels": 48},
        )
    with pytest.raises(ValueError, match="patch_size"):
        SigLIPVQTokenizer.from_config(
            {"depth": 1, "hidden_size": 32, "num_heads": 2, "intermediate_size": 64, "image_size": 64, "patch_size": 14},
            {"embed_dim": 8, "num_embeddings": 16, "latent_channels": 32},
        )


def test_bfloat16_load_keeps_tokens_mostly(tiny_checkpoint_root, tiny_tokenizer, random_images):
    half = SigLIPVQTokenizer.from_pretrained(tiny_checkpoint_root, dtype=torch.bfloat16)
    assert half.visual.patch_embed.proj.weight.dtype == torch.bfloat16
    ids = half.encode(random_images[:2], target_size="shapes_world").ids
    reference = tiny_tokenizer.encode(random_images[:2], target_size="shapes_world").ids
    assert (ids == reference).float().mean() > 0.7
