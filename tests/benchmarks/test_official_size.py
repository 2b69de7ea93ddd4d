"""The official-size benchmark: its FLOP count at the published sizes, its quick run's JSON and agreements, and
its refusal without a GPU (the figures themselves come from a GPU run, benchmarks/results/official_size.json)."""

from __future__ import annotations

import pytest
import torch

from unimask.benchmarks import official_size
from unimask.benchmarks.cache import edit_requests


def test_active_parameters_at_the_published_size():
    config = official_size.backbone_config("llada2-uni-16b")
    attention = 20 * (2048 * (16 + 2 * 4) * 128 + 16 * 128 * 2048)
    dense = 3 * 2048 * 5120
    moe = 19 * (3 * 2048 * 512 * (8 + 1) + 256 * 2048)
    assert official_size.active_matmul_parameters(config) == attention + dense + moe + 2048 * 173568
    # "16B-A1B": about 1.1B weights a token multiplies with.
    assert 1.0e9 < official_size.active_matmul_parameters(config) < 1.3e9
    assert official_size.forward_flops(config, 10) == pytest.approx(
        2 * 10 * official_size.active_matmul_parameters(config) + 4 * 100 * 16 * 128 * 20)


def test_editing_request_at_the_official_ids():
    official = official_size.OFFICIAL_IDS
    inputs = edit_requests(1, 1, 4, output_grid=2, text_ids=(2, official["text_high"]), image_ids=(157184, 173568),
                           mask_id=official["mask"])
    ids = inputs["input_ids"][0]
    assert ids.shape == (24 + 16 + 4 + 4,)
    assert ((ids[24:40] >= 157184) & (ids[24:40] < 173568)).all()
    assert (ids[-4:] == official_size.OFFICIAL_IDS["mask"]).all() and (ids[:24] < 157184).all()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_full_size_without_a_gpu_is_skipped_with_a_reason():
    result = official_size.run(quick=False)
    assert set(result) == {"skipped"} and "--quick" in result["skipped"]


def test_quick_run_reports_every_part():
    result = official_size.run(quick=True)
    backbone = result["backbone"]
    assert set(backbone["prefill"]) == {"64", "128"}
    assert all(row["logits_finite"] and row["tokens_per_second"] > 0 for row in backbone["prefill"].values())
    # fp32: the grouped dispatch and the per-expert loop give the fp32 reference's outputs; the cache changes no token.
    dispatch = backbone["moe_dispatch"]
    assert dispatch["grouped_mm"]["max_error_vs_fp32_relative"] < 1e-5 and dispatch["eager"]["max_error_vs_fp32_relative"] < 1e-5
    latency = backbone["forward_latency"]
    assert latency["tokens"] == {"prefix": 32, "block": 8}
    assert all(latency[name]["seconds_min"] > 0 for name in ("block_alone", "prefix_and_block", "block_on_cached_prefix"))
    decode = backbone["editing_decode"]
    assert decode["agreement"] == 1.0
    assert decode["variants"]["cache"]["nfe"] == decode["variants"]["no_cache"]["nfe"] > 0
    decoder = result["decoder"]
    assert (decoder["turbo"]["steps"], decoder["normal"]["steps"]) == (8, 50)
    assert decoder["turbo"]["images_finite"] and decoder["normal"]["images_finite"]
