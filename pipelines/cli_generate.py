"""``unimask generate``: text-to-image (optionally with thinking); writes PNG files."""

from __future__ import annotations

import argparse

from unimask.pipelines.cli_common import (
    add_common_arguments,
    generators,
    load_pipeline,
    output_paths,
    parse_options,
    print_json,
    run_guarded,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``unimask generate``."""
    parser.add_argument("prompt", help="what to draw")
    parser.add_argument("--num-images", type=int, default=1, help="images to generate")
    parser.add_argument("--height", type=int, default=None, help="output height in pixels")
    parser.add_argument("--width", type=int, default=None, help="output width in pixels")
    parser.add_argument("--thinking", action="store_true", help="reason in text before drawing")
    add_common_arguments(parser, images_out=True)


def run(args: argparse.Namespace) -> int:
    """Generate, save the images, print their paths (and the thinking text). Returns the exit code."""

    def body() -> int:
        pipe = load_pipeline(args)
        result = pipe.text_to_image(
            args.prompt,
            height=args.height,
            width=args.width,
            thinking=args.thinking,
            num_images_per_prompt=args.num_images,
            generator=generators(args, args.num_images, args.device),
            **parse_options(args),
        )
        paths = output_paths(args.output, len(result.images))
        for path, images in zip(paths, result.images):
            path.parent.mkdir(parents=True, exist_ok=True)
            images[0].save(path)
        if args.json:
            print_json({"files": [str(p) for p in paths], "thinking": result.texts, "stats": result.stats})
        else:
            for text in result.texts:
                if text:
                    print(f"thinking: {text}")
            for path in paths:
                print(path)
        return 0

    return run_guarded("generate", body)
