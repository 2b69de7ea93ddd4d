"""Benchmark modules produce the documented JSON keys and the cache keeps tokens identical (no timing checks)."""

from __future__ import annotations

import torch

from unimask.benchmarks import cache, train_mfu
from unimask.benchmarks.cli import BENCHMARKS


def test_every_issue_benchmark_is_registered():
    assert {"sampler", "cache", "decoder", "moe", "load", "train", "official_size"} <= set(BENCHMARKS)


def test_cache_without_pruning_gives_identical_tokens(tmp_path):
    model = cache._backbone(tmp_path / "backbone")
    with torch.no_grad():
        result = cache.run_with_model(model, quick=True, grid=4)
    for kind in ("editing", "multi_reference"):
        section = result[kind]
        assert section["tokens_identical"] is True
        assert set(section["variants"]) == {"no_cache", "cache", "cache_keep_0.75", "cache_keep_0.5", "cache_keep_0.25"}
        assert section["variants"]["cache"]["cache_reuses"] > 0
        assert section["variants"]["no_cache"]["cache_reuses"] == 0
        assert section["variants"]["cache"]["nfe"] == section["variants"]["no_cache"]["nfe"]
        # Pruning drops prefix entries, more at lower keep ratios.
        dropped = [section["variants"][f"cache_keep_{r}"]["prefix_entries_dropped"] for r in (0.75, 0.5, 0.25)]
        assert 0 < dropped[0] < dropped[1] < dropped[2]
        assert all(0.0 <= section["variants"][f"cache_keep_{r}"]["agreement"] <= 1.0 for r in (0.75, 0.5, 0.25))
    assert isinstance(result["goal_met"], bool)


def test_edit_requests_shapes():
    inputs = cache.edit_requests(references=3, batch=2, grid=4)
    assert inputs["input_ids"].shape == inputs["token_kinds"].shape == (2, 24 + 3 * (16 + 4) + 16)
    assert int((inputs["input_ids"] == cache.MASK_ID).sum()) == 2 * 16


def test_mfu_flop_formula_and_dense_baseline_shapes():
    assert train_mfu._model_flops(10, 2, 4, 8, 16) == 6 * 10 * 16 + 12 * 2 * 4 * 8 * 16
    model = train_mfu.DenseTransformerLM(vocab=50, hidden=16, layers=2, heads=2, mlp_width=32)
    assert model(torch.randint(0, 50, (2, 5))).shape == (2, 5, 50)
