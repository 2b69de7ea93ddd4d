"""Draft network: a SigVQ whose draft is regressed from each code and its neighbours, trained by its
own loss beside (or before) the flow loss, and a stage that continues a per-code-patch decoder with it."""

import copy

import pytest
import torch
import yaml

from unimask.config import ConfigError
from unimask.decoders.decoder_presets import build_decoder, load_decoder_preset
from unimask.decoders.draft_network import DraftNetwork
from unimask.decoders.semantic_decoder import SemanticImageDecoder
from unimask.decoders.sigvq import SigVQEmbedding
from unimask.decoders.training_losses import draft_loss, draft_pixel_loss, flow_matching_loss, foreground_mask
from unimask.decoders.vae_latents import decode_latents
from unimask.training.recipe import DataSection, TrainRecipe
from unimask.training.stage_decoder_flow import DecoderFlowStage

# tiny preset: 16 latent channels (which a draft network regresses) and an 8x VAE, so 2 latent pixels a
# 16 px token at multiplier 1
DRAFT_CHANNELS, DRAFT_PATCH = 16, 2


def network_preset(layers=2, width=16):
    preset = copy.deepcopy(load_decoder_preset("tiny"))
    preset["sigvq"].update(draft_channels=DRAFT_CHANNELS, draft_patch=DRAFT_PATCH, draft_layers=layers, draft_width=width)
    preset["transformer"]["in_channels"] += DRAFT_CHANNELS
    return preset


@pytest.fixture
def network_decoder():
    return build_decoder(network_preset(), variant="normal", seed=3)


def pixel_batch(make_grids):
    return {"pixel_values": torch.rand(2, 3, 32, 32) * 2 - 1, "token_grids": make_grids()}


def test_draft_of_a_cell_reads_its_neighbours():
    torch.manual_seed(0)
    network = DraftNetwork(vocab_size=8, width=16, layers=1, channels=3, patch=2)
    grid = torch.zeros(1, 5, 5, dtype=torch.long)
    base = network(grid)
    assert base.shape == (1, 3, 10, 10)
    near = grid.clone()
    near[0, 2, 3] = 5  # right neighbour of cell (2, 2)
    cell = (..., slice(4, 6), slice(4, 6))
    assert not torch.allclose(network(near)[cell], base[cell])


@pytest.mark.parametrize("kwargs", [{"width": 12}, {"layers": 0}, {"channels": 0}, {"patch": 0}])
def test_draft_network_refuses_bad_sizes(kwargs):
    args = {"vocab_size": 8, "width": 16, "layers": 1, "channels": 2, "patch": 2, **kwargs}
    with pytest.raises(ValueError, match="DraftNetwork needs"):
        DraftNetwork(**args)


def test_sigvq_draft_network_settings_must_come_together():
    with pytest.raises(ValueError, match="draft_layers"):
        SigVQEmbedding(vocab_size=8, inner_dim=4, draft_layers=2, draft_width=16)  # no draft channels
    with pytest.raises(ValueError, match="draft_layers"):
        SigVQEmbedding(vocab_size=8, inner_dim=4, draft_channels=2, draft_patch=2, draft_layers=2)  # no width
    sigvq = SigVQEmbedding(vocab_size=8, inner_dim=4, draft_channels=2, draft_patch=2, draft_layers=1, draft_width=8)
    assert sigvq.has_draft_network and not hasattr(sigvq, "draft_latent_patches")
    draft = sigvq.draft_latents(torch.zeros(3, 2, 4, dtype=torch.long), (8, 16))  # multiplier 2: resized
    assert draft.shape == (3, 2, 1, 8, 16)
    assert set(map(id, sigvq.draft_parameters())) == set(map(id, sigvq.draft_network.parameters()))


def test_draft_loss_trains_only_the_draft_network(network_decoder, make_grids):
    network_decoder.sigvq.requires_grad_(True)
    network_decoder.transformer.requires_grad_(True)
    loss, metrics = draft_loss(network_decoder, pixel_batch(make_grids))
    loss.backward()
    assert metrics["draft_loss"] == pytest.approx(float(loss.detach()))
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in network_decoder.sigvq.draft_network.head.parameters())
    assert all(p.grad is None for p in network_decoder.transformer.parameters())
    with pytest.raises(ValueError, match="draft network"):
        draft_loss(build_decoder("tiny", seed=1), pixel_batch(make_grids))


