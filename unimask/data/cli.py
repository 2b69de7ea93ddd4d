"""``unimask data write`` (build shards) and ``unimask data tokenize`` (add image codes to shards)."""

from __future__ import annotations

import argparse
import json
import logging
import sys

__all__ = ["add_arguments", "run"]


def _parse_option(text: str) -> tuple[str, object]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"--option {text!r} must look like key=value")
    key, value = text.split("=", 1)
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``write`` and ``tokenize`` sub-commands to ``parser``."""
    actions = parser.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    write = actions.add_parser("write", help="build webdataset shards from images+captions, a jsonl, or a generator")
    source = write.add_mutually_exclusive_group(required=True)
    source.add_argument("--images", metavar="DIR", help="folder of images with same-name .txt captions")
    source.add_argument("--jsonl", metavar="FILE", help="jsonl of tasks (task, text fields, image paths)")
    source.add_argument("--generator", metavar="NAME", help="registered sample generator (shapes, toy)")
    write.add_argument("--count", type=int, default=1000, help="samples to generate (--generator)")
    write.add_argument("--seed", type=int, default=0, help="generator seed (--generator)")
    write.add_argument("--option", type=_parse_option, action="append", default=[], metavar="KEY=VALUE",
                       help="extra generator option (JSON value), repeatable")
    write.add_argument("--out", required=True, metavar="DIR", help="output folder")
    write.add_argument("--prefix", default="shard", help="shard file name prefix")
    write.add_argument("--max-count", type=int, default=1000, help="samples per shard")
    write.add_argument("--max-size", type=float, default=1e9, help="bytes per shard")
    write.add_argument("--image-format", choices=["png", "jpg"], default="png")

    tokenize = actions.add_parser("tokenize", help="add codes.npy (image token grids) to existing shards")
    tokenize.add_argument("shards", nargs="+", help="shard files, globs, brace patterns or folders")
    tokenize.add_argument("--tokenizer", required=True, metavar="PATH", help="image_tokenizer/ folder (or a checkpoint root)")
    tokenize.add_argument("--batch-size", type=int, default=16, help="images per tokenizer call")
    tokenize.add_argument("--device", default="cpu")
    tokenize.add_argument("--force", action="store_true", help="re-encode shards already marked done")


def run(args: argparse.Namespace) -> int:
    """Run the chosen action; returns 0, or 1 with a message on bad input."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.data_command == "write":
            return _write(args)
        return _tokenize(args)
    except (ValueError, NotImplementedError) as err:
        print(f"unimask data {args.data_command}: error: {err}", file=sys.stderr)
        return 1


def _write(args: argparse.Namespace) -> int:
    from unimask.data.writer import samples_from_generator, samples_from_image_folder, samples_from_jsonl, write_shards

    if args.images:
        samples = samples_from_image_folder(args.images)
    elif args.jsonl:
        samples = samples_from_jsonl(args.jsonl)
    else:
        samples = samples_from_generator(args.generator, args.count, args.seed, **dict(args.option))
    paths = write_shards(samples, args.out, prefix=args.prefix, max_count=args.max_count, max_size=args.max_size, image_format=args.image_format)
    print(json.dumps({"shards": [str(p) for p in paths]}, indent=2))
    return 0


def _tokenize(args: argparse.Namespace) -> int:
    import dataclasses

    from unimask.data.loader import expand_shard_paths
    from unimask.data.tokenize_shards import add_image_codes, encode_fn_from_tokenizer
    from unimask.tokenizers.image_tokenizer import SigLIPVQTokenizer

    shards = expand_shard_paths(args.shards)
    tokenizer = SigLIPVQTokenizer.from_pretrained(args.tokenizer, device=args.device)
    report = add_image_codes(shards, encode_fn_from_tokenizer(tokenizer), batch_size=args.batch_size, force=args.force)
    print(json.dumps(dataclasses.asdict(report), indent=2))
    return 0
