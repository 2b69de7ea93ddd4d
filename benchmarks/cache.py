"""SPRINT prefix KV cache: cached vs uncached decoding, and prefix pruning at keep ratios 0.75 / 0.5 / 0.25.

Editing-shaped requests (long prefixes): a text instruction around one reference image (``editing``)
or three (``multi_reference``), each a 16 x 16 grid of image codes, then a 16 x 16 grid of image codes
to generate (8 blocks of 32). Every variant decodes the same requests with the same tiny random
backbone (`write_tiny_official_backbone`, lm_head sharpened as in `sampler_nfe.py`) in one process, with
the same fixed schedule (8 steps per block, threshold off), so the number of forwards is equal and the
uncached and unpruned-cached runs must give identical tokens (``tokens_identical``). Pruned runs
report ``agreement``: the share of generated tokens equal to the unpruned run's. With the trained
default model (``unimask/default_model/``) the editing task scores of `unimask.shapes.evaluate` are
added per variant.

Goal (issue 12): cached without pruning >= 2x faster than uncached.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from unimask.unimodal.sampler import IMAGE_KIND, PROMPT_KIND, MaskedDiffusionSampler
from unimask.unimodal.sampler_config import SamplerConfig

MASK_ID, EOS_ID = 255, 1
TEXT_IDS, IMAGE_IDS = (2, 240), (256, 512)
GRID = 16
KEEP_RATIOS = (0.75, 0.5, 0.25)
LOGIT_SCALE = 60.0


def _backbone(directory: Path) -> torch.nn.Module:
    from unimask.unimodal.modeling_llada2_moe import LLaDA2MoeModelLM
    from unimask.unimodal.tiny_checkpoint import write_tiny_official_backbone

    path = write_tiny_official_backbone(directory, seed=0, max_position_embeddings=2048)
    model = LLaDA2MoeModelLM.from_pretrained(path).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(LOGIT_SCALE)
    return model


def edit_requests(references: int, batch: int, grid: int = GRID, seed: int = 0, *, output_grid: int | None = None,
                  text_ids: tuple[int, int] = TEXT_IDS, image_ids: tuple[int, int] = IMAGE_IDS,
                  mask_id: int = MASK_ID) -> dict:
    """Sampler inputs for ``batch`` editing requests with ``references`` reference images each.

    Returns {"input_ids", "token_kinds", "padding_mask"}, all (batch, seq): instruction text, the
    reference code grids (grid x grid each, with a short text after each; the prompt), then output_grid *
    output_grid (default grid) masked IMAGE positions. text_ids / image_ids: [low, high) ranges drawn from;
    the defaults are the tiny backbone's."""
    output_grid = grid if output_grid is None else output_grid
    generator = torch.Generator().manual_seed(seed + references)
    rows, kinds = [], []
    for _ in range(batch):
        parts = [torch.randint(*text_ids, (24,), generator=generator)]
        for _ in range(references):
            parts.append(torch.randint(*image_ids, (grid * grid,), generator=generator))
            parts.append(torch.randint(*text_ids, (4,), generator=generator))
        prompt = torch.cat(parts)
        written = output_grid * output_grid
        rows.append(torch.cat([prompt, torch.full((written,), mask_id)]))
        kinds.append(torch.cat([torch.full((prompt.numel(),), PROMPT_KIND), torch.full((written,), IMAGE_KIND)]))
    input_ids = torch.stack(rows)
    return {"input_ids": input_ids, "token_kinds": torch.stack(kinds).to(torch.int8),
            "padding_mask": torch.ones_like(input_ids, dtype=torch.bool)}


def _timed(sampler, inputs: dict, config: SamplerConfig, repeats: int):
    times, output = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        output = sampler(**inputs, config=config, generator=torch.Generator().manual_seed(0))
        times.append(time.perf_counter() - started)
    stats = output.stats
    return output.sequences, {
        "nfe": stats.nfe, "cache_reuses": stats.cache_reuses,
        "prefix_entries_kept": stats.prefix_entries_kept, "prefix_entries_dropped": stats.prefix_entries_dropped,
        "wall_s_min": round(min(times), 4), "wall_s_median": round(statistics.median(times), 4),
    }