def test_draft_pixel_loss_is_the_l1_of_the_decoded_draft_and_trains_only_the_network(network_decoder, make_grids):
    network_decoder.sigvq.draft_network.requires_grad_(True)
    network_decoder.transformer.requires_grad_(True)
    network_decoder.vae.requires_grad_(False)
    batch = pixel_batch(make_grids)
    loss, metrics = draft_pixel_loss(network_decoder, batch)
    loss.backward()
    with torch.no_grad():
        draft = network_decoder.sigvq.draft_latents(batch["token_grids"], (4, 4))
        expected = (decode_latents(network_decoder.vae, draft) - (batch["pixel_values"] + 1) / 2).abs().mean()
    assert float(loss.detach()) == pytest.approx(float(expected), rel=1e-5)
    assert metrics == {"draft_pixel_loss": pytest.approx(float(expected), rel=1e-5)}
    # the gradient reaches the network through the frozen VAE decoder, and nothing else
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in network_decoder.sigvq.draft_network.head.parameters())
    assert all(p.grad is None for p in network_decoder.transformer.parameters())
    assert all(p.grad is None for p in network_decoder.vae.parameters())
    with pytest.raises(ValueError, match="draft network"):
        draft_pixel_loss(build_decoder("tiny", seed=1), pixel_batch(make_grids))


def test_foreground_mask_marks_pixels_unlike_the_top_left_one():
    images = torch.full((2, 3, 8, 8), 0.5)
    images[0, :, 2:5, 3:6] = torch.tensor([0.9, 0.1, 0.1]).view(3, 1, 1)
    images[1, 1, 6, 7] = 0.5 + 2 / 255  # one channel a step or two off is foreground
    images[1, 0, 1, 1] = 0.5 + 0.002  # below a colour step is background (decoded-image noise)
    mask = foreground_mask(images)
    assert mask.shape == (2, 1, 8, 8)
    expected = torch.zeros(2, 1, 8, 8)
    expected[0, 0, 2:5, 3:6] = 1
    expected[1, 0, 6, 7] = 1
    assert torch.equal(mask, expected)


def test_foreground_weight_weighs_the_pixels_unlike_the_background(network_decoder, make_grids):
    batch = pixel_batch(make_grids)
    batch["pixel_values"][:, :, :1, :1] = -1.0  # a black top-left pixel: the background colour
    batch["pixel_values"][0, :, 4:10, 4:10] = -1.0  # a patch of background inside the first image too
    plain, plain_metrics = draft_pixel_loss(network_decoder, batch)
    weighted, metrics = draft_pixel_loss(network_decoder, batch, foreground_weight=3.0)
    with torch.no_grad():
        draft = network_decoder.sigvq.draft_latents(batch["token_grids"], (4, 4))
        target = (batch["pixel_values"] + 1) / 2
        error = (decode_latents(network_decoder.vae, draft) - target).abs()
        weight = 1 + 2 * foreground_mask(target)
        expected = (error * weight).sum() / (weight.sum() * 3)
    assert float(weighted) == pytest.approx(float(expected), rel=1e-5)
    assert float(weighted) != pytest.approx(float(plain), rel=1e-4)
    # the metric stays the plain L1, so logs of runs with and without the weight compare
    assert metrics == {"draft_pixel_loss": pytest.approx(plain_metrics["draft_pixel_loss"], rel=1e-5)}
    for bad in (0.5, True, "2"):
        with pytest.raises(ValueError, match="foreground_weight"):
            draft_pixel_loss(network_decoder, batch, foreground_weight=bad)


