"""``unimask interleave``: interleaved text and images; prints the text with image file markers."""

from __future__ import annotations

import argparse
from pathlib import Path

from unimask.pipelines.cli_common import (
    add_common_arguments,
    generators,
    load_pipeline,
    parse_options,
    print_json,
    run_guarded,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``unimask interleave``."""
    parser.add_argument("prompt", help="the request")
    parser.add_argument("--gen-length", type=int, default=None, help="text tokens per round")
    parser.add_argument("--max-images", type=int, default=None, help="most images to open")
    parser.add_argument("--output-dir", default="unimask_interleaved", help="folder for the images")
    add_common_arguments(parser, images_out=False)
    parser.add_argument("--decoder", choices=("turbo", "normal"), default=None, help="image decoder variant")


def run(args: argparse.Namespace) -> int:
    """Generate, save images as ``image_{i}.png`` in --output-dir, print text and ``[image: path]`` markers."""

    def body() -> int:
        pipe = load_pipeline(args)
        result = pipe.interleaved(
            args.prompt,
            generator=generators(args, 1, args.device),
            **parse_options(args),
        )
        folder = Path(args.output_dir)
        lines, files = [], []
        for part in result.parts[0]:
            if isinstance(part, str):
                lines.append(part)
                continue
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / f"image_{len(files)}.png"
            part.save(path)
            files.append(str(path))
            lines.append(f"[image: {path}]")
        if args.json:
            print_json({"parts": lines, "files": files, "stats": result.stats})
        else:
            print("\n".join(lines))
        return 0

    return run_guarded("interleave", body)
