"""Every numeric sampling option at and past its bounds: `SamplerConfig`, sampler call overrides and
the image decoder's call options; a model that returns NaN logits.

Already covered elsewhere (see docs/robustness.md): simple out-of-range values of every
SamplerConfig option (tests/sampling/test_sampler.py::test_bad_inputs_raise_value_errors) and of the
decoder's options (tests/decoder/test_decode.py::test_bad_inputs_raise_value_error).
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from unimask.unimodal.sampler import MaskedDiffusionSampler
from unimask.unimodal.sampler_config import SamplerConfig, check_gen_length

NAN, INF = float("nan"), float("inf")

# option -> (values at the bounds that must be accepted, values past them that must be refused)
BOUNDS = {
    "block_length": ([1, 4096], [0, -1, True, 2.0, "8", None]),
    "num_inference_steps": ([1, 10_000], [0, False, 1.5]),
    "minimal_topk": ([1, 64], [0, True]),
    "cache_warmup_steps": ([1], [0, 1.0]),
    "threshold": ([1.0, 1e-6], [0.0, 1.0000001, NAN, INF, "0.9", None, True]),
    "temperature": ([0.0, 100.0], [-1e-9, NAN, INF, None, "1"]),
    "top_k": ([None, 1, 10**9], [0, True, 2.5, "5"]),
    "top_p": ([None, 1.0, 1e-6], [0.0, 1.5, NAN, INF]),
    "guidance_scale": ([0.0, 50.0], [-0.1, NAN, INF, -INF, True]),
    "text_guidance_scale": ([0.0], [-1.0, NAN, INF]),
    "image_guidance_scale": ([0.0], [-1.0, NAN, INF]),
    "guidance_rescale": ([0.0, 1.0], [-0.01, 1.01, NAN]),
    "keep_ratio": ([1.0, 1e-6], [0.0, 1.01, NAN]),
    "text_keep_ratio": ([None, 1.0], [0.0, NAN, INF]),
    "image_keep_ratio": ([None, 1.0], [0.0, NAN]),
    "confidence_alpha": ([0.0, 1.0], [-0.01, 1.01, NAN]),
    "use_sprint": ([True, False], ["yes", 1, None]),
    "eos_early_stop": ([True, False], ["no", 0]),
}


@pytest.mark.parametrize("option", sorted(BOUNDS))
def test_sampler_config_accepts_its_bounds_and_refuses_past_them(option):
    accepted, refused = BOUNDS[option]
    for value in accepted:
        assert getattr(SamplerConfig(**{option: value}), option) == value
    for value in refused:
        with pytest.raises(ValueError, match=f"`{option}`"):
            SamplerConfig(**{option: value})


def test_numpy_scalars_are_accepted_like_python_numbers():
    config = SamplerConfig(block_length=np.int64(8), threshold=np.float32(0.5), temperature=np.float64(0.7))
    assert config.block_length == 8
    with pytest.raises(ValueError, match="`threshold`"):
        SamplerConfig(threshold=np.float32("nan"))


@pytest.mark.parametrize("gen_length", [0, -8, 12, True, 8.0])
def test_gen_length_must_be_a_positive_multiple_of_the_block(gen_length):
    with pytest.raises(ValueError, match="gen_length"):
        check_gen_length(gen_length, 8)


VOCAB, MASK_ID, EOS_ID = 64, 63, 1


class RandomLogitsLM(nn.Module):
    """Returns fixed-seed random logits (B, L, VOCAB); `poison` overwrites column 5 (NaN, inf, ...)."""

    def __init__(self, poison: float | None = None):
        super().__init__()
        self.poison = poison
        self.anchor = nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, attention_mask=None, position_ids=None, past_key_values=None, use_cache=False):
        logits = torch.randn(*input_ids.shape, VOCAB, generator=torch.Generator().manual_seed(0))
        if self.poison is not None:
            logits[..., 5] = self.poison
        return SimpleNamespace(logits=logits, past_key_values=None)


def tiny_sampler(poison=None) -> MaskedDiffusionSampler:
    text = torch.zeros(VOCAB, dtype=torch.bool)
    text[2:60] = True
    return MaskedDiffusionSampler(
        RandomLogitsLM(poison), mask_id=MASK_ID, eos_id=EOS_ID, kind_vocab_masks={1: text},
        config=SamplerConfig(block_length=4, num_inference_steps=4),
    )


def tiny_inputs():
    ids = torch.tensor([[3, 4, 5, 6, MASK_ID, MASK_ID, MASK_ID, MASK_ID]])
    kinds = torch.tensor([[0, 0, 0, 0, 1, 1, 1, 1]], dtype=torch.int8)
    return ids, kinds


@pytest.mark.parametrize(
    "override", [dict(temperature=NAN), dict(top_k=0), dict(top_p=INF), dict(guidance_scale=NAN), dict(block_length=True)]
)
def test_call_time_overrides_are_validated_like_the_config(override):
    with pytest.raises(ValueError, match=f"`{next(iter(override))}`"):
        tiny_sampler()(*tiny_inputs(), **override)


@pytest.mark.parametrize("override", [dict(), dict(temperature=1.0, top_p=1.0), dict(top_k=1, temperature=0.5)])
def test_options_at_their_bounds_fill_every_mask_with_allowed_ids(override):
    out = tiny_sampler()(*tiny_inputs(), **override).sequences
    assert (out != MASK_ID).all() and ((out[0, 4:] >= 2) & (out[0, 4:] < 60)).all()


@pytest.mark.parametrize("poison", [NAN, INF])
@pytest.mark.parametrize("override", [dict(), dict(temperature=1.0, top_p=0.9)])
def test_non_finite_model_logits_raise_instead_of_committing_garbage(poison, override):
    with pytest.raises(FloatingPointError, match="non-finite logits"):
        tiny_sampler(poison)(*tiny_inputs(), **override)


def test_minus_infinity_logits_are_a_legal_ban():
    out = tiny_sampler(-INF)(*tiny_inputs()).sequences
    assert (out[0, 4:] != 5).all()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(guidance_scale=NAN), "finite number"),
        (dict(guidance_scale=INF), "finite number"),
        (dict(guidance_scale=True), "guidance_scale"),
        (dict(guidance_scale="1"), "guidance_scale"),
        (dict(resolution_multiplier=True), "resolution_multiplier"),
        (dict(resolution_multiplier=9), r"\[1, 8\]"),
        (dict(resolution_multiplier=2.0), "resolution_multiplier"),
        (dict(num_inference_steps=True), "num_inference_steps"),
        (dict(num_inference_steps=1001), "<= 1000"),
        (dict(num_inference_steps=2.0), "num_inference_steps"),
        (dict(output_type=None), "output_type"),
    ],
)
def test_decoder_call_options_past_their_bounds_raise(turbo_decoder, kwargs, message):
    with pytest.raises(ValueError, match=message):
        turbo_decoder(torch.zeros(1, 1, 1, dtype=torch.long), **kwargs)


def test_decoder_refuses_huge_outputs_before_allocating(turbo_decoder):
    grid = torch.zeros(300, 300, dtype=torch.long)  # 9600 px per side at multiplier 2
    with pytest.raises(ValueError, match="each side must be <= 8192"):
        turbo_decoder(grid, resolution_multiplier=2)


def test_decoder_options_at_their_bounds_work(turbo_decoder):
    out = turbo_decoder(
        torch.zeros(1, 1, 1, dtype=torch.long), num_inference_steps=1, guidance_scale=0.0,
        resolution_multiplier=1, output_type="pt", generator=torch.Generator().manual_seed(0),
    )
    assert out.images.shape == (1, 3, 16, 16) and torch.isfinite(out.images).all()
    assert 0.0 <= out.images.min() and out.images.max() <= 1.0


# ---------------------------------------------------------------- backbone call inputs (unimodal/, owned elsewhere)


@pytest.fixture(scope="module")
def backbone(backbone_dir):
    from unimask.unimodal.modeling_llada2_moe import LLaDA2MoeModelLM

    return LLaDA2MoeModelLM.from_pretrained(backbone_dir).eval()


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(input_ids=torch.full((1, 8), 512)), r"input_ids must be in \[0, vocab_size=512\)"),
        (dict(input_ids=torch.full((1, 8), -1)), "input_ids must be in"),
        (dict(input_ids=torch.zeros(1, 8)), "int64"),
        (dict(input_ids=torch.zeros(8, dtype=torch.long)), r"\(batch, seq\)"),
        (dict(attention_mask=torch.ones(1, 1, 7, 8, dtype=torch.bool)), "attention_mask has shape"),
        (dict(position_ids=torch.full((1, 8), 512)), "max_position_embeddings=512"),
        (dict(position_ids=torch.full((1, 8), -1)), "position_ids must be in"),
    ],
)
def test_backbone_refuses_out_of_range_inputs_with_value_error(backbone, change, message):
    inputs = dict(input_ids=torch.zeros(1, 8, dtype=torch.long), **{k: v for k, v in change.items() if k != "input_ids"})
    inputs.update({k: v for k, v in change.items() if k == "input_ids"})
    with pytest.raises(ValueError, match=message):
        backbone(**inputs)


def test_backbone_refuses_an_empty_sequence_with_value_error(backbone):
    with pytest.raises(ValueError, match="input_ids"):
        backbone(input_ids=torch.zeros(1, 0, dtype=torch.long))
