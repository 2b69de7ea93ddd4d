"""Decoder benchmark: 8-step turbo vs 50-point guided ("normal") decode, side by side.

Both paths use the same small random-weight config (preset "shapes"; "tiny" when quick) at that
preset's default size (8 x 8 token grid at 1x: 128 px) on the same token grids, in one process.
Run: `python -m unimask.benchmarks.decoder [--quick]`.
"""

from __future__ import annotations

import json
import statistics
import sys
import time

import torch

from unimask.decoders.decoder_presets import build_decoder, load_decoder_preset
from unimask.decoders.vae_latents import vae_downsampling_factor


def _time_decode(decoder, token_grids, multiplier: int, repeats: int) -> list[float]:
    decoder(token_grids, resolution_multiplier=multiplier, output_type="pt")  # warm-up
    times = []
    for repeat in range(repeats):
        generator = torch.Generator().manual_seed(repeat)
        start = time.perf_counter()
        decoder(token_grids, resolution_multiplier=multiplier, output_type="pt", generator=generator)
        times.append(time.perf_counter() - start)
    return times


def default_model_scores(quick: bool = False) -> dict | None:
    """Text-to-image checker scores and times of the trained default model's turbo and normal decoders
    (`unimask.shapes.evaluate`); None when ``unimask/default_model/`` is not built."""
    from unimask.default_model import default_model_available

    if not default_model_available():
        return None
    from unimask.pipelines import UniPipeline
    from unimask.shapes.evaluate import evaluate

    evaluated = evaluate(UniPipeline.from_pretrained(), tasks=("text_to_image",), num_per_type=2 if quick else 8,
                         decoders=("turbo", "normal"), progress=False, model="shapes-default")
    return {"text_to_image": evaluated.get("text_to_image"), "sampling": evaluated["sampling"]}


def run(quick: bool = False) -> dict:
    """Time one turbo and one normal decode (default steps and guidance of each variant).

    Returns {"config", "grid", "resolution_multiplier", "image_size", "threads", "device",
    "turbo": {...}, "normal": {...}, "normal_over_turbo" (median) and "normal_over_turbo_min",
    "vae_decode_seconds_min" and "normal_over_turbo_without_vae", "default_model", "goal_met"}; each path
    reports steps, guidance, transformer evaluations, seconds min/median over the repeats."""
    preset_name = "tiny" if quick else "shapes"
    preset = load_decoder_preset(preset_name)
    repeats = 2 if quick else 3
    height, width = preset["default_grid"]
    multiplier = preset["resolution_multiplier"]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    vocab_size = preset["sigvq"]["vocab_size"]
    token_grids = torch.randint(0, vocab_size, (1, height, width), generator=torch.Generator().manual_seed(0))
    results = {
        "config": preset_name,
        "grid": [height, width],
        "resolution_multiplier": multiplier,
        "image_size": [height * 16 * multiplier, width * 16 * multiplier],
        "threads": torch.get_num_threads(),
        "device": device,
    }
    with torch.inference_mode():
        for variant in ("turbo", "normal"):
            decoder = build_decoder(preset, variant=variant, seed=0).to(device)
            steps, guidance = decoder.defaults
            times = _time_decode(decoder, token_grids, multiplier, repeats)
            evaluations = (steps if variant == "turbo" else steps - 1) * (2 if guidance > 0 else 1)
            results[variant] = {
                "steps": steps,
                "guidance_scale": guidance,
                "transformer_evaluations": evaluations,
                "seconds_min": min(times),
                "seconds_median": statistics.median(times),
            }
        # The VAE decode is the same fixed cost in both paths; at this small size it is about as long as
        # the 8 turbo transformer steps, which caps the wall ratio well under the evaluation ratio.
        vae = decoder.vae
        factor = vae_downsampling_factor(vae)
        pixel_height, pixel_width = decoder.output_size(height, width, multiplier)
        latents = torch.randn(1, vae.config.latent_channels, pixel_height // factor, pixel_width // factor, device=device)
        vae.decode(latents)
        vae_times = []
        for _ in range(repeats):
            start = time.perf_counter()
            vae.decode(latents)
            vae_times.append(time.perf_counter() - start)
    vae_seconds = min(vae_times)
    results["vae_decode_seconds_min"] = vae_seconds
    results["normal_over_turbo_without_vae"] = (results["normal"]["seconds_min"] - vae_seconds) / max(
        results["turbo"]["seconds_min"] - vae_seconds, 1e-9)
    results["normal_over_turbo"] = results["normal"]["seconds_median"] / results["turbo"]["seconds_median"]
    results["normal_over_turbo_min"] = results["normal"]["seconds_min"] / results["turbo"]["seconds_min"]
    results["default_model"] = default_model_scores(quick) or "not built (unimask/default_model/ missing)"
    results["goal_met"] = results["normal_over_turbo_min"] >= 10.0
    print(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    run(quick="--quick" in sys.argv)
