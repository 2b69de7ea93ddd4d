"""Scheduler, remasking, guidance and pruning math, without a model."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from unimask.unimodal.guidance import apply_guidance, apply_three_way_guidance, from_official_cfg_scale
from unimask.unimodal.remasking import confidence_scores, filter_logits, sample_candidates
from unimask.unimodal.sampler import fill_after_eos
from unimask.unimodal.sampler_schedule import MaskedBlockScheduler
from unimask.unimodal.sprint import prefix_scores, prefix_top1_confidence, select_prefix_entries


def test_fixed_quota_is_the_official_one():
    quota = MaskedBlockScheduler.get_num_transfer_tokens(32, 5)
    assert quota.tolist() == [7, 7, 6, 6, 6]
    assert MaskedBlockScheduler.get_num_transfer_tokens(32, 32).tolist() == [1] * 32


def test_fixed_threshold_rule_commits_above_set_only_when_it_meets_the_quota():
    scheduler = MaskedBlockScheduler(block_length=8, num_inference_steps=4, threshold=0.5)  # quota 2
    masked = torch.ones(2, 8, dtype=torch.bool)
    probs = torch.tensor([[0.9, 0.8, 0.7, 0.1, 0.1, 0.1, 0.1, 0.1], [0.9, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.2]])
    transfer = scheduler.select_transfer(probs, probs, masked, step_index=0)
    assert transfer[0].tolist() == [True, True, True] + [False] * 5  # 3 above >= quota 2: all three
    assert transfer[1].nonzero().flatten().tolist() == [0, 7]  # 1 above < quota: the 2 best


def test_adaptive_rule_is_ceil_remaining_over_steps_left_plus_threshold():
    scheduler = MaskedBlockScheduler(block_length=8, num_inference_steps=4, schedule="adaptive", threshold=0.85)
    masked = torch.tensor([[True] * 7 + [False]])
    scores = torch.linspace(1.0, 0.2, 8).unsqueeze(0)
    probs = torch.full((1, 8), 0.1)
    probs[0, 6] = 0.9  # above threshold but ranked last among masked
    transfer = scheduler.select_transfer(scores, probs, masked, step_index=1)  # ceil(7 / 3) = 3
    assert transfer[0].nonzero().flatten().tolist() == [0, 1, 2, 6]


@settings(max_examples=60, deadline=None)
@given(
    data=st.data(),
    schedule=st.sampled_from(["fixed", "adaptive"]),
    steps=st.integers(1, 10),
    minimal_topk=st.integers(1, 5),
    threshold=st.floats(0.05, 1.0),
)
def test_scheduler_never_commits_fewer_than_minimal_topk(data, schedule, steps, minimal_topk, threshold):
    block = data.draw(st.integers(1, 12))
    step_index = data.draw(st.integers(0, steps - 1))
    seed = data.draw(st.integers(0, 10_000))
    generator = torch.Generator().manual_seed(seed)
    masked = torch.rand(3, block, generator=generator) < 0.7
    probs = torch.rand(3, block, generator=generator)
    scheduler = MaskedBlockScheduler(block_length=block, num_inference_steps=steps, schedule=schedule,
                                     threshold=threshold, minimal_topk=minimal_topk)
    transfer = scheduler.select_transfer(probs, probs, masked, step_index)
    assert not (transfer & ~masked).any()
    assert (transfer.sum(-1) >= torch.minimum(masked.sum(-1), torch.tensor(minimal_topk))).all()
    if schedule == "fixed":
        above = (probs > threshold) & masked
        quota = scheduler.tokens_to_commit(step_index, masked.sum(-1))
        for row in range(3):
            if above[row].sum() >= quota[row]:
                assert torch.equal(transfer[row], above[row])
            else:
                assert transfer[row].sum() == quota[row]


def test_strategies_and_candidates():
    logits = torch.tensor([[[4.0, 1.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]]])
    candidates, probs = sample_candidates(logits)
    assert candidates.tolist() == [[0, 0]]
    low = confidence_scores(probs, candidates, "low_confidence")
    margin = confidence_scores(probs, candidates, "top_k_margin")
    entropy = confidence_scores(probs, candidates, "neg_entropy")
    assert low[0, 0] > low[0, 1] and margin[0, 1].abs() < 1e-6
    assert entropy[0, 1].abs() < 1e-6 and 0 < entropy[0, 0] < 1
    noise = confidence_scores(probs, candidates, "random", generator=torch.Generator().manual_seed(0))
    again = confidence_scores(probs, candidates, "random", generator=torch.Generator().manual_seed(0))
    assert torch.equal(noise, again)
    with pytest.raises(ValueError, match="remasking"):
        confidence_scores(probs, candidates, "highest_entropy")


def test_top_k_top_p_filters_and_per_row_generators():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    assert torch.isinf(filter_logits(logits, top_k=2, top_p=None)[0, 2:]).all()
    nucleus = filter_logits(logits, top_k=None, top_p=0.7)
    assert torch.isfinite(nucleus[0, :2]).all() and torch.isinf(nucleus[0, 2:]).all()
    batch_logits = torch.randn(3, 5, 50)
    generators = [torch.Generator().manual_seed(s) for s in (1, 2, 3)]
    together, _ = sample_candidates(batch_logits, temperature=1.0, generator=generators)
    alone, _ = sample_candidates(batch_logits[1:2], temperature=1.0, generator=[torch.Generator().manual_seed(2)])
    assert torch.equal(together[1:2], alone)


def test_guidance_scale_zero_is_the_conditional_and_matches_the_official_form():
    cond, uncond, no_image = torch.randn(3, 2, 4, 16).unbind(0)
    assert torch.equal(apply_guidance(cond, uncond, 0.0, guidance_rescale=0.7), cond)
    assert torch.equal(apply_three_way_guidance(cond, uncond, no_image, 0.0, 0.0, 0.7), cond)
    official_scale = 2.0
    official = uncond + official_scale * (cond - uncond)
    ours = apply_guidance(cond, uncond, from_official_cfg_scale(official_scale))
    assert torch.allclose(ours, official, atol=1e-5)
    text, image = 4.0, 1.5
    official = no_image * 0 + uncond + text * (cond - uncond) + image * (uncond - no_image)
    ours = apply_three_way_guidance(cond, uncond, no_image, from_official_cfg_scale(text), image)
    assert torch.allclose(ours, official, atol=1e-5)
    rescaled = apply_guidance(cond, uncond, 3.0, guidance_rescale=1.0)
    assert torch.allclose(rescaled.std(-1), cond.std(-1), rtol=1e-3)


def test_prefix_selection_keeps_ratios_per_kind_and_never_padding():
    scores = torch.tensor([[0.9, 0.1, 0.5, 0.7, 0.3, 0.8, 0.2, 0.6]])
    is_image = torch.tensor([[False, False, False, False, True, True, True, True]])
    valid = torch.tensor([[False, True, True, True, True, True, True, True]])
    keep_index, keep_valid = select_prefix_entries(scores, is_image, valid, 1.0, 0.5)
    kept = set(keep_index[keep_valid].tolist())
    assert kept == {1, 2, 3, 5, 7}  # all valid text; the 2 best of 4 image entries; never the padding
    assert keep_index[0].tolist() == sorted(keep_index[0].tolist())
    keep_index, keep_valid = select_prefix_entries(scores, is_image, valid, 1.0, 1.0)
    assert keep_valid.sum() == valid.sum()
    two_rows = select_prefix_entries(scores.repeat(2, 1), is_image.repeat(2, 1),
                                     torch.stack([valid[0], torch.ones(8, dtype=torch.bool)]), 0.5, 0.5)
    assert two_rows[0].shape == (2, 4) and two_rows[1].sum(-1).tolist() == [4, 4]
    logits = torch.randn(1, 8, 32)
    confidence = prefix_top1_confidence(logits)
    assert torch.allclose(confidence, logits.softmax(-1).max(-1).values)
    blended = prefix_scores(torch.ones(1, 8), confidence, alpha=0.5)
    assert torch.allclose(blended, 0.5 + 0.5 * confidence)
    assert math.isclose(float(prefix_scores(torch.ones(1, 1), torch.zeros(1, 1), 0.25)), 0.25)


def test_eos_fill_waits_for_earlier_masks_and_stays_inside_the_span():
    mask, eos = 9, 1
    text = torch.tensor([[False, True, True, True, True, False, True, True]])
    sequences = torch.tensor([[5, mask, eos, mask, 4, 7, mask, mask]])
    assert fill_after_eos(sequences, text, mask, eos) == 0  # a mask precedes the EOS
    sequences[0, 1] = 3
    assert fill_after_eos(sequences, text, mask, eos) == 1
    assert sequences.tolist() == [[5, 3, eos, eos, eos, 7, mask, mask]]
