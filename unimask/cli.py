"""The ``unimask`` command line.

Each subcommand lives in its own module exposing ``add_arguments(parser)`` and ``run(args) -> int``.
Only the chosen subcommand's module is imported, so ``unimask --help`` stays instant and a missing
feature fails with a clear message instead of an import error.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

# name -> (module implementing it, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "generate": ("unimask.pipelines.cli_generate", "text-to-image (optionally with thinking)"),
    "understand": ("unimask.pipelines.cli_understand", "answer a question about an image"),
    "edit": ("unimask.pipelines.cli_edit", "edit one image, or several references, by an instruction"),
    "interleave": ("unimask.pipelines.cli_interleave", "interleaved text and image output"),
    "chat": ("unimask.pipelines.cli_chat", "text chat"),
    "train": ("unimask.training.cli", "train a stage from a recipe (tokenizer, backbone, decoder, VAE)"),
    "eval": ("unimask.shapes.evaluate_cli", "evaluate a model on Shapes World and write JSON scores"),
    "bench": ("unimask.benchmarks.cli", "run side-by-side benchmarks and save JSON results"),
    "demo": ("unimask.demo", "run every task on the embedded default model and write an HTML report"),
    "data": ("unimask.data.cli", "write webdataset shards, add image codes to shards"),
}

NOT_IMPLEMENTED_EXIT = 2


def _load_command(name: str):
    """Import the module of subcommand ``name``; None when it is not implemented yet."""
    module_name = SUBCOMMANDS[name][0]
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name is not None and module_name.startswith(err.name):
            return None
        raise


def build_parser(command: str | None = None) -> tuple[argparse.ArgumentParser, object | None]:
    """Build the parser; only ``command``'s module is imported to add its arguments.

    Returns:
        (parser, module of ``command`` or None when not implemented / not chosen).
    """
    from unimask import __version__

    parser = argparse.ArgumentParser(
        prog="unimask",
        description="Unified multimodal masked-diffusion models (LLaDA2.0-Uni kind).",
    )
    parser.add_argument("--version", action="version", version=f"unimask {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    module = None
    for name, (_, help_text) in SUBCOMMANDS.items():
        sub = subparsers.add_parser(name, help=help_text, description=help_text)
        if name == command:
            module = _load_command(name)
            if module is not None:
                module.add_arguments(sub)
            else:
                sub.description = f"{help_text} (not implemented yet in this version of unimask)"
    return parser, module


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``unimask`` console script; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    if command not in SUBCOMMANDS:
        command = None
    parser, module = build_parser(command)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    if module is None:
        print(
            f"unimask {args.command}: not implemented yet in this version of unimask "
            f"(its module {SUBCOMMANDS[args.command][0]} is missing).",
            file=sys.stderr,
        )
        return NOT_IMPLEMENTED_EXIT
    return int(module.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
