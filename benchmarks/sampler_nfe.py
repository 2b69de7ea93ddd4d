"""Sampler cost: threshold decoding vs one token per step, and the SPRINT prefix cache vs none.

All variants decode the same prompts with the same tiny random backbone (official layout, written by
`write_tiny_official_backbone`) in one process. Its `lm_head` is scaled up so that the output
distributions are peaked enough for threshold acceptance to fire at all; the quality of the tokens is
meaningless here (quality is compared later with the trained default model). Reported per variant:
NFE, model calls, denoising steps, tokens per step, wall time (min / median over repeats), and for the
cache variants whether the tokens equal the uncached run.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from unimask.unimodal.sampler import MaskedDiffusionSampler
from unimask.unimodal.sampler_config import SamplerConfig
from unimask.unimodal.sampler_inputs import text_continuation_inputs

MASK_ID, EOS_ID, PAD_ID = 255, 1, 0
LOGIT_SCALE = 60.0


def tiny_backbone(directory: Path) -> torch.nn.Module:
    """The tiny official-layout backbone with random weights and a sharpened lm_head."""
    from unimask.unimodal.modeling_llada2_moe import LLaDA2MoeModelLM
    from unimask.unimodal.tiny_checkpoint import write_tiny_official_backbone

    model = LLaDA2MoeModelLM.from_pretrained(write_tiny_official_backbone(directory, seed=0)).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(LOGIT_SCALE)
    return model


def _time_variant(sampler, inputs, config, repeats):
    times, output = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        output = sampler(**inputs.as_kwargs(), config=config, generator=torch.Generator().manual_seed(0))
        times.append(time.perf_counter() - started)
    stats = output.stats
    return output.sequences, {
        "nfe": stats.nfe,
        "model_calls": stats.model_calls,
        "denoising_steps": stats.denoising_steps,
        "tokens_per_step": round(stats.tokens_per_step, 3),
        "cache_reuses": stats.cache_reuses,
        "prefix_entries_dropped": stats.prefix_entries_dropped,
        "wall_s_min": round(min(times), 4),
        "wall_s_median": round(statistics.median(times), 4),
    }


def run_with_model(model, quick: bool = False) -> dict:
    """Run every variant with `model` (backbone contract); returns the results dict."""
    # Sized so the whole `unimask bench` stays within its 15-minute budget on 2 cores.
    block_length, prompt_len, gen_length = 32, (64 if quick else 160), (64 if quick else 96)
    repeats = 2 if quick else 3
    prompts = [
        torch.randint(2, 240, (prompt_len - 7 * i,), generator=torch.Generator().manual_seed(i)) for i in range(4)
    ]
    inputs = text_continuation_inputs(prompts, gen_length=gen_length, block_length=block_length,
                                      mask_id=MASK_ID, pad_id=PAD_ID)
    # Text vocabulary without the mask; EOS stays allowed but no early stop, so every variant
    # decodes the full length and NFE compares like for like.
    text_vocab = torch.zeros(512, dtype=torch.bool)
    text_vocab[2:240] = True
    sampler = MaskedDiffusionSampler(model, mask_id=MASK_ID, eos_id=EOS_ID, kind_vocab_masks={1: text_vocab})
    base = SamplerConfig(block_length=block_length, num_inference_steps=block_length, eos_early_stop=False)
    variants = {
        "one_token_per_step": base.replace(threshold=1.0),
        "threshold_0.95": base.replace(threshold=0.95),
        "sprint_adaptive_0.93_no_cache": base.replace(schedule="adaptive", threshold=0.93, num_inference_steps=8),
        "no_cache_8_steps": base.replace(num_inference_steps=8, threshold=1.0),
        "cache_8_steps": base.replace(num_inference_steps=8, threshold=1.0, use_sprint=True, keep_ratio=1.0),
        "cache_pruned_0.5_8_steps": base.replace(num_inference_steps=8, threshold=1.0, use_sprint=True, keep_ratio=0.5),
        "sprint_full": SamplerConfig.sprint(block_length=block_length, num_inference_steps=8, eos_early_stop=False),
    }
    results, sequences = {}, {}
    for name, config in variants.items():
        sequences[name], results[name] = _time_variant(sampler, inputs, config, repeats)
    for name in ("cache_8_steps", "cache_pruned_0.5_8_steps"):
        results[name]["tokens_equal_no_cache"] = bool(torch.equal(sequences[name], sequences["no_cache_8_steps"]))

    def ratio(a, b, key):
        return round(results[a][key] / max(results[b][key], 1e-9), 3)

    return {
        "setup": {"batch": len(prompts), "prompt_len_max": prompt_len, "gen_length": gen_length,
                  "block_length": block_length, "repeats": repeats, "logit_scale": LOGIT_SCALE},
        "variants": results,
        "ratios": {
            "nfe_threshold_over_one_token": ratio("threshold_0.95", "one_token_per_step", "nfe"),
            "wall_threshold_over_one_token": ratio("threshold_0.95", "one_token_per_step", "wall_s_min"),
            "wall_cache_over_no_cache": ratio("cache_8_steps", "no_cache_8_steps", "wall_s_min"),
            "wall_pruned_over_no_cache": ratio("cache_pruned_0.5_8_steps", "no_cache_8_steps", "wall_s_min"),
        },
    }


# On the default model: one block of 32 positions (an understanding answer; an image is two blocks),
# 32 steps, so the fixed schedule commits exactly one token a step; the threshold variant accepts every
# token above its confidence on top of that quota.
DEFAULT_MODEL_VARIANTS = {
    "one_token_per_step": {"block_length": 32, "num_inference_steps": 32, "threshold": 1.0},
    "threshold_0.9": {"block_length": 32, "num_inference_steps": 32, "threshold": 0.9},
}


def default_model_scores(quick: bool = False) -> dict | None:
    """Task scores, NFE and wall time of the trained default model on its evaluation prompts
    (understanding, and text-to-image with the turbo decoder) for each of ``DEFAULT_MODEL_VARIANTS``,
    plus their ratios; None when ``unimask/default_model/`` is not built."""
    from unimask.default_model import default_model_available

    if not default_model_available():
        return None
    from unimask.pipelines import UniPipeline
    from unimask.shapes.evaluate import evaluate

    pipe = UniPipeline.from_pretrained()
    results: dict = {}
    for name, options in DEFAULT_MODEL_VARIANTS.items():
        evaluated = evaluate(pipe, tasks=("understanding", "text_to_image"), num_per_type=1 if quick else 4,
                             decoders=("turbo",), options=options, progress=False, model="shapes-default")
        sampling = evaluated["sampling"]
        summary = evaluated["summary"]["in_distribution"]
        results[name] = {
            "understanding_accuracy": summary.get("understanding_accuracy"),
            "text_to_image_strict": summary.get("text_to_image_turbo_strict"),
            "text_to_image_soft": summary.get("text_to_image_turbo_soft"),
            "nfe": sum(sampling[run]["nfe"] for run in ("understanding", "text_to_image_turbo")),
            "time_s": sum(sampling[run]["time_s"] for run in ("understanding", "text_to_image_turbo")),
            "summary": evaluated["summary"],
            "sampling": sampling,
        }
    slow, fast = results["one_token_per_step"], results["threshold_0.9"]
    results["ratios"] = {
        "nfe_one_token_over_threshold": round(slow["nfe"] / max(fast["nfe"], 1), 3),
        "wall_one_token_over_threshold": round(slow["time_s"] / max(fast["time_s"], 1e-9), 3),
        "understanding_points_lost": round(100 * ((slow["understanding_accuracy"] or 0) - (fast["understanding_accuracy"] or 0)), 1),
        "text_to_image_strict_points_lost": round(100 * ((slow["text_to_image_strict"] or 0) - (fast["text_to_image_strict"] or 0)), 1),
    }
    ratios = results["ratios"]
    results["goal_met"] = (ratios["nfe_one_token_over_threshold"] >= 3 and ratios["wall_one_token_over_threshold"] >= 2.5
                           and ratios["understanding_points_lost"] <= 1 and ratios["text_to_image_strict_points_lost"] <= 1)
    return results


def run(quick: bool = False) -> dict:
    """Benchmark the sampler variants on the tiny random backbone and, when it is built, on the default
    model's evaluation prompts (the goal is judged there); prints and returns the JSON dict."""
    with tempfile.TemporaryDirectory() as directory:
        model = tiny_backbone(Path(directory) / "backbone")
    with torch.no_grad():
        result = run_with_model(model, quick=quick)
    scores = default_model_scores(quick)
    result["default_model"] = scores if scores is not None else "not built (unimask/default_model/ missing)"
    if scores is not None:
        result["goal_met"] = scores["goal_met"]
    else:  # a random model's distributions say little; judged on it only when nothing else exists
        result["goal_met"] = (result["ratios"]["nfe_threshold_over_one_token"] <= 1 / 3
                              and result["ratios"]["wall_threshold_over_one_token"] <= 1 / 2.5)
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    run()