def test_a_few_pixel_loss_steps_fit_images_the_vae_can_draw(network_decoder, make_grids):
    torch.manual_seed(0)
    grids = make_grids()
    with torch.no_grad():  # targets the frozen VAE can draw: another network's decoded draft
        target = decode_latents(network_decoder.vae, torch.randn(2, DRAFT_CHANNELS, 1, 4, 4))
    batch = {"pixel_values": target * 2 - 1, "token_grids": grids}
    network = network_decoder.sigvq.draft_network.requires_grad_(True)
    start = float(draft_pixel_loss(network_decoder, batch)[0].detach())
    optimizer = torch.optim.Adam(network.parameters(), lr=1e-2)
    for _ in range(30):
        loss, _ = draft_pixel_loss(network_decoder, batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert float(draft_pixel_loss(network_decoder, batch)[0].detach()) < 0.7 * start


@pytest.mark.parametrize("weight", [0.0, 1.0])
def test_flow_loss_reads_the_draft_detached_and_adds_its_regression(network_decoder, make_grids, weight):
    network_decoder.sigvq.draft_network.requires_grad_(True)
    network_decoder.transformer.requires_grad_(True)
    with torch.no_grad():
        network_decoder.transformer.all_x_embedder["2-1"].weight.normal_()  # the draft columns matter
    batch = pixel_batch(make_grids)
    generator = torch.Generator().manual_seed(0)
    loss, metrics = flow_matching_loss(network_decoder, batch, generator=generator, draft_loss_weight=weight)
    loss.backward()
    assert {"draft_loss", "flow_matching_loss"} <= set(metrics)
    assert float(loss.detach()) == pytest.approx(metrics["flow_matching_loss"] + weight * metrics["draft_loss"], rel=1e-5)
    head_grad = network_decoder.sigvq.draft_network.head.weight.grad
    # weight 0: the flow term alone, which must not reach the draft network through the transformer
    assert (head_grad is not None and head_grad.abs().sum() > 0) == (weight > 0)


def test_saved_network_decoder_decodes_the_same(network_decoder, tmp_path, make_grids):
    network_decoder.save_pretrained(tmp_path)
    loaded = SemanticImageDecoder.from_pretrained(tmp_path)
    assert (loaded.sigvq.config.draft_layers, loaded.sigvq.config.draft_width) == (2, 16)
    common = {"num_inference_steps": 3, "output_type": "pt", "resolution_multiplier": 1}
    first = network_decoder(make_grids(1, 2, 2), generator=torch.Generator().manual_seed(0), **common).images
    again = loaded(make_grids(1, 2, 2), generator=torch.Generator().manual_seed(0), **common).images
    torch.testing.assert_close(first, again)


def _recipe(tmp_path, preset, **options):
    return TrainRecipe(stage="decoder_flow", out_dir=str(tmp_path / "out"), data=DataSection(shards=["unused"]),
                       model={"preset": preset}, stage_options=options)


def _write_preset(tmp_path, name, preset):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(preset))
    return str(path)


def test_decoder_flow_continues_a_patch_draft_decoder_with_a_network(tmp_path):
    patch_preset = network_preset()
    del patch_preset["sigvq"]["draft_layers"], patch_preset["sigvq"]["draft_width"]
    first = DecoderFlowStage(_recipe(tmp_path, _write_preset(tmp_path, "patch.yaml", patch_preset))).build_model()
    for part in ("transformer", "sigvq"):
        getattr(first, part).save_pretrained(tmp_path / "decoder" / part)
    network_path = _write_preset(tmp_path, "network.yaml", network_preset())
    parts = DecoderFlowStage(_recipe(tmp_path, network_path, init=str(tmp_path / "decoder"))).build_model()
    # the transformer (draft input channels included) comes over unchanged; the patches are dropped
    for name, tensor in first.transformer.state_dict().items():
        assert torch.equal(parts.transformer.state_dict()[name], tensor), name
    assert "draft_latent_patches" not in parts.sigvq.state_dict()
    assert parts.sigvq.draft_network.head.weight.requires_grad and parts.transformer.all_x_embedder["2-1"].weight.requires_grad

    only = DecoderFlowStage(_recipe(tmp_path, network_path, init=str(tmp_path / "decoder"), draft_only=True))
    model = only.build_model()
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == {f"sigvq.draft_network.{name}" for name, _ in model.sigvq.draft_network.named_parameters()}
    loss, metrics = only.loss(model, {"pixel_values": torch.rand(2, 3, 32, 32) * 2 - 1,
                                      "token_grids": torch.randint(0, 64, (2, 2, 2))})
    assert set(metrics) == {"draft_loss"}

    pixel = DecoderFlowStage(_recipe(tmp_path, network_path, init=str(tmp_path / "decoder"), draft_only=True,
                                     draft_objective="pixel_l1"))
    model = pixel.build_model()
    _, metrics = pixel.loss(model, {"pixel_values": torch.rand(2, 3, 32, 32) * 2 - 1,
                                    "token_grids": torch.randint(0, 64, (2, 2, 2))})
    assert set(metrics) == {"draft_pixel_loss"}
    weighted = DecoderFlowStage(_recipe(tmp_path, network_path, init=str(tmp_path / "decoder"), draft_only=True,
                                        draft_objective="pixel_l1", foreground_weight=2.0))
    batch = {"pixel_values": torch.rand(2, 3, 32, 32) * 2 - 1, "token_grids": torch.randint(0, 64, (2, 2, 2))}
    assert float(weighted.loss(model, batch)[0]) == pytest.approx(float(draft_pixel_loss(model, batch, 2.0)[0]), rel=1e-5)


def test_a_draft_network_must_write_the_latent_channels(tmp_path):
    preset = network_preset()
    preset["sigvq"]["draft_channels"] = 4
    preset["transformer"]["in_channels"] = 20
    with pytest.raises(ValueError, match="latent_channels"):
        load_decoder_preset(_write_preset(tmp_path, "bad.yaml", preset))


