"""Image tokenizer throughput: batched (one packed pass per batch) vs one-by-one encoding.

A small random SigLIP-VQ tokenizer (vision hidden 64, 2 layers, codebook 1024 x 32) encodes the same
random RGB images both ways, at the default size (the ~512 px understanding crop list: 32 x 32 tokens)
and at the Shapes World size (128 px: 8 x 8 tokens). Reported per setting and path: images/s (from
the min and the median wall time over repeats), the preprocessing share, and whether both paths give
identical token ids.
"""

from __future__ import annotations

import json
import statistics
import time

import numpy as np
import torch
from PIL import Image

from unimask.tokenizers.image_tokenizer import SigLIPVQTokenizer

SMALL_VISION_CONFIG = {"depth": 2, "hidden_size": 64, "num_heads": 4, "intermediate_size": 256, "image_size": 512}
SMALL_VQ_CONFIG = {"embed_dim": 32, "num_embeddings": 1024, "latent_channels": 64}


def _timed(function, repeats: int) -> tuple[list[float], object]:
    times, result = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - started)
    return times, result


def _throughput(times: list[float], count: int) -> dict:
    return {
        "images_per_s_best": round(count / min(times), 2),
        "images_per_s_median": round(count / statistics.median(times), 2),
        "wall_s_min": round(min(times), 4),
        "wall_s_median": round(statistics.median(times), 4),
    }


def run(quick: bool = False) -> dict:
    """Benchmark batched vs one-by-one encoding; prints and returns the JSON dict."""
    torch.manual_seed(0)
    tokenizer = SigLIPVQTokenizer.from_config(SMALL_VISION_CONFIG, SMALL_VQ_CONFIG).eval()
    num_images, repeats = (4, 2) if quick else (8, 5)
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)) for _ in range(num_images)]
    settings = {"default_understanding_512px": None, "shapes_world_128px": "shapes_world"}
    results = {"setup": {"num_images": num_images, "repeats": repeats, "threads": torch.get_num_threads(),
                         "vision_config": SMALL_VISION_CONFIG, "vq_config": SMALL_VQ_CONFIG}}
    for name, target_size in settings.items():
        def batched_encode():
            return tokenizer.encode(images, target_size=target_size, batch_size=num_images)

        def one_by_one_encode():
            return [tokenizer.encode(image, target_size=target_size) for image in images]

        batched_times, batched = _timed(batched_encode, repeats)
        single_times, singles = _timed(one_by_one_encode, repeats)
        preprocess_times, _ = _timed(lambda: tokenizer.preprocess(images, target_size), repeats)
        identical = all(torch.equal(single.ids[0], ids) for single, ids in zip(singles, batched.ids_list()))
        batched_median = statistics.median(batched_times)
        results[name] = {
            "grid": list(batched.grids[0]),
            "batched": _throughput(batched_times, num_images),
            "one_by_one": _throughput(single_times, num_images),
            "speedup_batched_over_one_by_one": round(statistics.median(single_times) / batched_median, 3),
            "preprocess_share_of_batched": round(statistics.median(preprocess_times) / batched_median, 3),
            "ids_identical": identical,
        }
    print(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    run()
