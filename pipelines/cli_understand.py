"""``unimask understand``: answer a question about one or more images; prints the answer."""

from __future__ import annotations

import argparse

from unimask.pipelines.cli_common import (
    add_common_arguments,
    generators,
    load_images,
    load_pipeline,
    parse_options,
    print_json,
    run_guarded,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``unimask understand``."""
    parser.add_argument("prompt", help="the question")
    parser.add_argument("--image", action="append", required=True, help="image file (repeat for several)")
    parser.add_argument("--gen-length", type=int, default=None, help="answer length in tokens")
    add_common_arguments(parser, images_out=False)


def run(args: argparse.Namespace) -> int:
    """Print the answer. Returns the exit code."""

    def body() -> int:
        images = load_images(args.image)
        pipe = load_pipeline(args)
        result = pipe.understanding(
            args.prompt,
            images,
            generator=generators(args, 1, args.device),
            **parse_options(args),
        )
        if args.json:
            print_json({"text": result.texts[0], "stats": result.stats})
        else:
            print(result.texts[0])
        return 0

    return run_guarded("understand", body)
