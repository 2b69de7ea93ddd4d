"""Attention masks for masked and block diffusion, checked against their definitions."""

from __future__ import annotations

import pytest
import torch

from unimask.unimodal.attention_masks import (
    bidirectional_mask,
    block_causal_mask,
    block_diffusion_training_mask,
    padded_block_causal_mask,
    positions_in_documents,
    to_additive_mask,
)


def test_block_causal_definition():
    mask = block_causal_mask(7, 3)
    for query in range(7):
        for key in range(7):
            assert mask[query, key] == (key // 3 <= query // 3)


def test_block_diffusion_training_mask_definition():
    length, block = 6, 2
    mask = block_diffusion_training_mask(length, block)
    assert mask.shape == (12, 12)
    for query in range(12):
        for key in range(12):
            query_noisy, key_noisy = query < length, key < length
            query_block, key_block = (query % length) // block, (key % length) // block
            if query_noisy and key_noisy:
                expected = query_block == key_block
            elif query_noisy:
                expected = key_block < query_block
            elif key_noisy:
                expected = False
            else:
                expected = key_block <= query_block
            assert mask[query, key] == expected, (query, key)


def test_documents_restart_blocks_and_never_mix():
    document_ids = torch.tensor([[0, 0, 0, 1, 1, 1, 1]])
    assert positions_in_documents(document_ids).tolist() == [[0, 1, 2, 0, 1, 2, 3]]
    mask = block_causal_mask(7, 2, document_ids=document_ids)[0]
    assert not mask[3:, :3].any() and not mask[:3, 3:].any()
    assert mask[5, 3] and mask[6, 5] and not mask[4, 5]  # doc 1 blocks: {3,4}, {5,6}
    packed = block_diffusion_training_mask(7, 2, document_ids=document_ids)[0]
    assert not packed[:7, 7:][3:, :3].any()  # noisy doc 1 never sees clean doc 0
    assert packed[5, 7 + 3] and not packed[4, 7 + 3]
    assert bidirectional_mask(7, document_ids=document_ids)[0].sum() == 9 + 16


def test_additive_mask_and_validation():
    additive = to_additive_mask(torch.tensor([True, False]))
    assert additive[0] == 0 and additive[1] == torch.finfo(torch.float32).min
    with pytest.raises(ValueError, match="block_length=0"):
        block_causal_mask(4, 0)
    with pytest.raises(ValueError, match=r"document_ids must be \(batch, seq_len=4\)"):
        block_causal_mask(4, 2, document_ids=torch.zeros(1, 5, dtype=torch.long))


def test_padded_block_causal_mask_hides_padding_keys_and_keeps_each_query_on_itself():
    valid = torch.tensor([[True, True, True, False], [True, True, True, True]])
    mask = padded_block_causal_mask(valid, block_length=2)
    assert mask.shape == (2, 1, 4, 4)
    causal = block_causal_mask(4, 2)
    assert torch.equal(mask[1, 0], causal)
    assert not mask[0, 0, :3, 3].any()  # the padding key is never seen by a real token
    assert mask[0, 0, 3].tolist() == [True, True, True, True]  # the padding query sees itself (and its past)
