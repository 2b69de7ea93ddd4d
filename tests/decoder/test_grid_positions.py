"""SigVQ grid position embeddings: off in the official layout, per-cell when a small preset asks."""

import pytest
import torch

from unimask.decoders.sigvq import SigVQEmbedding, sigvq_from_state_dict
from unimask.training.stage_decoder_flow import DecoderParts


def test_official_layout_has_no_position_weights():
    sigvq = SigVQEmbedding(vocab_size=8, inner_dim=4)
    assert not any("grid" in name for name in sigvq.state_dict())
    assert sigvq.grid_position_parameters() == []


def test_positions_tell_equal_tokens_apart_by_cell():
    torch.manual_seed(0)
    sigvq = SigVQEmbedding(vocab_size=8, inner_dim=4, grid_position_size=4)
    features = sigvq.encode_grids(torch.zeros(1, 2, 2, dtype=torch.long))
    assert features.shape == (1, 16, 4)
    # cell (row 1, col 2) of the 4 x 4 upsampled grid = token 0 + row 1 + column 2 embeddings
    expected = sigvq(torch.zeros(1, 1, dtype=torch.long))[0, 0] + sigvq.grid_row_embedding.weight[1] + sigvq.grid_col_embedding.weight[2]
    torch.testing.assert_close(features[0, 1 * 4 + 2], expected)
    assert not torch.allclose(features[0, 0], features[0, 5])


def test_grid_larger_than_the_positions_is_refused():
    sigvq = SigVQEmbedding(vocab_size=8, inner_dim=4, grid_position_size=4)
    with pytest.raises(ValueError, match="larger than"):
        sigvq.encode_grids(torch.zeros(1, 3, 3, dtype=torch.long))


def test_state_dict_round_trip_keeps_positions():
    sigvq = SigVQEmbedding(vocab_size=8, inner_dim=4, grid_position_size=4)
    loaded = sigvq_from_state_dict(sigvq.state_dict())
    assert loaded.config.grid_position_size == 4
    grids = torch.randint(0, 8, (2, 2, 2))
    torch.testing.assert_close(loaded.encode_grids(grids), sigvq.encode_grids(grids))


def test_flow_training_learns_positions_but_not_token_features():
    sigvq = SigVQEmbedding(vocab_size=8, inner_dim=4, grid_position_size=4)
    DecoderParts(sigvq, torch.nn.Linear(2, 2), torch.nn.Linear(2, 2), trainable=("transformer",))
    trainable = {name for name, p in sigvq.named_parameters() if p.requires_grad}
    assert trainable == {"grid_row_embedding.weight", "grid_col_embedding.weight"}
