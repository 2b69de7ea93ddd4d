"""Decoding token grids: shapes, both variants, batching, guidance and input validation."""

import numpy as np
import PIL.Image
import pytest
import torch

from unimask.decoders.velocity import predict_velocity

VOCAB = 64


def decode_pt(decoder, token_grids, steps, guidance=None, **kwargs):
    kwargs.setdefault("resolution_multiplier", 1)
    return decoder(token_grids, steps, guidance, output_type="pt", **kwargs).images


def grids(batch, height, width, seed=0):
    return torch.randint(0, VOCAB, (batch, height, width), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("height, width, multiplier", [(1, 1, 1), (2, 3, 1), (3, 2, 2), (2, 2, 2)])
def test_output_size_is_grid_times_16_times_multiplier(turbo_decoder, height, width, multiplier):
    images = decode_pt(turbo_decoder, grids(2, height, width), 2, resolution_multiplier=multiplier)
    assert images.shape == (2, 3, height * 16 * multiplier, width * 16 * multiplier)
    assert images.min() >= 0 and images.max() <= 1


def test_latent_noise_shape_follows_the_reference(turbo_decoder):
    latents = turbo_decoder.prepare_latents(1, 32, 32, 2, None, torch.device("cpu"))
    assert latents.shape == (1, 16, 1, 2 * 1024 // 16, 2 * 1024 // 16)


def test_output_types(turbo_decoder):
    token_grids = grids(2, 2, 2)
    pil = turbo_decoder(token_grids, num_inference_steps=1, resolution_multiplier=1).images
    assert len(pil) == 2 and isinstance(pil[0], PIL.Image.Image) and pil[0].size == (32, 32)
    arrays = turbo_decoder(token_grids, num_inference_steps=1, resolution_multiplier=1, output_type="np").images
    assert isinstance(arrays, np.ndarray) and arrays.shape == (2, 32, 32, 3)


def test_turbo_defaults_are_8_steps_without_guidance(turbo_decoder):
    steps = []
    turbo_decoder(grids(1, 2, 2), resolution_multiplier=1, callback=lambda i, t, x: steps.append(i))
    assert steps == list(range(8))
    assert turbo_decoder.defaults == (8, 0.0)


def test_normal_defaults_are_the_50_point_guided_ode(normal_decoder):
    steps = []
    images = decode_pt(normal_decoder, grids(1, 1, 1), None, callback=lambda i, t, x: steps.append(t))
    assert len(steps) == 49 and normal_decoder.defaults == (50, 1.0)
    assert torch.isfinite(images).all()


@pytest.mark.parametrize("variant, steps, guidance", [("turbo", 3, 0.0), ("normal", 4, 1.0)])
def test_batched_decode_equals_one_by_one(request, make_generators, variant, steps, guidance):
    decoder = request.getfixturevalue(f"{variant}_decoder")
    token_grids = grids(3, 2, 3, seed=1)
    batched = decode_pt(decoder, token_grids, steps, guidance, generator=make_generators(10, 11, 12))
    for index, seed in enumerate((10, 11, 12)):
        single = decode_pt(decoder, token_grids[index : index + 1], steps, guidance, generator=make_generators(seed))
        torch.testing.assert_close(batched[index], single[0], atol=1e-5, rtol=1e-4)


def test_mixed_sizes_are_grouped_and_keep_input_order(turbo_decoder, make_generators):
    items = [grids(1, 2, 2, seed=2)[0], grids(1, 1, 3, seed=3)[0], grids(1, 2, 2, seed=4)[0]]
    out = decode_pt(turbo_decoder, items, 2, generator=make_generators(0, 1, 2))
    assert [tuple(image.shape) for image in out] == [(3, 32, 32), (3, 16, 48), (3, 32, 32)]
    alone = decode_pt(turbo_decoder, items[1][None], 2, generator=make_generators(1))
    torch.testing.assert_close(out[1], alone[0], atol=1e-5, rtol=1e-4)


def test_flat_ids_with_grid_sizes(turbo_decoder, make_generators):
    grid = grids(1, 2, 3, seed=5)[0]
    flat = decode_pt(turbo_decoder, [grid.flatten().tolist()], 2, generator=make_generators(0), grid_sizes=[(2, 3)])
    shaped = decode_pt(turbo_decoder, grid, 2, generator=make_generators(0))
    torch.testing.assert_close(flat, shaped)


def test_same_seed_same_image_and_different_seed_differs(turbo_decoder, make_generators):
    token_grids = grids(1, 2, 2)
    first = decode_pt(turbo_decoder, token_grids, 2, generator=make_generators(0))
    again = decode_pt(turbo_decoder, token_grids, 2, generator=make_generators(0))
    other = decode_pt(turbo_decoder, token_grids, 2, generator=make_generators(1))
    torch.testing.assert_close(first, again)
    assert not torch.allclose(first, other)


def test_preview_is_low_resolution(turbo_decoder):
    out = turbo_decoder.preview(grids(1, 2, 3), output_type="pt")
    assert out.images.shape == (1, 3, 32, 48)


def test_guidance_is_norm_clipped_to_the_conditional_prediction(normal_decoder):
    transformer = normal_decoder.transformer
    latents = torch.randn(2, 16, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    features = normal_decoder.sigvq.encode_grids(grids(2, 2, 2))
    t = torch.tensor([0.2, 0.7])
    with torch.no_grad():
        cond = predict_velocity(transformer, latents, t, features)
        uncond = predict_velocity(transformer, latents, t, torch.zeros_like(features))
        for scale in (0.5, 1.0, 3.0):
            guided = predict_velocity(transformer, latents, t, features, guidance_scale=scale)
            raw = cond + scale * (cond - uncond)
            for i in range(2):
                limit = cond[i].norm()
                expected = raw[i] * min(1.0, float(limit / raw[i].norm()))
                torch.testing.assert_close(guided[i], expected, atol=1e-5, rtol=1e-4)
                assert guided[i].norm() <= limit * (1 + 1e-5)


def test_offload_keeps_models_usable(turbo_decoder):
    assert turbo_decoder.offload() is turbo_decoder
    assert turbo_decoder.transformer.device.type == "cpu"
    assert decode_pt(turbo_decoder, grids(1, 1, 1), 1).shape == (1, 3, 16, 16)


@pytest.mark.parametrize(
    "token_grids, kwargs, message",
    [
        (torch.full((1, 2, 2), VOCAB), {}, "allowed range"),
        (torch.full((1, 2, 2), -1), {}, "allowed range"),
        (torch.zeros(1, 0, 3, dtype=torch.long), {}, "must be > 0"),
        (torch.zeros(2, 2, dtype=torch.float32), {}, "integer ids"),
        (torch.zeros(2, 2, 2, 2, dtype=torch.long), {}, "shape"),
        ([], {}, "empty"),
        ([[1, 2, 3]], {"grid_sizes": [(2, 2)]}, "needs h \\* w = 4"),
        ([[1, 2, 3, 4]], {"grid_sizes": [(0, 4)]}, "must be > 0"),
        ([[1, 2, 3, 4]], {"grid_sizes": [(-2, -2)]}, "must be > 0"),
        ([[1, 2], [3, 4]], {"grid_sizes": [(2, 2)]}, "entries"),
        (torch.zeros(1, 2, 2, dtype=torch.long), {"num_inference_steps": 0}, "num_inference_steps"),
        (torch.zeros(1, 2, 2, dtype=torch.long), {"resolution_multiplier": 0}, "resolution_multiplier"),
        (torch.zeros(1, 2, 2, dtype=torch.long), {"guidance_scale": -1.0}, "guidance_scale"),
        (torch.zeros(1, 2, 2, dtype=torch.long), {"output_type": "jpeg"}, "output_type"),
        (torch.zeros(2, 2, 2, dtype=torch.long), {"generator": [torch.Generator()]}, "generator list"),
    ],
)
def test_bad_inputs_raise_value_error(turbo_decoder, token_grids, kwargs, message):
    with pytest.raises(ValueError, match=message):
        turbo_decoder(token_grids, **kwargs)


def test_normal_variant_needs_two_schedule_points(normal_decoder):
    with pytest.raises(ValueError, match="num_inference_steps must be an int >= 2"):
        normal_decoder(torch.zeros(1, 1, 1, dtype=torch.long), num_inference_steps=1)


def test_flat_tensor_rows_with_different_grid_sizes(turbo_decoder):
    ids = torch.randint(0, VOCAB, (2, 6))
    out = decode_pt(turbo_decoder, ids, 1, grid_sizes=[(2, 3), (3, 2)])
    assert [tuple(image.shape) for image in out] == [(3, 32, 48), (3, 48, 32)]


def test_bfloat16_load_decodes_to_float_images(tiny_root):
    from unimask.decoders.semantic_decoder import SemanticImageDecoder

    decoder = SemanticImageDecoder.from_pretrained(tiny_root, variant="normal", torch_dtype=torch.bfloat16)
    assert decoder.transformer.dtype == torch.bfloat16 and decoder.vae.dtype == torch.bfloat16
    images = decode_pt(decoder, grids(1, 1, 2), 3)
    assert images.dtype == torch.float32 and torch.isfinite(images).all()
