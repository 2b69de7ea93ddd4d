"""Masked-diffusion, SFT and block-diffusion objectives and the block-size schedule."""

from __future__ import annotations

import pytest
import torch

from unimask.unimodal.losses import (
    block_diffusion_loss,
    block_size_schedule,
    masked_diffusion_loss,
    sample_mask_ratios,
    sft_masked_diffusion_loss,
)

MASK_ID = 1


def joint_batch():
    """4 sequences of 8 text ids followed by 8 image codes (ids >= 256), with a modality map."""
    generator = torch.Generator().manual_seed(0)
    text = torch.randint(2, 256, (4, 8), generator=generator)
    image = torch.randint(256, 512, (4, 8), generator=generator)
    ids = torch.cat([text, image], dim=1)
    modality = torch.cat([torch.zeros(4, 8, dtype=torch.long), torch.ones(4, 8, dtype=torch.long)], dim=1)
    return ids, modality


def evaluate(loss_fn, model, ids, **kwargs):
    with torch.no_grad():
        losses = [loss_fn(model, ids, generator=torch.Generator().manual_seed(seed), **kwargs)[0] for seed in range(4)]
    return torch.stack(losses).mean().item()


@pytest.mark.parametrize(
    ("loss_fn", "extra"),
    [
        (masked_diffusion_loss, {}),
        (block_diffusion_loss, {"block_length": 4}),
        (lambda model, ids, **kw: sft_masked_diffusion_loss(model, ids, RESPONSE, **kw), {}),
    ],
    ids=["masked_diffusion", "block_diffusion", "sft"],
)
def test_loss_falls_when_overfitting(make_tiny_backbone, loss_fn, extra):
    model = make_tiny_backbone().train()
    ids, modality = joint_batch()
    kwargs = dict(mask_token_id=MASK_ID, modality=modality, **extra)
    before = evaluate(loss_fn, model, ids, **kwargs)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-2)
    generator = torch.Generator().manual_seed(100)
    for _ in range(80):
        loss, metrics = loss_fn(model, ids, generator=generator, **kwargs)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = evaluate(loss_fn, model, ids, **kwargs)
    assert after < 0.7 * before, (before, after)
    assert {"loss", "mask_ratio", "masked_tokens/text", "masked_tokens/image"} <= set(metrics)


RESPONSE = torch.zeros(4, 16, dtype=torch.bool)
RESPONSE[:, 10:] = True


class RecordingModel(torch.nn.Module):
    """Returns uniform logits and records its inputs."""

    def __init__(self, vocab: int = 512):
        super().__init__()
        self.vocab = vocab
        self.calls = []
        self.anchor = torch.nn.Parameter(torch.zeros(()))

    def forward(self, input_ids, **kwargs):
        self.calls.append((input_ids.clone(), kwargs))
        logits = torch.zeros(*input_ids.shape, self.vocab) + self.anchor
        return type("Out", (), {"logits": logits, "router_stats": None, "aux_loss": None})()


def test_sft_masks_only_response_tokens_and_normalises_by_their_count():
    model = RecordingModel()
    ids, modality = joint_batch()
    loss, metrics = sft_masked_diffusion_loss(
        model, ids, RESPONSE, mask_token_id=MASK_ID, modality=modality, generator=torch.Generator().manual_seed(1)
    )
    noisy = model.calls[0][0]
    assert torch.equal(noisy[:, :10], ids[:, :10])
    masked = noisy == MASK_ID
    assert masked[:, 10:].any()
    # uniform logits: CE = log V per masked token, weighted by 1/t of its row
    assert metrics["ce"] == pytest.approx(torch.log(torch.tensor(512.0)).item(), rel=1e-5)
    assert metrics["masked_tokens/text"] == 0 and metrics["masked_tokens/image"] == masked.sum().item()


def test_masked_diffusion_loss_is_unbiased_estimate_of_log_v_per_token():
    # With uniform predictions the ELBO is exactly log V per maskable token in expectation.
    model = RecordingModel()
    ids = torch.randint(2, 512, (1024, 16), generator=torch.Generator().manual_seed(2))
    loss, _ = masked_diffusion_loss(
        model, ids, mask_token_id=MASK_ID, eps=0.1, generator=torch.Generator().manual_seed(3)
    )
    assert loss.item() == pytest.approx(torch.log(torch.tensor(512.0)).item(), rel=0.05)


def test_block_diffusion_packs_noisy_and_clean_copies():
    model = RecordingModel()
    ids, _ = joint_batch()
    block_diffusion_loss(model, ids, mask_token_id=MASK_ID, block_length=4, generator=torch.Generator().manual_seed(4))
    packed, kwargs = model.calls[0]
    assert packed.shape == (4, 32)
    assert torch.equal(packed[:, 16:], ids)
    kept = packed[:, :16] != MASK_ID
    assert torch.equal(packed[:, :16][kept], ids[kept])
    assert torch.equal(kwargs["position_ids"], torch.arange(16).repeat(2).expand(4, -1))
    assert kwargs["attention_mask"].shape == (32, 32)


