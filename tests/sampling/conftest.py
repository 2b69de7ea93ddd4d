"""Shared fixtures for the sampler tests: a tiny vocabulary layout and tiny backbones.

Token ids used here (vocab 512, as the tiny official backbone): text [0, 256) with pad 0, EOS 1, size
tokens [240, 250) and mask 255; image codes [256, 512).

`backbone` is the real tiny MoE backbone (official layout, random weights); the equivalence tests run on
it. `FakeBidirectionalLM` is a 2-layer dense transformer of our own with the same forward contract
(bool (B, 1, q, k) mask, position ids, `PrefixKVCache` in and out); it is kept for the many-run property
tests because it is a few times faster and lets tests bias its outputs (e.g. towards EOS).
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from unimask.unimodal.kv_cache import PrefixKVCache

VOCAB = 512
PAD_ID, EOS_ID, MASK_ID = 0, 1, 255
SIZE_IDS = range(240, 250)
IMAGE_OFFSET = 256
PROMPT, TEXT, IMAGE, SIZE = 0, 1, 2, 3


def make_kind_vocab_masks() -> dict[int, torch.Tensor]:
    """{TEXT: ordinary text ids + EOS, IMAGE: image codes, SIZE: size tokens} as (VOCAB,) bool."""
    text = torch.zeros(VOCAB, dtype=torch.bool)
    text[1:240] = True
    image = torch.zeros(VOCAB, dtype=torch.bool)
    image[IMAGE_OFFSET:] = True
    size = torch.zeros(VOCAB, dtype=torch.bool)
    size[list(SIZE_IDS)] = True
    return {TEXT: text, IMAGE: image, SIZE: size}


class FakeBidirectionalLM(nn.Module):
    """Tiny pre-norm transformer (learned positions, 2 layers, hidden 32) with the backbone's contract.

    forward(input_ids (B, L), attention_mask (B, 1, L, K) bool | None, position_ids (B, L) | None,
    past_key_values PrefixKVCache | None, use_cache) -> namespace(logits (B, L, V) float32,
    past_key_values PrefixKVCache | None). `logit_scale` sharpens the output distribution.
    """

    def __init__(self, vocab=VOCAB, hidden=32, layers=2, heads=2, logit_scale=1.0):
        super().__init__()
        self.heads, self.head_dim, self.logit_scale = heads, hidden // heads, logit_scale
        self.embed = nn.Embedding(vocab, hidden)
        self.position = nn.Embedding(512, hidden)
        self.qkv = nn.ModuleList(nn.Linear(hidden, 3 * hidden) for _ in range(layers))
        self.out = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(layers))
        self.mlp = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(hidden), nn.Linear(hidden, 2 * hidden), nn.GELU(), nn.Linear(2 * hidden, hidden))
            for _ in range(layers)
        )
        self.norm = nn.ModuleList(nn.LayerNorm(hidden) for _ in range(layers))
        self.final = nn.LayerNorm(hidden)
        self.head = nn.Linear(hidden, vocab)
        self.calls = 0

    def forward(self, input_ids, attention_mask=None, position_ids=None, past_key_values=None, use_cache=False):
        self.calls += 1
        batch, length = input_ids.shape
        if position_ids is None:
            position_ids = torch.arange(length).expand(batch, length)
        hidden = self.embed(input_ids) + self.position(position_ids)
        keys, values = [], []
        for layer in range(len(self.qkv)):
            qkv = self.qkv[layer](self.norm[layer](hidden))
            q, k, v = qkv.view(batch, length, 3, self.heads, self.head_dim).unbind(2)
            q, k, v = (t.transpose(1, 2) for t in (q, k, v))
            if past_key_values is not None:
                k = torch.cat([past_key_values.keys[layer], k], dim=2)
                v = torch.cat([past_key_values.values[layer], v], dim=2)
            keys.append(k)
            values.append(v)
            attended = F.scaled_dot_product_attention(q, k, v, attn_mask=attention_mask)
            hidden = hidden + self.out[layer](attended.transpose(1, 2).reshape(batch, length, -1))
            hidden = hidden + self.mlp[layer](hidden)
        logits = self.head(self.final(hidden)).float() * self.logit_scale
        cache = None
        if use_cache:
            positions = position_ids
            if past_key_values is not None:
                positions = torch.cat([past_key_values.positions, position_ids], dim=1)
            cache = PrefixKVCache(keys=keys, values=values, positions=positions)
        return SimpleNamespace(logits=logits, past_key_values=cache)


@pytest.fixture
def kind_vocab_masks():
    return make_kind_vocab_masks()


@pytest.fixture
def fake_model():
    """Fake backbone with moderately peaked outputs (threshold acceptance fires sometimes)."""
    torch.manual_seed(1234)
    return FakeBidirectionalLM(logit_scale=6.0).eval()


def make_real_backbone(directory, logit_scale: float = 1.0, seed: int = 0):
    """The tiny official-layout backbone (random weights) with its lm_head scaled by `logit_scale`."""
    from unimask.unimodal.modeling_llada2_moe import LLaDA2MoeModelLM
    from unimask.unimodal.tiny_checkpoint import write_tiny_official_backbone

    model = LLaDA2MoeModelLM.from_pretrained(write_tiny_official_backbone(directory / "backbone", seed=seed)).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(logit_scale)
    return model


@pytest.fixture
def backbone(tmp_path):
    """The real tiny MoE backbone, lm_head sharpened so threshold acceptance can fire."""
    return make_real_backbone(tmp_path, logit_scale=60.0)


def _text_prompt(length: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(2, 240, (length,), generator=generator)


@pytest.fixture
def vocab():
    """Ids and helpers of the test vocabulary (see the module docstring)."""
    return SimpleNamespace(
        size=VOCAB, pad_id=PAD_ID, eos_id=EOS_ID, mask_id=MASK_ID, image_offset=IMAGE_OFFSET,
        size_ids=SIZE_IDS, PROMPT=PROMPT, TEXT=TEXT, IMAGE=IMAGE, SIZE=SIZE, text_prompt=_text_prompt,
        fake_model=lambda logit_scale=6.0, seed=1234: _fake(logit_scale, seed),
    )


def _fake(logit_scale: float, seed: int) -> FakeBidirectionalLM:
    torch.manual_seed(seed)
    return FakeBidirectionalLM(logit_scale=logit_scale).eval()
