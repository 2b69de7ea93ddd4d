"""Cell features: a decoder transformer built with `siglip_feat_dim` reads each grid cell's SigVQ
features through diffusers' omni path, next to the official caption sequence."""

import copy

import pytest
import torch
import yaml

from unimask.decoders.decoder_presets import build_decoder, load_decoder_preset
from unimask.decoders.semantic_decoder import SemanticImageDecoder
from unimask.decoders.training_losses import flow_matching_loss
from unimask.decoders.velocity import DecoderCondition, predict_velocity, reads_cell_features


def spatial_preset():
    preset = copy.deepcopy(load_decoder_preset("tiny"))
    preset["transformer"]["siglip_feat_dim"] = preset["sigvq"]["inner_dim"]
    return preset


@pytest.fixture
def spatial_decoder():
    return build_decoder(spatial_preset(), variant="normal", seed=3)


def test_only_transformers_built_with_siglip_feat_dim_read_cells(spatial_decoder):
    assert reads_cell_features(spatial_decoder.transformer)
    assert not reads_cell_features(build_decoder("tiny", seed=3).transformer)


def test_condition_holds_cells_of_the_grid_shape(spatial_decoder, make_grids):
    condition = spatial_decoder.sigvq.condition(make_grids(2, 2, 3), cells=True)
    assert condition.sequence.shape == (2, 4 * 6, 32)
    assert condition.cells.shape == (2, 2, 3, 32)
    assert spatial_decoder.sigvq.condition(make_grids(), cells=False).cells is None


def test_a_cell_reading_transformer_refuses_a_bare_sequence(spatial_decoder, make_grids):
    features = spatial_decoder.sigvq.encode_grids(make_grids())
    with pytest.raises(ValueError, match="cell features"):
        predict_velocity(spatial_decoder.transformer, torch.randn(2, 16, 1, 4, 4), torch.rand(2), features)


def test_cells_change_the_velocity_and_guidance_zeroes_them(spatial_decoder, make_grids):
    transformer = spatial_decoder.transformer
    latents, time = torch.randn(2, 16, 1, 4, 4), torch.full((2,), 0.5)
    condition = spatial_decoder.sigvq.condition(make_grids(), cells=True)
    other_cells = DecoderCondition(condition.sequence, condition.cells.flip(1))
    with torch.no_grad():
        cond = predict_velocity(transformer, latents, time, condition)
        moved = predict_velocity(transformer, latents, time, other_cells)
        uncond = predict_velocity(transformer, latents, time, condition.masked(torch.zeros(2, dtype=torch.bool)))
        guided = predict_velocity(transformer, latents, time, condition, guidance_scale=0.5)
    assert not torch.allclose(cond, moved, atol=1e-5)
    expected = cond + 0.5 * (cond - uncond)
    scale = torch.clamp(cond.flatten(1).norm(dim=1) / expected.flatten(1).norm(dim=1), max=1.0)
    torch.testing.assert_close(guided, expected * scale.view(2, 1, 1, 1, 1), atol=1e-5, rtol=1e-4)


def test_flow_matching_trains_the_cell_embedder(spatial_decoder, make_grids):
    batch = {"pixel_values": torch.rand(2, 3, 32, 32) * 2 - 1, "token_grids": make_grids()}
    loss, _ = flow_matching_loss(spatial_decoder, batch, generator=torch.Generator().manual_seed(0))
    loss.backward()
    assert spatial_decoder.transformer.siglip_embedder[1].weight.grad.abs().sum() > 0


def test_saved_cell_reading_decoder_decodes_the_same(spatial_decoder, tmp_path, make_grids):
    spatial_decoder.save_pretrained(tmp_path)
    loaded = SemanticImageDecoder.from_pretrained(tmp_path)
    assert reads_cell_features(loaded.transformer)
    common = {"num_inference_steps": 3, "output_type": "pt", "resolution_multiplier": 2}
    first = spatial_decoder(make_grids(1, 1, 2), generator=torch.Generator().manual_seed(0), **common).images
    again = loaded(make_grids(1, 1, 2), generator=torch.Generator().manual_seed(0), **common).images
    assert first.shape == (1, 3, 32, 64)
    torch.testing.assert_close(first, again)


def test_preset_cell_width_must_match_sigvq(tmp_path):
    preset = spatial_preset()
    preset["transformer"]["siglip_feat_dim"] = 16
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(preset))
    with pytest.raises(ValueError, match="siglip_feat_dim"):
        load_decoder_preset(path)


def test_omni_path_spreads_cell_positions_over_latent_pixels(spatial_decoder):
    # diffusers 0.42 scales the cells' rotary positions to the latent size in pixels, while image tokens sit
    # at patch indices: with patch 2 on 8 x 8 latents the 2 x 2 cells land on rows 0 and 7, the tokens on 0..3.
    # (docs/model-card.md: why the cell-feature decoder trial did not learn to read its cells.)
    transformer = spatial_decoder.transformer
    out = transformer.patchify_and_embed_omni(
        [[torch.randn(16, 1, 8, 8)]], [[torch.randn(16, 32)]], [[torch.randn(2, 2, 32)]], 2, 1, [[1]]
    )
    image_positions, cell_positions = out[4][0], out[6][0]
    assert image_positions[:, 1].max() == 3
    assert sorted(set(cell_positions[:, 1].tolist())) == [0, 7]
