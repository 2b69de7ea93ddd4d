"""Decoder presets: shipped names, reference dimensions, validation."""

import pytest

from unimask.decoders.decoder_presets import available_decoder_presets, build_decoder, load_decoder_preset


def test_shipped_presets():
    assert {"official", "shapes", "tiny"} <= set(available_decoder_presets())


def test_official_preset_has_the_reference_dimensions():
    preset = load_decoder_preset("official")
    transformer, vae, sigvq = preset["transformer"], preset["vae"], preset["sigvq"]
    assert (transformer["dim"], transformer["n_layers"], transformer["n_heads"]) == (3840, 30, 30)
    assert (transformer["in_channels"], transformer["cap_feat_dim"], transformer["all_patch_size"]) == (16, 4096, [2])
    assert (sigvq["vocab_size"], sigvq["inner_dim"]) == (16384, 4096)
    assert vae["block_out_channels"] == [128, 256, 512, 512] and vae["latent_channels"] == 16
    assert (vae["scaling_factor"], vae["shift_factor"]) == (0.3611, 0.1159)
    assert preset["resolution_multiplier"] == 2 and preset["default_grid"] == [32, 32]


def test_shapes_preset_decodes_128_pixel_images():
    decoder = build_decoder("shapes", variant="turbo")
    preset = load_decoder_preset("shapes")
    height, width = preset["default_grid"]
    assert decoder.output_size(height, width, preset["resolution_multiplier"]) == (128, 128)


def test_unknown_or_inconsistent_presets_raise(tmp_path):
    with pytest.raises(ValueError, match="unknown decoder preset"):
        load_decoder_preset("huge")
    broken = tmp_path / "broken.yaml"
    broken.write_text(
        "sigvq: {vocab_size: 4, inner_dim: 8}\n"
        "transformer: {cap_feat_dim: 16, in_channels: 4}\n"
        "vae: {latent_channels: 4}\n"
    )
    with pytest.raises(ValueError, match="inner_dim must equal"):
        load_decoder_preset(broken)
