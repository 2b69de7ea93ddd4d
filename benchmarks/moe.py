"""MoE expert dispatch: grouped matmuls (tokens sorted by expert) vs the per-expert Python loop.

The paths run the same `LLaDA2MoeExperts` weights on the same routed tokens in one process,
for a diffusion block of 32 tokens (a sampler step: launch/loop overhead dominates) and for a
training-sized batch (matmul work dominates):

* ``grouped_mm``: the model's default (``config._experts_implementation = "grouped_mm"``; on CPU
  `sorted_grouped_experts_forward`, scatter-add combine);
* ``grouped_mm_transformers``: transformers' own ``grouped_mm_experts_forward`` (un-permute + sum
  combine), to show what the local replacement gains;
* ``eager``: `naive_experts_forward`, the per-expert loop.

Reports min/median seconds per call and the speed-ups over the loop, for 8, 64 and 256 experts,
forward (inference) and forward+backward (training). Slow cases stop repeating after a time budget.

Run: ``python -m unimask.benchmarks.moe [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from unimask.unimodal.configuration_llada2_moe import LLaDA2MoeConfig
from unimask.unimodal.modeling_llada2_moe import LLaDA2MoeExperts
from unimask.unimodal.moe_routing import route_tokens


def _time(fn, repeats: int, budget_s: float = 4.0) -> tuple[float, float]:
    """(min, median) seconds of ``fn`` over up to ``repeats`` calls after a warm-up; at least two
    calls, then stops once ``budget_s`` is spent."""
    fn()  # warm-up
    samples: list[float] = []
    while len(samples) < repeats and (len(samples) < 2 or sum(samples) < budget_s):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return min(samples), statistics.median(samples)


def _implementations(experts: LLaDA2MoeExperts, config: LLaDA2MoeConfig) -> dict:
    """name -> callable(hidden_states, index, weight) running one dispatch path."""
    from transformers.integrations.moe import grouped_mm_experts_forward

    def through_config(name):
        def call(hidden_states, index, weight):
            config._experts_implementation = name
            return experts(hidden_states, index, weight)

        return call

    return {
        "grouped_mm": through_config("grouped_mm"),
        "grouped_mm_transformers": lambda h, i, w: grouped_mm_experts_forward(experts, h, i, w),
        "eager": through_config("eager"),
    }


def _case(num_experts: int, tokens: int, hidden: int, width: int, top_k: int, repeats: int) -> dict:
    config = LLaDA2MoeConfig(
        vocab_size=64, hidden_size=hidden, moe_intermediate_size=width, num_experts=num_experts,
        num_experts_per_tok=top_k, n_group=1, topk_group=1, num_hidden_layers=1, pad_token_id=0, eos_token_id=0,
    )
    generator = torch.Generator().manual_seed(num_experts)
    experts = LLaDA2MoeExperts(config)
    with torch.no_grad():
        experts.gate_up_proj.normal_(0, 0.02, generator=generator)
        experts.down_proj.normal_(0, 0.02, generator=generator)
    hidden_states = torch.randn(tokens, hidden, generator=generator)
    logits = torch.randn(tokens, num_experts, generator=generator)
    index, weight = route_tokens(logits, None, top_k=top_k, n_group=1, topk_group=1, routed_scaling_factor=1.0)

    result = {"num_experts": num_experts, "tokens": tokens, "top_k": top_k}
    outputs, input_grads = {}, {}
    for implementation, dispatch in _implementations(experts, config).items():

        def forward():
            with torch.no_grad():
                return dispatch(hidden_states, index, weight)

        def train_step():
            experts.zero_grad(set_to_none=True)
            inputs = hidden_states.clone().requires_grad_()
            (dispatch(inputs, index, weight) * 1.5).sum().backward()
            return inputs.grad

        outputs[implementation], input_grads[implementation] = forward(), train_step()
        result[f"{implementation}_forward_s"] = _time(forward, repeats)
        result[f"{implementation}_train_step_s"] = _time(train_step, repeats)
    config._experts_implementation = "grouped_mm"
    for implementation in ("grouped_mm", "grouped_mm_transformers"):
        result[f"{implementation}_max_abs_diff"] = (outputs[implementation] - outputs["eager"]).abs().max().item()
        result[f"{implementation}_grad_max_abs_diff"] = (
            (input_grads[implementation] - input_grads["eager"]).abs().max().item()
        )
        for kind in ("forward", "train_step"):
            speedup = result[f"eager_{kind}_s"][1] / result[f"{implementation}_{kind}_s"][1]
            result[f"{implementation}_{kind}_speedup_median"] = round(speedup, 3)
    # Kept for readers of older result files: the default path's speed-ups.
    result["forward_speedup_median"] = result["grouped_mm_forward_speedup_median"]
    result["train_speedup_median"] = result["grouped_mm_train_step_speedup_median"]
    return result


def run(quick: bool = False, num_threads: int | None = 1) -> dict:
    """Time grouped vs per-expert dispatch at 8 / 64 / 256 experts.

    Args:
        quick: 512 instead of 4096 tokens for the large case, fewer repeats.
            Goal (issue 12): ``grouped_mm`` >= 3x the loop at 64 experts.
        num_threads: torch intra-op threads during the run (None: leave as is); one thread
            gives stable numbers on a shared machine.

    Returns:
        ``{"device", "num_threads", "cases": [per-expert-count dicts with (min, median) seconds
        and speed-ups]}``; also printed as JSON.
    """
    previous_threads = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    try:
        token_counts, repeats = ((32, 512), 3) if quick else ((32, 4096), 3)
        cases = [
            _case(num_experts, tokens=tokens, hidden=256, width=64, top_k=min(8, num_experts), repeats=repeats)
            for tokens in token_counts
            for num_experts in (8, 64, 256)
        ]
        report = {"device": "cpu", "num_threads": torch.get_num_threads(), "hidden": 256, "expert_width": 64,
                  "cases": cases}
        at_64 = [case for case in cases if case["num_experts"] == 64]
        report["goal_met"] = {
            f"{kind}_{case['tokens']}_tokens": case[f"grouped_mm_{kind}_speedup_median"] >= 3.0
            for case in at_64 for kind in ("forward", "train_step")
        }
    finally:
        torch.set_num_threads(previous_threads)
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    run(quick=parser.parse_args().quick)
