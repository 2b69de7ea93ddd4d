"""``unimask chat``: text chat; one message from the command line, or a conversation on stdin."""

from __future__ import annotations

import argparse
import sys

from unimask.pipelines.cli_common import (
    add_common_arguments,
    generators,
    load_pipeline,
    parse_options,
    print_json,
    run_guarded,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``unimask chat``."""
    parser.add_argument("prompt", nargs="?", default=None, help="the message (omit with --interactive)")
    parser.add_argument("--interactive", action="store_true", help="read messages from stdin, one per line")
    parser.add_argument("--gen-length", type=int, default=None, help="reply length in tokens")
    add_common_arguments(parser, images_out=False)


def run(args: argparse.Namespace) -> int:
    """Print the reply (or each reply of an interactive conversation). Returns the exit code."""

    def body() -> int:
        if not args.interactive and not args.prompt:
            raise ValueError("prompt is required (or use --interactive)")
        pipe = load_pipeline(args)
        options = parse_options(args)
        if not args.interactive:
            result = pipe.chat(args.prompt, generator=generators(args, 1, args.device), **options)
            if args.json:
                print_json({"text": result.texts[0], "stats": result.stats})
            else:
                print(result.texts[0])
            return 0
        messages = []
        for line in sys.stdin:
            if not line.strip():
                continue
            messages.append({"role": "user", "content": line.strip()})
            result = pipe.chat(messages=messages, **options)
            reply = result.texts[0]
            messages.append({"role": "assistant", "content": reply})
            print(reply, flush=True)
        return 0

    return run_guarded("chat", body)