@pytest.mark.parametrize(
    ("preset", "options", "message"),
    [
        ("tiny", {"draft_only": True}, "draft network"),
        ("network", {"draft_only": "yes"}, "draft_only"),
        ("network", {"draft_loss_weight": -1.0}, "draft_loss_weight"),
        ("network", {"draft_only": True, "draft_objective": "pixel_l2"}, "draft_objective must be one of"),
        ("network", {"draft_objective": "pixel_l1"}, "needs draft_only"),
        ("network", {"draft_only": True, "draft_objective": "pixel_l1", "foreground_weight": 0.5}, "foreground_weight"),
        ("network", {"draft_only": True, "foreground_weight": 2.0}, "needs draft_objective: pixel_l1"),
    ],
)
def test_decoder_flow_refuses_bad_draft_options(tmp_path, preset, options, message):
    if preset == "network":
        preset = _write_preset(tmp_path, "network.yaml", network_preset())
    with pytest.raises(ConfigError, match=message):
        DecoderFlowStage(_recipe(tmp_path, preset, **options))


def test_draft_strength_starts_sampling_from_the_draft(network_decoder, tmp_path, make_grids):
    decoder = SemanticImageDecoder(sigvq=network_decoder.sigvq, transformer=network_decoder.transformer,
                                   vae=network_decoder.vae, scheduler=build_decoder("tiny", variant="turbo").scheduler,
                                   decoder_variant="turbo", draft_strength=0.25)
    grids = make_grids(2, 2, 2)
    steps_run = []
    common = {"num_inference_steps": 8, "output_type": "pt", "resolution_multiplier": 1}
    decoder(grids, generator=torch.Generator().manual_seed(0), callback=lambda step, t, x: steps_run.append((step, t)), **common)
    assert steps_run == [(6, 0.75), (7, 0.875)]  # only the turbo grid's points at data time >= 1 - 0.25
    # strength 0 decodes the draft itself, with no transformer step
    steps_run.clear()
    images = decoder(grids, draft_strength=0.0, generator=torch.Generator().manual_seed(0), **common).images
    assert steps_run == []
    with torch.no_grad():
        draft = decoder.sigvq.draft_latents(grids, (4, 4))
        expected = decode_latents(decoder.vae, draft)
    torch.testing.assert_close(images, expected)
    # the strength is saved with the decoder and is the loaded one's default
    decoder.save_pretrained(tmp_path)
    assert SemanticImageDecoder.from_pretrained(tmp_path).config.draft_strength == 0.25


def test_draft_strength_needs_a_draft_network_and_a_range(network_decoder, make_grids):
    plain = build_decoder("tiny", variant="turbo", seed=1)
    with pytest.raises(ValueError, match="draft network"):
        plain(make_grids(1, 2, 2), draft_strength=0.5, output_type="pt")
    for bad in (-0.1, 1.5, True):
        with pytest.raises(ValueError, match="draft_strength"):
            network_decoder(make_grids(1, 2, 2), draft_strength=bad, output_type="pt")
    # 1.0 is the reference sampler from noise, for any decoder
    assert plain(make_grids(1, 2, 2), draft_strength=1.0, num_inference_steps=2, output_type="pt").images.shape[:2] == (1, 3)


def test_transformer_steps_counts_what_the_sampler_runs(network_decoder):
    turbo = SemanticImageDecoder(sigvq=network_decoder.sigvq, transformer=network_decoder.transformer,
                                 vae=network_decoder.vae, scheduler=build_decoder("tiny", variant="turbo").scheduler,
                                 decoder_variant="turbo", draft_strength=0.25)
    assert turbo.transformer_steps(8) == 2
    assert turbo.transformer_steps(8, draft_strength=1.0) == 8
    assert turbo.transformer_steps(8, draft_strength=0.0) == 0
    assert network_decoder.transformer_steps(50) == 49  # the ODE's 50-point grid takes 49 Euler steps


def test_transformer_steps_match_the_shifted_normal_grid(network_decoder, make_grids):
    normal = SemanticImageDecoder(sigvq=network_decoder.sigvq, transformer=network_decoder.transformer,
                                  vae=network_decoder.vae, scheduler=network_decoder.scheduler,
                                  decoder_variant="normal", draft_strength=0.5)
    seen = []
    normal(make_grids(1, 2, 2), num_inference_steps=10, output_type="pt", callback=lambda step, t, x: seen.append(t))
    assert seen and min(seen) >= 0.5 - 1e-6
    assert normal.transformer_steps(10) == len(seen)
