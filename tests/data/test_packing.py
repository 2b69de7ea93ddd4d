import pytest
import torch

from unimask.data.packing import fits_in_budget, pack_documents


def test_packs_in_order_with_document_ids_and_padding():
    docs = [torch.tensor([1, 2, 3]), torch.tensor([4, 5]), torch.tensor([6, 7, 8, 9]), torch.arange(20)]
    packed = pack_documents(docs, token_budget=6, pad_id=0)
    assert packed.ids.tolist() == [[1, 2, 3, 4, 5, 0], [6, 7, 8, 9, 0, 0], [0, 1, 2, 3, 4, 5]]
    assert packed.document_ids.tolist() == [[0, 0, 0, 1, 1, 2], [0, 0, 0, 0, 1, 1], [0, 0, 0, 0, 0, 0]]
    assert packed.loss_mask.sum().item() == 3 + 2 + 4 + 6
    assert packed.lengths == [3, 2, 4, 6]


def test_fixed_row_count_and_errors():
    packed = pack_documents([torch.tensor([1, 2])], token_budget=4, pad_id=9, rows=2)
    assert packed.ids.tolist() == [[1, 2, 9, 9], [9, 9, 9, 9]]
    with pytest.raises(ValueError, match="rows=1"):
        pack_documents([torch.ones(3, dtype=torch.long)] * 2, token_budget=4, pad_id=0, rows=1)
    with pytest.raises(ValueError, match="token_budget"):
        pack_documents([torch.ones(3)], token_budget=0, pad_id=0)
    assert fits_in_budget([3], 3, 6) and not fits_in_budget([3, 2], 2, 6)


def test_packed_ids_feed_the_block_diffusion_mask():
    masks = pytest.importorskip("unimask.unimodal.attention_masks")
    packed = pack_documents([torch.tensor([1, 2, 3]), torch.tensor([4, 5, 6])], token_budget=6, pad_id=0)
    mask = masks.block_diffusion_training_mask(6, 2, document_ids=packed.document_ids)
    assert mask.shape == (1, 12, 12)
    assert not mask[0, 3, 2]  # a token of document 1 never sees document 0
