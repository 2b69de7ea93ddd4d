"""The location learnability probe: its examples, its sequence layout, and that it learns."""

import pytest
import torch

from unimask.shapes.location_probe import (
    ANSWER_BASE,
    MASK_ID,
    build_sequences,
    run_location_probe,
    synthetic_examples,
)
from unimask.shapes.scene import CELLS
from unimask.unimodal import LLaDA2MoeConfig, LLaDA2MoeModelLM
from unimask.unimodal.tiny_checkpoint import tiny_backbone_config_dict


def test_synthetic_examples_put_the_block_in_its_cell():
    examples = synthetic_examples(200, seed=3)
    grids = examples.grids.view(-1, 8, 8)
    for grid, colour, cell in zip(grids, examples.colours, examples.cells):
        rows, cols = torch.nonzero(grid == 3 + colour, as_tuple=True)
        assert len(rows) == 4  # one 2 x 2 block, nothing else of its code
        centre_y, centre_x = (rows.float().mean() + 0.5) * 16, (cols.float().mean() + 0.5) * 16
        assert CELLS[int(cell)] == CELLS[min(int(centre_y * 3 // 128), 2) * 3 + min(int(centre_x * 3 // 128), 2)]
    assert set(examples.cells.tolist()) == set(range(9))
    assert torch.equal(synthetic_examples(200, seed=3).grids, examples.grids)
    with pytest.raises(ValueError, match="count=0"):
        synthetic_examples(0, seed=3)


def test_sequences_hold_the_codes_and_end_in_the_masked_answer():
    examples = synthetic_examples(4, seed=0)
    ids = build_sequences(examples, image_token_offset=256)
    assert ids.shape == (4, 64 + 15)
    assert torch.equal(ids[:, 1:65], examples.grids + 256)
    assert (ids[:, -1] == MASK_ID).all() and (ids[:, 65:] < 256).all()
    with pytest.raises(ValueError, match="image_token_offset=40"):
        build_sequences(examples, image_token_offset=40)


def test_probe_learns_the_cell_of_a_synthetic_block():
    torch.manual_seed(0)
    config = LLaDA2MoeConfig(**tiny_backbone_config_dict(hidden_size=64, num_attention_heads=4, num_key_value_heads=2))
    model = LLaDA2MoeModelLM(config)
    train, test = synthetic_examples(2048, seed=1), synthetic_examples(256, seed=2)
    history = run_location_probe(model, train, test, steps=200, batch_size=32, lr=3e-3, eval_every=150)
    assert [h["step"] for h in history] == [0, 150, 200]
    assert history[-1]["accuracy"] > 0.3 > history[0]["accuracy"]  # chance is 1/9; 0.51 measured
    assert ANSWER_BASE + len(CELLS) < config.image_token_offset
    with pytest.raises(ValueError, match="steps=0"):
        run_location_probe(model, train, test, steps=0)
