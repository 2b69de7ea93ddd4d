"""Arguments and helpers shared by the pipeline subcommands (``unimask generate|understand|edit|interleave|chat``)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch

from unimask.default_model import DEFAULT_MODEL_NAME

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def add_common_arguments(parser: argparse.ArgumentParser, images_out: bool) -> None:
    """Add --model, --device, --dtype, --seed, the sampler shortcuts and ``--option KEY=VALUE``."""
    parser.add_argument(
        "--model",
        default=DEFAULT_MODEL_NAME,
        help=f"checkpoint directory (our layout or the official one); default: {DEFAULT_MODEL_NAME!r}, the "
        "embedded default model",
    )
    parser.add_argument("--device", default=None, help="torch device, e.g. cuda or cpu (default: cpu)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="weight dtype (default: as stored)")
    parser.add_argument("--seed", type=int, default=None, help="random seed (one generator per sample)")
    parser.add_argument("--steps", type=int, default=None, help="denoising steps per block")
    parser.add_argument("--block-length", type=int, default=None, help="tokens per block")
    parser.add_argument("--threshold", type=float, default=None, help="confidence threshold in (0, 1]")
    parser.add_argument("--use-sprint", action="store_true", default=None, help="SPRINT prefix cache")
    parser.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any sampler/decoder/task option, VALUE parsed as JSON when possible (repeatable)",
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON (texts, files, stats)")
    if images_out:
        parser.add_argument("--decoder", choices=("turbo", "normal"), default=None, help="image decoder variant")
        parser.add_argument("--output", "-o", default="unimask_output.png", help="output image path (PNG)")


def parse_options(args: argparse.Namespace) -> dict[str, Any]:
    """The pipeline options given by the shortcuts and ``--option`` flags."""
    options: dict[str, Any] = {
        "steps": args.steps,
        "block_length": args.block_length,
        "threshold": args.threshold,
        "use_sprint": args.use_sprint,
        "decoder": getattr(args, "decoder", None),
        "gen_length": getattr(args, "gen_length", None),
        "max_images": getattr(args, "max_images", None),
    }
    for item in args.option:  # --option wins over the shortcuts
        if "=" not in item:
            raise ValueError(f"--option {item!r} must look like KEY=VALUE")
        key, value = item.split("=", 1)
        try:
            options[key.replace("-", "_")] = json.loads(value)
        except json.JSONDecodeError:
            options[key.replace("-", "_")] = value
    return {key: value for key, value in options.items() if value is not None}


def load_pipeline(args: argparse.Namespace):
    """`UniPipeline` from ``--model`` (a directory, or ``shapes-default``: the embedded default model) on
    ``--device`` / ``--dtype``; ValueError saying how to build the default model when it is missing."""
    from unimask.pipelines.pipeline_uni import UniPipeline

    pipe = UniPipeline.from_pretrained(args.model or None, torch_dtype=DTYPES.get(args.dtype), device=args.device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def generators(args: argparse.Namespace, count: int, device: str | None) -> list[torch.Generator] | None:
    """One generator per sample seeded ``seed + i``, or None without --seed."""
    if args.seed is None:
        return None
    return [torch.Generator(device=device or "cpu").manual_seed(args.seed + i) for i in range(count)]


def output_paths(output: str, count: int) -> list[Path]:
    """``count`` PNG paths: ``output`` itself for one image, ``stem_{i}.png`` for several."""
    path = Path(output)
    if count == 1:
        return [path]
    return [path.with_name(f"{path.stem}_{index}{path.suffix or '.png'}") for index in range(count)]


def load_images(paths: list[str]):
    """Open image files safely (size limits checked from the header before decoding, first frame of an
    animation, EXIF orientation applied); a missing, unreadable or oversized file raises ValueError naming it."""
    from unimask.tokenizers.image_preprocessing import open_image

    images = []
    for path in paths:
        try:
            images.append(open_image(path))
        except FileNotFoundError:
            raise ValueError(f"--image {path!r} does not exist") from None
        except ValueError as error:
            raise ValueError(f"--image {path!r}: {error}") from error
    return images


def run_guarded(command: str, body) -> int:
    """Run ``body() -> int``; a ValueError is printed as ``unimask <command>: <message>`` with exit code 2."""
    try:
        return int(body() or 0)
    except ValueError as error:
        print(f"unimask {command}: {error}", file=sys.stderr)
        return 2


def print_json(payload: dict[str, Any]) -> None:
    """Print ``payload`` as JSON (non-serialisable values as strings)."""
    print(json.dumps(payload, indent=2, default=str))
