"""Forward pass of the backbone: shapes, masks, the prefix cache and input validation."""

from __future__ import annotations

import pytest
import torch

from unimask.unimodal import LLaDA2MoeOutput, PrefixKVCache
from unimask.unimodal.attention_masks import block_causal_mask, positions_in_documents, to_additive_mask

VOCAB = 512


def random_ids(batch: int, length: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def test_forward_shapes_and_router_stats(tiny_backbone, tiny_backbone_config):
    ids = random_ids(2, 12)
    out = tiny_backbone(ids, output_router_stats=True, output_hidden_states=True)
    assert isinstance(out, LLaDA2MoeOutput)
    assert out.logits.shape == (2, 12, VOCAB) and out.logits.dtype == torch.float32
    assert out.hidden_states.shape == (2, 12, tiny_backbone_config.hidden_size)
    assert out.past_key_values is None
    # layer 0 is dense (first_k_dense_replace=1), layer 1 is MoE
    assert [stats.layer_idx for stats in out.router_stats] == [1]
    stats = out.router_stats[0]
    assert stats.expert_load.shape == (8,) and stats.expert_load.sum() == 2 * 12 * 2
    assert stats.router_logits.shape == (24, 8) and stats.router_logits.dtype == torch.float32
    assert out.aux_loss.ndim == 0 and out.aux_loss > 0


@torch.no_grad()
def test_bidirectional_by_default_so_later_tokens_change_earlier_logits(tiny_backbone):
    ids = random_ids(1, 10)
    changed = ids.clone()
    changed[0, -1] = (changed[0, -1] + 1) % VOCAB
    assert not torch.allclose(tiny_backbone(ids).logits[:, 0], tiny_backbone(changed).logits[:, 0])


@torch.no_grad()
def test_block_causal_mask_isolates_earlier_blocks(tiny_backbone):
    block, length = 4, 12
    ids = random_ids(2, length)
    mask = block_causal_mask(length, block)
    base = tiny_backbone(ids, attention_mask=mask).logits
    changed = ids.clone()
    changed[:, 8:] = (changed[:, 8:] + 7) % VOCAB  # only the last block changes
    after = tiny_backbone(changed, attention_mask=mask).logits
    assert torch.equal(base[:, :8], after[:, :8])
    assert not torch.allclose(base[:, 8:], after[:, 8:])


@torch.no_grad()
def test_additive_mask_equals_boolean_mask(tiny_backbone):
    ids = random_ids(2, 8)
    mask = block_causal_mask(8, 2)
    bool_out = tiny_backbone(ids, attention_mask=mask[None, None].expand(2, 1, 8, 8)).logits
    add_out = tiny_backbone(ids, attention_mask=to_additive_mask(mask)[None]).logits
    assert (bool_out - add_out).abs().max() < 1e-5


@torch.no_grad()
def test_packed_documents_do_not_interact(tiny_backbone):
    document_ids = torch.tensor([[0] * 5 + [1] * 7])
    mask = document_ids[:, :, None] == document_ids[:, None, :]
    positions = positions_in_documents(document_ids)
    ids = random_ids(1, 12)
    packed = tiny_backbone(ids, attention_mask=mask, position_ids=positions).logits
    alone = tiny_backbone(ids[:, 5:]).logits
    assert (packed[:, 5:] - alone).abs().max() < 1e-5


def _prefix_then_suffix(model, prefix_ids, suffix_ids):
    prefix_len, suffix_len = prefix_ids.shape[1], suffix_ids.shape[1]
    batch = prefix_ids.shape[0]
    prefix_positions = torch.arange(prefix_len).expand(batch, -1)
    cache = model(prefix_ids, position_ids=prefix_positions, use_cache=True).past_key_values
    suffix_positions = torch.arange(prefix_len, prefix_len + suffix_len).expand(batch, -1)
    return cache, suffix_positions


@torch.no_grad()
def test_cached_prefix_equals_uncached(tiny_backbone, tiny_backbone_config):
    prefix_ids, suffix_ids = random_ids(2, 9, seed=1), random_ids(2, 5, seed=2)
    cache, suffix_positions = _prefix_then_suffix(tiny_backbone, prefix_ids, suffix_ids)
    assert isinstance(cache, PrefixKVCache) and len(cache) == 9 and cache.num_layers == 2
    assert cache.keys[0].shape == (2, tiny_backbone_config.num_key_value_heads, 9, tiny_backbone_config.head_dim)
    assert torch.equal(cache.positions, torch.arange(9).expand(2, -1))
    cached = tiny_backbone(suffix_ids, position_ids=suffix_positions, past_key_values=cache, use_cache=True)

    # Uncached reference: the prefix sees only itself, the suffix sees everything.
    full = torch.cat([prefix_ids, suffix_ids], dim=1)
    mask = torch.ones(14, 14, dtype=torch.bool)
    mask[:9, 9:] = False
    reference = tiny_backbone(full, attention_mask=mask).logits[:, 9:]
    assert (cached.logits - reference).abs().max() < 1e-5
    # the returned cache is the given prefix followed by this call's tokens
    assert len(cached.past_key_values) == 14
    assert torch.equal(cached.past_key_values.keys[1][:, :, :9], cache.keys[1])
    assert torch.equal(cached.past_key_values.positions[:, 9:], suffix_positions)


@torch.no_grad()
def test_cached_prefix_with_mask_over_prefix_and_new_tokens(tiny_backbone):
    prefix_ids, suffix_ids = random_ids(1, 6, seed=3), random_ids(1, 4, seed=4)
    cache, suffix_positions = _prefix_then_suffix(tiny_backbone, prefix_ids, suffix_ids)
    mask = block_causal_mask(10, 2)  # blocks of 2; prefix is blocks 0-2
    cached = tiny_backbone(suffix_ids, attention_mask=mask[6:], position_ids=suffix_positions, past_key_values=cache)
    full = torch.cat([prefix_ids, suffix_ids], dim=1)
    # The cache was built with full attention inside the prefix, so the reference does the same.
    reference_mask = mask.clone()
    reference_mask[:6, :6] = True
    reference = tiny_backbone(full, attention_mask=reference_mask).logits[:, 6:]
    assert (cached.logits - reference).abs().max() < 1e-5


@torch.no_grad()
def test_pruned_prefix_equals_masking_the_dropped_tokens(tiny_backbone):
    prefix_ids, suffix_ids = random_ids(2, 10, seed=5), random_ids(2, 4, seed=6)
    cache, suffix_positions = _prefix_then_suffix(tiny_backbone, prefix_ids, suffix_ids)
    keep = torch.tensor([[0, 2, 3, 7, 9], [1, 4, 5, 6, 8]])
    pruned = cache.select(keep)
    assert len(pruned) == 5 and torch.equal(pruned.positions, keep)
    assert torch.equal(pruned.values[1][1, :, 2], cache.values[1][1, :, 5])
    cached = tiny_backbone(suffix_ids, position_ids=suffix_positions, past_key_values=pruned).logits

    full = torch.cat([prefix_ids, suffix_ids], dim=1)
    mask = torch.zeros(2, 14, 14, dtype=torch.bool)
    mask[:, :10, :10] = True
    mask[:, 10:, 10:] = True
    for row in range(2):
        mask[row, 10:, keep[row]] = True
    reference = tiny_backbone(full, attention_mask=mask).logits[:, 10:]
    assert (cached - reference).abs().max() < 1e-5


@torch.no_grad()
def test_pruned_prefix_equals_uncached_run_on_the_subset_single_layer(make_tiny_backbone):
    # With one layer the cached keys depend only on each token and its position, so a pruned
    # cache must equal running the kept tokens (at their original positions) from scratch.
    model = make_tiny_backbone(num_hidden_layers=1, first_k_dense_replace=0)
    prefix_ids, suffix_ids = random_ids(2, 8, seed=7), random_ids(2, 3, seed=8)
    cache, suffix_positions = _prefix_then_suffix(model, prefix_ids, suffix_ids)
    keep = torch.tensor([[1, 3, 6], [0, 5, 7]])
    cached = model(suffix_ids, position_ids=suffix_positions, past_key_values=cache.select(keep)).logits
    subset = torch.cat([prefix_ids.gather(1, keep), suffix_ids], dim=1)
    positions = torch.cat([keep, suffix_positions], dim=1)
    uncached = model(subset, position_ids=positions).logits[:, 3:]
    assert (cached - uncached).abs().max() < 1e-5


def test_key_norm_importance_is_minmax_normalised(tiny_backbone):
    with torch.no_grad():
        cache = tiny_backbone(random_ids(3, 7), use_cache=True).past_key_values
    importance = cache.key_norm_importance()
    assert importance.shape == (3, 7)
    assert torch.allclose(importance.min(dim=1).values, torch.zeros(3))
    assert torch.allclose(importance.max(dim=1).values, torch.ones(3))
    norms = torch.stack([k.norm(dim=-1).mean(dim=1) for k in cache.keys]).mean(0)
    assert torch.equal(importance.argmax(dim=1), norms.argmax(dim=1))


def test_cache_select_validates_indices(tiny_backbone):
    with torch.no_grad():
        cache = tiny_backbone(random_ids(2, 5), use_cache=True).past_key_values
    with pytest.raises(ValueError, match="prefix_len=5"):
        cache.select(torch.tensor([[0, 5], [1, 2]]))
    with pytest.raises(ValueError, match="batch=2"):
        cache.select(torch.tensor([[0, 1]]))


def test_gradients_flow_through_grouped_experts(tiny_backbone):
    tiny_backbone.train()
    loss = tiny_backbone(random_ids(2, 6)).logits.logsumexp(-1).mean()
    loss.backward()
    experts = tiny_backbone.model.layers[1].mlp.experts
    assert experts.gate_up_proj.grad is not None and experts.gate_up_proj.grad.abs().sum() > 0
    assert tiny_backbone.model.layers[1].mlp.gate.weight.grad.abs().sum() > 0
    assert tiny_backbone.model.layers[1].mlp.gate.expert_bias.grad is None  # a buffer, not trained


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"input_ids": torch.tensor([[0, 512]])}, r"vocab_size=512\), got values in \[0, 512\]"),
        ({"input_ids": torch.tensor([[-1, 3]])}, r"got values in \[-1, 3\]"),
        ({"input_ids": torch.zeros(1, 513, dtype=torch.long)},
         "sequence length 513 exceeds max_position_embeddings=512"),
        ({"input_ids": torch.zeros(1, 4, dtype=torch.long), "position_ids": torch.tensor([[0, 1, 2, 512]])},
         r"max_position_embeddings=512\), got values in \[0, 512\]"),
        ({"input_ids": torch.zeros(2, 4, dtype=torch.long), "attention_mask": torch.ones(2, 4, 5, dtype=torch.bool)},
         r"attention_mask has shape \(2, 4, 5\).*L=4, K=prefix_len\+L=4"),
        ({"input_ids": torch.zeros(2, 4, dtype=torch.long), "attention_mask": torch.ones(3, 1, 4, 4, dtype=torch.bool)},
         r"B in \(1, 2\)"),
        ({"input_ids": torch.zeros(4, dtype=torch.long)}, r"\(batch, seq\) int64"),
    ],
)
def test_bad_inputs_raise_value_error_with_numbers(tiny_backbone, kwargs, message):
    with pytest.raises(ValueError, match=message):
        tiny_backbone(**kwargs)


def test_cache_requires_positions_and_matching_batch(tiny_backbone):
    with torch.no_grad():
        cache = tiny_backbone(random_ids(2, 4), use_cache=True).past_key_values
    with pytest.raises(ValueError, match="position_ids are required"):
        tiny_backbone(random_ids(2, 3), past_key_values=cache)
    with pytest.raises(ValueError, match="batch 2, expected 2 layers and batch 1"):
        tiny_backbone(random_ids(1, 3), past_key_values=cache, position_ids=torch.tensor([[4, 5, 6]]))
    with pytest.raises(ValueError, match=r"K=prefix_len\+L=7"):
        tiny_backbone(
            random_ids(2, 3), past_key_values=cache, position_ids=torch.tensor([[4, 5, 6]] * 2),
            attention_mask=torch.ones(3, 3, dtype=torch.bool),
        )


def test_unknown_keyword_is_rejected(tiny_backbone):
    with pytest.raises(TypeError, match="labels"):
        tiny_backbone(random_ids(1, 3), labels=random_ids(1, 3))
