"""How well a pipeline's decoder draws true code grids: the decoder alone, without the backbone.

Scenes are rendered, coded by the pipeline's own image tokenizer, decoded back to pixels and read by
the checker, so the strict / soft scores say what the decoder makes of grids a perfect backbone would
write. ``python -m unimask.shapes.decoder_check [--model DIR] [--count 96] [--decoder turbo]
[--steps N] [--draft-strength S]`` prints them as JSON.
"""

from __future__ import annotations

import argparse
import json
import random
from typing import Any

import torch

from unimask.shapes.checker import read_scene
from unimask.shapes.render import render
from unimask.shapes.scene import sample_scene
from unimask.shapes.scoring import text_to_image_score

__all__ = ["true_grid_scores", "main"]

CHECK_SEED = 123


def true_grid_scores(
    pipe: Any,
    count: int = 96,
    decoder: str = "turbo",
    num_inference_steps: int | None = None,
    draft_strength: float | None = None,
    seed: int = CHECK_SEED,
    batch_size: int = 16,
) -> dict[str, float]:
    """Decode the true code grids of ``count`` scenes (drawn from ``seed``) with the pipeline's
    ``decoder`` variant and score the images against the scenes.

    pipe: a `UniPipeline` with an image tokenizer and decoders. num_inference_steps / draft_strength:
    None -> the decoder's defaults. Returns ``text_to_image_score``'s dict (strict, soft, background,
    extra_objects, count). Raises ValueError for a count below 1.
    """
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    rng = random.Random(seed)
    scenes = [sample_scene(rng) for _ in range(count)]
    image_decoder = pipe.decoder_for(decoder)
    predictions = []
    for start in range(0, count, batch_size):
        batch = scenes[start : start + batch_size]
        grids = pipe.image_tokenizer.encode([render(scene) for scene in batch], "shapes_world").ids
        generators = [torch.Generator().manual_seed(seed + start + offset) for offset in range(len(batch))]
        images = image_decoder(grids, num_inference_steps=num_inference_steps, draft_strength=draft_strength,
                               generator=generators, resolution_multiplier=1).images
        predictions += [read_scene(image) for image in images]
    return text_to_image_score(predictions, scenes)


def main(argv: list[str] | None = None) -> int:
    """Command line; prints the scores as JSON."""
    from unimask.pipelines import UniPipeline

    parser = argparse.ArgumentParser(prog="python -m unimask.shapes.decoder_check", description=__doc__)
    parser.add_argument("--model", default=None, help="checkpoint directory (default: the shipped model)")
    parser.add_argument("--count", type=int, default=96)
    parser.add_argument("--decoder", choices=("turbo", "normal"), default="turbo")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--draft-strength", type=float, default=None)
    parser.add_argument("--seed", type=int, default=CHECK_SEED)
    args = parser.parse_args(argv)
    pipe = UniPipeline.from_pretrained(args.model) if args.model else UniPipeline.from_pretrained()
    pipe.set_progress_bar_config(disable=True)
    scores = true_grid_scores(pipe, args.count, args.decoder, args.steps, args.draft_strength, args.seed)
    print(json.dumps(scores, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
