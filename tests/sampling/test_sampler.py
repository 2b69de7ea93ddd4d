"""End-to-end behaviour of `MaskedDiffusionSampler` on tiny backbones."""

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from unimask.unimodal.sampler import MaskedDiffusionSampler
from unimask.unimodal.sampler_config import SamplerConfig, check_gen_length
from unimask.unimodal.sampler_inputs import (
    SamplerInputs,
    build_unconditional_inputs,
    sample_with_thinking,
    text_continuation_inputs,
)


def make_sampler(model, vocab, kind_vocab_masks, **config):
    return MaskedDiffusionSampler(
        model, mask_id=vocab.mask_id, eos_id=vocab.eos_id, kind_vocab_masks=kind_vocab_masks,
        config=SamplerConfig(**config),
    )


def naive_one_token_per_step(model, input_ids, token_kinds, block_length, kind_vocab_masks, mask_id):
    """Reference: per block, repeatedly run the model on everything up to the block's end with a
    block-causal mask and commit the single most confident masked position (greedy)."""
    x = input_ids.clone()
    length = x.shape[1]
    for start in range(0, length, block_length):
        end = min(length, start + block_length)
        while True:
            masked = [p for p in range(start, end) if x[0, p] == mask_id]
            if not masked:
                break
            attend = torch.tensor([[k // block_length <= q // block_length for k in range(end)] for q in range(end)])
            logits = model(x[:, :end], attention_mask=attend[None, None],
                           position_ids=torch.arange(end)[None], past_key_values=None, use_cache=False).logits[0]
            best = None
            for p in masked:
                scores = logits[p].clone()
                scores[mask_id] = float("-inf")
                allowed = kind_vocab_masks.get(int(token_kinds[0, p]))
                if allowed is not None:
                    scores[~allowed] = float("-inf")
                probs = scores.softmax(-1)
                token = int(probs.argmax())
                if best is None or probs[token] > best[0]:
                    best = (probs[token], p, token)
            x[0, best[1]] = best[2]
    return x


def mixed_layout(vocab, prompt_len=11, text_len=9, image_len=12):
    """prompt | TEXT span | SIZE SIZE | IMAGE span | given eoi-like text token."""
    prompt = vocab.text_prompt(prompt_len)
    ids = torch.cat([prompt, torch.full((text_len + 2 + image_len,), vocab.mask_id), torch.tensor([7])])
    kinds = torch.cat([
        torch.full((prompt_len,), vocab.PROMPT), torch.full((text_len,), vocab.TEXT),
        torch.full((2,), vocab.SIZE), torch.full((image_len,), vocab.IMAGE), torch.tensor([vocab.PROMPT]),
    ]).to(torch.int8)
    return ids[None], kinds[None]


def test_one_token_per_step_greedy_equals_naive_loop(backbone, vocab, kind_vocab_masks):
    input_ids, token_kinds = mixed_layout(vocab)
    sampler = make_sampler(backbone, vocab, kind_vocab_masks, block_length=8, num_inference_steps=8,
                           threshold=1.0, eos_early_stop=False)
    out = sampler(input_ids, token_kinds)
    expected = naive_one_token_per_step(backbone, input_ids, token_kinds, 8, kind_vocab_masks, vocab.mask_id)
    assert torch.equal(out.sequences, expected)
    generated = int((input_ids == vocab.mask_id).sum())
    assert out.stats.nfe == out.stats.denoising_steps == generated
    assert out.stats.tokens_committed == generated


@pytest.mark.parametrize("temperature", [0.0, 0.8])
@pytest.mark.parametrize("guided", [False, True])
def test_prefix_cache_without_pruning_equals_no_cache(backbone, vocab, kind_vocab_masks, temperature, guided):
    inputs = text_continuation_inputs([vocab.text_prompt(13), vocab.text_prompt(6, seed=1)], gen_length=24,
                                      block_length=8, mask_id=vocab.mask_id, pad_id=vocab.pad_id)
    kwargs = inputs.as_kwargs()
    if guided:
        kwargs["uncond_input_ids"], kwargs["uncond_padding_mask"] = build_unconditional_inputs(
            inputs.input_ids, inputs.padding_mask, [vocab.text_prompt(3, seed=5)] * 2,
            mask_id=vocab.mask_id, pad_id=vocab.pad_id)
    sampler = make_sampler(backbone, vocab, kind_vocab_masks, block_length=8, num_inference_steps=4,
                           temperature=temperature, guidance_scale=1.5, eos_early_stop=False)
    plain = sampler(**kwargs, generator=torch.Generator().manual_seed(3))
    cached = sampler(**kwargs, generator=torch.Generator().manual_seed(3), use_sprint=True, keep_ratio=1.0)
    assert torch.equal(plain.sequences, cached.sequences)
    assert cached.stats.cache_builds > 0 and cached.stats.cache_reuses > 0 and cached.stats.cache_prunes == 0
    assert plain.stats.nfe == cached.stats.nfe == plain.stats.denoising_steps * (2 if guided else 1)


def test_keep_ratio_one_equals_no_pruning_and_lower_ratio_prunes(fake_model, vocab, kind_vocab_masks):
    input_ids, token_kinds = mixed_layout(vocab, prompt_len=20, text_len=14, image_len=20)
    sampler = make_sampler(fake_model, vocab, kind_vocab_masks, block_length=8, num_inference_steps=4,
                           use_sprint=True, schedule="adaptive", threshold=0.9)
    unpruned = sampler(input_ids, token_kinds, use_sprint=False)
    # text_keep_ratio 1.0 with an image ratio 1.0 through the pruning code path (not the shortcut)
    explicit_one = sampler(input_ids, token_kinds, keep_ratio=0.5, text_keep_ratio=1.0, image_keep_ratio=1.0)
    assert torch.equal(unpruned.sequences, explicit_one.sequences)
    assert explicit_one.stats.prefix_entries_dropped == 0
    pruned = sampler(input_ids, token_kinds, keep_ratio=0.5)
    assert pruned.stats.cache_prunes > 0 and pruned.stats.prefix_entries_dropped > 0
    assert not (pruned.sequences == vocab.mask_id).any()


def test_threshold_acceptance_never_commits_fewer_than_minimal_topk(vocab, kind_vocab_masks):
    model = vocab.fake_model(logit_scale=40.0)
    input_ids, token_kinds = mixed_layout(vocab, text_len=20, image_len=24)
    commits = []
    previous = {"masks": int((input_ids == vocab.mask_id).sum())}

    def count(step_index, block_index, sequences):
        masks = int((sequences == vocab.mask_id).sum())
        commits.append(previous["masks"] - masks)
        previous["masks"] = masks

    for schedule in ("fixed", "adaptive"):
        commits.clear()
        previous["masks"] = int((input_ids == vocab.mask_id).sum())
        before_steps = []
        sampler = make_sampler(model, vocab, kind_vocab_masks, block_length=8, num_inference_steps=8,
                               minimal_topk=3, threshold=0.5, schedule=schedule, eos_early_stop=False)

        def track(step_index, block_index, sequences):
            block = sequences[:, block_index * 8:(block_index + 1) * 8]
            before_steps.append(int((block == vocab.mask_id).sum()))
            count(step_index, block_index, sequences)

        sampler(input_ids, token_kinds, callback_on_step_end=track)
        masks_before = [after + done for after, done in zip(before_steps, commits)]
        assert all(done >= min(3, before) for done, before in zip(commits, masks_before))
        assert max(commits) > 3  # the threshold accepted extra positions somewhere


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    spans=st.lists(st.tuples(st.sampled_from([1, 2, 3]), st.integers(1, 9)), min_size=1, max_size=4),
    prompt_len=st.integers(1, 12),
    block_length=st.sampled_from([2, 3, 4, 8]),
    steps=st.integers(1, 6),
    remasking=st.sampled_from(["low_confidence", "top_k_margin", "neg_entropy", "random"]),
    schedule=st.sampled_from(["fixed", "adaptive"]),
    temperature=st.sampled_from([0.0, 1.0]),
    use_sprint=st.booleans(),
    keep_ratio=st.sampled_from([0.3, 1.0]),
    seed=st.integers(0, 1000),
)
def test_type_constraints_are_never_violated(fake_model, vocab, kind_vocab_masks, spans, prompt_len, block_length,
                                              steps, remasking, schedule, temperature, use_sprint, keep_ratio, seed):
    ids = [vocab.text_prompt(prompt_len, seed)]
    kinds = [torch.full((prompt_len,), vocab.PROMPT)]
    for kind, length in spans:
        ids.append(torch.full((length,), vocab.mask_id))
        kinds.append(torch.full((length,), kind))
    input_ids, token_kinds = torch.cat(ids)[None], torch.cat(kinds).to(torch.int8)[None]
    sampler = make_sampler(fake_model, vocab, kind_vocab_masks, block_length=block_length,
                           num_inference_steps=steps, remasking=remasking, schedule=schedule,
                           temperature=temperature, use_sprint=use_sprint, keep_ratio=keep_ratio, threshold=0.9)
    out = sampler(input_ids, token_kinds, generator=torch.Generator().manual_seed(seed)).sequences
    assert not (out == vocab.mask_id).any()
    prompt = token_kinds == vocab.PROMPT
    assert torch.equal(out[prompt], input_ids[prompt])
    for kind, allowed in kind_vocab_masks.items():
        assert allowed[out[token_kinds == kind]].all()


def test_guidance_scale_zero_equals_unguided(backbone, vocab, kind_vocab_masks):
    input_ids, token_kinds = mixed_layout(vocab)
    uncond_ids, uncond_valid = build_unconditional_inputs(input_ids, torch.ones_like(input_ids, dtype=torch.bool),
                                                          [vocab.text_prompt(4, seed=9)], mask_id=vocab.mask_id,
                                                          pad_id=vocab.pad_id)
    sampler = make_sampler(backbone, vocab, kind_vocab_masks, block_length=8, num_inference_steps=4)
    unguided = sampler(input_ids, token_kinds)
    zero = sampler(input_ids, token_kinds, uncond_input_ids=uncond_ids, uncond_padding_mask=uncond_valid,
                   guidance_scale=0.0)
    guided = sampler(input_ids, token_kinds, uncond_input_ids=uncond_ids, uncond_padding_mask=uncond_valid,
                     guidance_scale=2.0)
    assert torch.equal(unguided.sequences, zero.sequences)
    assert zero.stats.nfe == unguided.stats.nfe  # no wasted unconditional pass
    assert guided.stats.nfe == 2 * guided.stats.denoising_steps


def test_three_way_guidance_falls_back_from_sprint(fake_model, vocab, kind_vocab_masks):
    input_ids, token_kinds = mixed_layout(vocab)
    valid = torch.ones_like(input_ids, dtype=torch.bool)
    no_text = build_unconditional_inputs(input_ids, valid, [vocab.text_prompt(5, 2)], mask_id=vocab.mask_id,
                                         pad_id=vocab.pad_id)
    no_image = build_unconditional_inputs(input_ids, valid, [vocab.text_prompt(3, 4)], mask_id=vocab.mask_id,
                                          pad_id=vocab.pad_id)
    sampler = make_sampler(fake_model, vocab, kind_vocab_masks, block_length=8, num_inference_steps=4,
                           use_sprint=True, text_guidance_scale=3.0, image_guidance_scale=0.5)
    out = sampler(input_ids, token_kinds, uncond_input_ids=no_text[0], uncond_padding_mask=no_text[1],
                  uncond_image_input_ids=no_image[0], uncond_image_padding_mask=no_image[1])
    assert out.stats.nfe == 3 * out.stats.denoising_steps == 3 * out.stats.model_calls
    assert out.stats.cache_builds == 0 and any("three-way" in r for r in out.stats.fallback_reasons)
    assert not (out.sequences == vocab.mask_id).any()


def test_padded_batch_rows_decode_as_alone_and_per_row_generators(fake_model, vocab, kind_vocab_masks):
    prompts = [vocab.text_prompt(13, 1), vocab.text_prompt(5, 2), vocab.text_prompt(9, 3)]
    sampler = make_sampler(fake_model, vocab, kind_vocab_masks, block_length=4, num_inference_steps=2,
                           temperature=1.0, use_sprint=True, keep_ratio=1.0)
    batch = text_continuation_inputs(prompts, gen_length=12, block_length=4, mask_id=vocab.mask_id,
                                     pad_id=vocab.pad_id)
    together = sampler(**batch.as_kwargs(), generator=[torch.Generator().manual_seed(s) for s in (1, 2, 3)])
    for row, prompt in enumerate(prompts):
        alone_inputs = text_continuation_inputs([prompt], gen_length=12, block_length=4, mask_id=vocab.mask_id,
                                                pad_id=vocab.pad_id)
        alone = sampler(**alone_inputs.as_kwargs(), generator=[torch.Generator().manual_seed(row + 1)])
        width = alone.sequences.shape[1]
        assert torch.equal(together.sequences[row, :width], alone.sequences[0])
        assert (together.sequences[row, width:] == vocab.pad_id).all()


def test_eos_ends_text_generation_early(vocab, kind_vocab_masks):
    model = vocab.fake_model(logit_scale=1.0)
    with torch.no_grad():
        model.head.bias[vocab.eos_id] = 50.0  # the model wants to stop at once
    inputs = text_continuation_inputs([vocab.text_prompt(6)], gen_length=32, block_length=8,
                                      mask_id=vocab.mask_id, pad_id=vocab.pad_id)
    sampler = make_sampler(model, vocab, kind_vocab_masks, block_length=8, num_inference_steps=8)
    out = sampler(**inputs.as_kwargs())
    assert (out.sequences[0, 6:] == vocab.eos_id).all()
    assert out.stats.blocks_decoded == 1 and out.stats.nfe <= 8 and out.stats.eos_filled > 0


def test_callback_sees_every_step_and_blocks_without_masks_are_skipped(fake_model, vocab, kind_vocab_masks):
    input_ids, token_kinds = mixed_layout(vocab, prompt_len=16)  # blocks 0 and 1 are prompt only
    seen = []
    sampler = make_sampler(fake_model, vocab, kind_vocab_masks, block_length=8, num_inference_steps=2)
    out = sampler(input_ids, token_kinds, callback_on_step_end=lambda s, b, seq: seen.append((s, b)))
    assert len(seen) == out.stats.denoising_steps and min(b for _, b in seen) == 2
    assert out.stats.blocks_decoded == len({b for _, b in seen})


def test_thinking_then_image(fake_model, vocab, kind_vocab_masks):
    sampler = make_sampler(fake_model, vocab, kind_vocab_masks, block_length=8, num_inference_steps=4)
    thinking_inputs = text_continuation_inputs([vocab.text_prompt(5)], gen_length=8, block_length=8,
                                               mask_id=vocab.mask_id, pad_id=vocab.pad_id)

    def build_image_inputs(thinking_sequences):
        ids = torch.cat([thinking_sequences, torch.full((1, 16), vocab.mask_id)], dim=1)
        kinds = torch.cat([torch.zeros_like(thinking_sequences), torch.full((1, 16), vocab.IMAGE)], dim=1)
        return SamplerInputs(ids, kinds.to(torch.int8), torch.ones_like(ids, dtype=torch.bool))

    out = sample_with_thinking(sampler, thinking_inputs, build_image_inputs)
    assert torch.equal(out.image.sequences[:, :13], out.thinking.sequences)
    assert (out.image.sequences[0, 13:] >= vocab.image_offset).all()


def test_bad_inputs_raise_value_errors(fake_model, vocab, kind_vocab_masks):
    for bad in [dict(block_length=0), dict(num_inference_steps=0), dict(threshold=0.0), dict(threshold=1.5),
                dict(remasking="lowest"), dict(schedule="cosine"), dict(keep_ratio=0.0), dict(image_keep_ratio=1.2),
                dict(text_keep_ratio=-0.1), dict(guidance_scale=-1.0), dict(image_guidance_scale=-0.5),
                dict(temperature=-1.0), dict(top_p=0.0), dict(top_k=0), dict(minimal_topk=0),
                dict(guidance_rescale=2.0), dict(confidence_alpha=1.5), dict(cache_warmup_steps=0)]:
        with pytest.raises(ValueError, match=f"`{next(iter(bad))}`"):
            SamplerConfig(**bad)
    with pytest.raises(ValueError, match="gen_length"):
        check_gen_length(30, 8)
    with pytest.raises(ValueError, match="gen_length"):
        text_continuation_inputs([vocab.text_prompt(3)], gen_length=12, block_length=8, mask_id=vocab.mask_id,
                                 pad_id=vocab.pad_id)
    sampler = make_sampler(fake_model, vocab, kind_vocab_masks)
    input_ids, token_kinds = mixed_layout(vocab)
    with pytest.raises(ValueError, match="token_kinds"):
        sampler(input_ids, token_kinds[:, :-1])
    with pytest.raises(ValueError, match="PROMPT"):
        sampler(input_ids, torch.zeros_like(token_kinds))
    with pytest.raises(ValueError, match="uncond_input_ids"):
        sampler(input_ids, token_kinds, uncond_input_ids=input_ids[:, :-1])
    with pytest.raises(ValueError, match="generator"):
        sampler(input_ids, token_kinds, generator=[torch.Generator(), torch.Generator()])
    with pytest.raises(ValueError, match="threshold"):
        sampler(input_ids, token_kinds, threshold=2.0)
    with pytest.raises(ValueError, match="kind_vocab_masks"):
        MaskedDiffusionSampler(fake_model, mask_id=vocab.mask_id, kind_vocab_masks={2: torch.zeros(4)})
