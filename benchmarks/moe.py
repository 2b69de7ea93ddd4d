"""MoE expert dispatch: grouped matmuls (tokens sorted by expert) vs the per-expert Python loop.

Both paths run the same `LLaDA2MoeExperts` weights on the same routed tokens in one process,
for a diffusion block of 32 tokens (a sampler step: launch/loop overhead dominates) and for a
training-sized batch (matmul work dominates),
switching ``config._experts_implementation`` between "grouped_mm" (transformers' grouped dispatch)
and "eager" (`naive_experts_forward`). Reports min/median seconds per call and the speed-up, for
8, 64 and 256 experts, forward (inference) and forward+backward (training).

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


def _time(fn, repeats: int) -> tuple[float, float]:
    fn()  # warm-up
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return min(samples), statistics.median(samples)


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
    outputs = {}
    for implementation in ("grouped_mm", "eager"):
        config._experts_implementation = implementation

        def forward():
            with torch.no_grad():
                return experts(hidden_states, index, weight)

        def train_step():
            experts.zero_grad(set_to_none=True)
            inputs = hidden_states.clone().requires_grad_()
            (experts(inputs, index, weight) * 1.5).sum().backward()

        outputs[implementation] = forward()
        result[f"{implementation}_forward_s"] = _time(forward, repeats)
        result[f"{implementation}_train_step_s"] = _time(train_step, repeats)
    result["max_abs_diff"] = (outputs["grouped_mm"] - outputs["eager"]).abs().max().item()
    result["forward_speedup_median"] = result["eager_forward_s"][1] / result["grouped_mm_forward_s"][1]
    result["train_speedup_median"] = result["eager_train_step_s"][1] / result["grouped_mm_train_step_s"][1]
    return result


def run(quick: bool = False, num_threads: int | None = 1) -> dict:
    """Time grouped vs per-expert dispatch at 8 / 64 / 256 experts.

    Args:
        quick: 512 instead of 4096 tokens for the large case, fewer repeats.
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
        token_counts, repeats = ((32, 512), 3) if quick else ((32, 4096), 5)
        cases = [
            _case(num_experts, tokens=tokens, hidden=256, width=64, top_k=min(8, num_experts), repeats=repeats)
            for tokens in token_counts
            for num_experts in (8, 64, 256)
        ]
        report = {"device": "cpu", "num_threads": torch.get_num_threads(), "hidden": 256, "expert_width": 64,
                  "cases": cases}
    finally:
        torch.set_num_threads(previous_threads)
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    run(quick=parser.parse_args().quick)
