"""``unimask edit``: edit one image, or compose several references, by an instruction; writes PNG files."""

from __future__ import annotations

import argparse

from unimask.pipelines.cli_common import (
    add_common_arguments,
    generators,
    load_images,
    load_pipeline,
    output_paths,
    parse_options,
    print_json,
    run_guarded,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``unimask edit``."""
    parser.add_argument("prompt", help="the editing instruction")
    parser.add_argument("--image", action="append", required=True, help="source image (repeat for references)")
    parser.add_argument("--num-images", type=int, default=1, help="edited images to generate")
    parser.add_argument("--height", type=int, default=None, help="output height in pixels")
    parser.add_argument("--width", type=int, default=None, help="output width in pixels")
    add_common_arguments(parser, images_out=True)


def run(args: argparse.Namespace) -> int:
    """Edit, save the images and print their paths. Returns the exit code."""

    def body() -> int:
        images = load_images(args.image)
        pipe = load_pipeline(args)
        result = pipe.edit(
            args.prompt,
            images,
            height=args.height,
            width=args.width,
            num_images_per_prompt=args.num_images,
            generator=generators(args, args.num_images, args.device),
            **parse_options(args),
        )
        paths = output_paths(args.output, len(result.images))
        for path, edited in zip(paths, result.images):
            path.parent.mkdir(parents=True, exist_ok=True)
            edited[0].save(path)
        if args.json:
            print_json({"files": [str(p) for p in paths], "stats": result.stats})
        else:
            for path in paths:
                print(path)
        return 0

    return run_guarded("edit", body)
