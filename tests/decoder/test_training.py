"""Training pieces: flow matching, consistency distillation, VAE objective."""

import copy

import pytest
import torch

from unimask.decoders.decoder_presets import build_decoder
from unimask.decoders.distillation import consistency_function, distillation_gap, distillation_loss
from unimask.decoders.training_losses import flow_matching_loss, vae_loss


@pytest.fixture
def trainable_decoder():
    return build_decoder("tiny", variant="turbo", seed=7)


def make_batch(batch=2, height=2, width=2, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return {
        "pixel_values": torch.rand(batch, 3, height * 16, width * 16, generator=generator) * 2 - 1,
        "token_grids": torch.randint(0, 64, (batch, height, width), generator=generator),
    }


def test_a_few_flow_matching_steps_lower_the_loss(trainable_decoder):
    # The same noise and times every step: the loss on that draw must fall as the transformer fits it.
    batch = make_batch(2, 1, 1)
    optimizer = torch.optim.AdamW(trainable_decoder.transformer.parameters(), lr=3e-3)
    losses = []
    for _ in range(6):
        loss, metrics = flow_matching_loss(trainable_decoder, batch, generator=torch.Generator().manual_seed(1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert set(metrics) == {"flow_matching_loss", "condition_kept"}
    assert losses[-1] < 0.75 * losses[0]


def test_flow_matching_trains_only_the_transformer(trainable_decoder):
    loss, _ = flow_matching_loss(trainable_decoder, make_batch(), generator=torch.Generator().manual_seed(0))
    loss.backward()
    assert all(p.grad is None for p in trainable_decoder.vae.parameters())
    assert all(p.grad is None for p in trainable_decoder.sigvq.parameters())
    assert trainable_decoder.transformer.cap_embedder[1].weight.grad.abs().sum() > 0


def test_multiplier_two_batches_are_accepted(trainable_decoder):
    batch = make_batch(1, 1, 2)
    batch["pixel_values"] = torch.zeros(1, 3, 32, 64)
    loss, _ = flow_matching_loss(trainable_decoder, batch)
    assert torch.isfinite(loss)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda b: b.pop("token_grids"), "token_grids"),
        (lambda b: b.update(pixel_values=torch.zeros(2, 3, 40, 32)), "integer multiplier"),
        (lambda b: b.update(token_grids=b["token_grids"] + 64), "allowed"),
        (lambda b: b.update(token_grids=b["token_grids"][:1]), "batch"),
    ],
)
def test_bad_batches_raise(trainable_decoder, change, message):
    batch = make_batch()
    change(batch)
    with pytest.raises(ValueError, match=message):
        flow_matching_loss(trainable_decoder, batch)


def test_consistency_function_is_identity_at_data_time_one(trainable_decoder):
    latents = torch.randn(1, 16, 1, 4, 4)
    features = trainable_decoder.sigvq.encode_grids(torch.zeros(1, 2, 2, dtype=torch.long))
    with torch.no_grad():
        out = consistency_function(trainable_decoder.transformer, latents, torch.ones(1), features)
    torch.testing.assert_close(out, latents)


def test_distillation_step_updates_the_student_only():
    teacher = build_decoder("tiny", variant="normal", seed=1)
    student = build_decoder("tiny", variant="turbo", seed=1)
    student.transformer.load_state_dict(teacher.transformer.state_dict())
    teacher_before = copy.deepcopy(teacher.transformer.state_dict())
    optimizer = torch.optim.AdamW(student.transformer.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(0)
    loss, metrics = distillation_loss(student, teacher, make_batch(), generator=generator, teacher_steps=10)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss) and 0.0 <= metrics["mean_data_time"] < 1.0
    assert all(p.grad is None for p in teacher.transformer.parameters())
    assert any(not torch.equal(p, teacher_before[n]) for n, p in student.transformer.state_dict().items())
    assert all(torch.equal(p, teacher_before[n]) for n, p in teacher.transformer.state_dict().items())


def test_distillation_gap_reports_every_student_step_count():
    teacher = build_decoder("tiny", variant="normal", seed=1)
    student = build_decoder("tiny", variant="turbo", seed=2)
    grids = torch.randint(0, 64, (1, 1, 1))
    report = distillation_gap(student, teacher, grids, teacher_steps=6, feature_fn=lambda x: x.mean(dim=(2, 3)))
    assert sorted(report) == [1, 2, 4, 8]
    assert all(entry["pixel_mse"] >= 0 and "psnr" in entry and "feature_mse" in entry for entry in report.values())
    same = distillation_gap(teacher, teacher, grids, student_steps=(6,), teacher_steps=6, guidance_scale=0.0)
    assert same[6]["pixel_mse"] == pytest.approx(0.0, abs=1e-10)


def test_vae_loss_decreases_with_training():
    vae = build_decoder("tiny", seed=3).vae
    vae.train()
    batch = {"pixel_values": make_batch(2, 2, 2)["pixel_values"]}
    optimizer = torch.optim.Adam(vae.parameters(), lr=2e-3)
    losses = []
    for step in range(12):
        loss, metrics = vae_loss(vae, batch, generator=torch.Generator().manual_seed(step))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(metrics["reconstruction_l1"])
    assert set(metrics) == {"vae_loss", "reconstruction_l1", "kl"}
    assert min(losses[-3:]) < losses[0]