def run_with_model(model, quick: bool = False, grid: int | None = None) -> dict:
    """All variants on both request kinds with ``model`` (backbone contract); returns the results dict.
    grid: side of the image code grids (default 16, 8 when quick)."""
    image_vocab = torch.zeros(512, dtype=torch.bool)
    image_vocab[IMAGE_IDS[0]:IMAGE_IDS[1]] = True
    sampler = MaskedDiffusionSampler(model, mask_id=MASK_ID, eos_id=EOS_ID, kind_vocab_masks={IMAGE_KIND: image_vocab})
    base = SamplerConfig(block_length=32, num_inference_steps=8, threshold=1.0, eos_early_stop=False)
    variants = {"no_cache": base, "cache": base.replace(use_sprint=True, keep_ratio=1.0)}
    variants.update({f"cache_keep_{r}": base.replace(use_sprint=True, keep_ratio=r) for r in KEEP_RATIOS})
    repeats, batch, default_grid = (1, 1, 8) if quick else (2, 1, GRID)
    grid = grid or default_grid
    report: dict = {"setup": {"grid": grid, "block_length": 32, "steps_per_block": 8, "batch": batch,
                              "repeats": repeats, "logit_scale": LOGIT_SCALE}}
    for kind, references in (("editing", 1), ("multi_reference", 3)):
        inputs = edit_requests(references, batch, grid)
        generated = inputs["token_kinds"] == IMAGE_KIND
        sequences, results = {}, {}
        for name, config in variants.items():
            sequences[name], results[name] = _timed(sampler, inputs, config, repeats)
        reference = sequences["cache"]
        for name in variants:
            if name.startswith("cache_keep_"):
                results[name]["agreement"] = round(float((sequences[name] == reference)[generated].float().mean()), 4)
                results[name]["wall_over_no_cache"] = round(
                    results["no_cache"]["wall_s_min"] / results[name]["wall_s_min"], 3)
        speedup = results["no_cache"]["wall_s_min"] / results["cache"]["wall_s_min"]
        report[kind] = {
            "prefix_len": int(inputs["input_ids"].shape[1] - grid * grid),
            "variants": results,
            "tokens_identical": bool(torch.equal(sequences["cache"], sequences["no_cache"])),
            "cache_speedup_min": round(speedup, 3),
            "cache_speedup_median": round(
                results["no_cache"]["wall_s_median"] / results["cache"]["wall_s_median"], 3),
        }
    report["goal_met"] = all(report[k]["cache_speedup_min"] >= 2.0 and report[k]["tokens_identical"]
                             for k in ("editing", "multi_reference"))
    return report


def default_model_scores(quick: bool = False) -> dict | None:
    """Editing scores of the trained default model per cache variant (None when it is not built)."""
    from unimask.default_model import default_model_available

    if not default_model_available():
        return None
    from unimask.pipelines import UniPipeline
    from unimask.shapes.evaluate import evaluate

    pipe = UniPipeline.from_pretrained()
    results = {}
    options = {"no_cache": {"use_sprint": False}, "cache": {"use_sprint": True, "keep_ratio": 1.0}}
    options.update({f"cache_keep_{r}": {"use_sprint": True, "keep_ratio": r} for r in KEEP_RATIOS})
    for name, option in options.items():
        evaluated = evaluate(pipe, tasks=("editing", "multi_reference_editing"), num_per_type=1 if quick else 4,
                             options=option, progress=False, model="shapes-default")
        results[name] = {"summary": evaluated["summary"], "sampling": evaluated["sampling"]}
    return results


def run(quick: bool = False) -> dict:
    """Benchmark the prefix cache; prints and returns the JSON dict (see the module docstring)."""
    with tempfile.TemporaryDirectory() as directory:
        model = _backbone(Path(directory) / "backbone")
    with torch.no_grad():
        result = run_with_model(model, quick=quick)
    scores = default_model_scores(quick)
    result["default_model"] = scores if scores is not None else "not built (unimask/default_model/ missing)"
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    run(quick="--quick" in sys.argv)