def test_stratified_ratios_cover_every_stratum():
    ratios = sample_mask_ratios(8, eps=0.0, generator=torch.Generator().manual_seed(0))
    assert sorted((ratios * 8).floor().long().tolist()) == list(range(8))
    assert (sample_mask_ratios(100, stratified=False, eps=0.2) >= 0.2).all()


def test_block_size_schedule_warmup_stable_decay():
    kwargs = dict(warmup_steps=4, stable_steps=3, decay_steps=2, max_block_length=256, final_block_length=32)
    sizes = [block_size_schedule(step, **kwargs) for step in range(12)]
    assert sizes[0] == 1
    assert sizes[:4] == sorted(sizes[:4]) and sizes[3] < 256
    assert sizes[4:7] == [256, 256, 256]
    assert sizes[7] < 256 and sizes[8:] == [32, 32, 32, 32]
    short = dict(kwargs, max_block_length=16)  # a short packed batch: sizes clamp to it
    assert block_size_schedule(20, **short) == 16 and block_size_schedule(5, **short) == 16
    with pytest.raises(ValueError, match="final_block_length=0"):
        block_size_schedule(0, **dict(kwargs, final_block_length=0))


def test_losses_validate_shapes(tiny_backbone):
    ids, modality = joint_batch()
    with pytest.raises(ValueError, match=r"modality has shape \(4, 15\)"):
        masked_diffusion_loss(tiny_backbone, ids, mask_token_id=MASK_ID, modality=modality[:, :15])
    with pytest.raises(ValueError, match="block_length=0"):
        block_diffusion_loss(tiny_backbone, ids, mask_token_id=MASK_ID, block_length=0)


@pytest.mark.parametrize(
    ("loss_fn", "extra"),
    [(masked_diffusion_loss, {}), (block_diffusion_loss, {"block_length": 4})],
    ids=["masked_diffusion", "block_diffusion"],
)
def test_text_loss_weight_scales_text_positions_only(loss_fn, extra):
    ids, modality = joint_batch()

    def loss(weight, modality_map):
        model = RecordingModel()  # uniform logits: every masked token costs log V
        generator = torch.Generator().manual_seed(5)  # the same masks for every weight
        return loss_fn(model, ids, mask_token_id=MASK_ID, modality=modality_map, text_loss_weight=weight,
                       generator=generator, **extra)[0].item()

    all_text, all_image = torch.zeros_like(modality), torch.ones_like(modality)
    assert loss(3.0, all_text) == pytest.approx(3.0 * loss(1.0, all_text), rel=1e-6)
    assert loss(3.0, all_image) == pytest.approx(loss(1.0, all_image), rel=1e-6)
    mixed = loss(3.0, modality)
    assert loss(1.0, modality) < mixed < 3.0 * loss(1.0, modality)


def test_text_loss_weight_is_validated():
    ids, modality = joint_batch()
    model = RecordingModel()
    with pytest.raises(ValueError, match="text_loss_weight=0"):
        masked_diffusion_loss(model, ids, mask_token_id=MASK_ID, modality=modality, text_loss_weight=0)
    with pytest.raises(ValueError, match="needs modality"):
        block_diffusion_loss(model, ids, mask_token_id=MASK_ID, block_length=4, text_loss_weight=2.0)


def test_force_masked_positions_are_always_masked_and_weighted_as_ratio_one():
    ids, modality = joint_batch()
    forced = torch.zeros_like(ids, dtype=torch.bool)
    forced[:, :3] = True  # the first three text positions of every row

    def run(force):
        model = RecordingModel()
        loss = masked_diffusion_loss(model, ids, mask_token_id=MASK_ID, modality=modality, force_masked=force,
                                     generator=torch.Generator().manual_seed(2))[0].item()
        return model.calls[0][0], loss

    noisy, _ = run(forced)
    plain_noisy, _ = run(None)
    assert (noisy[:, :3] == MASK_ID).all()
    # Elsewhere the row ratios draw the same masks as without forcing.
    assert torch.equal(noisy[:, 3:], plain_noisy[:, 3:])
    # Uniform logits cost log V per masked token: forced positions weigh 1, the others 1/t.
    everything = torch.ones_like(forced)
    _, all_forced_loss = run(everything)
    assert all_forced_loss == pytest.approx(torch.log(torch.tensor(512.0)).item(), rel=1e-5)
    with pytest.raises(ValueError, match="force_masked has shape"):
        masked_diffusion_loss(RecordingModel(), ids, mask_token_id=MASK_ID, force_masked=forced[:, :4])
