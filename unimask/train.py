"""``python -m unimask.train`` / ``torchrun --nproc-per-node N -m unimask.train --config recipe.yaml``.

The same entry as ``unimask train``: one process trains plainly, torchrun processes join one
process group and train with FSDP2 (see :mod:`unimask.training.distributed`).
"""

from __future__ import annotations

import argparse
import sys

from unimask.training.cli import add_arguments, run


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``) and train; returns the exit code."""
    parser = argparse.ArgumentParser(prog="python -m unimask.train", description="Train a unimask stage from a recipe.")
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
