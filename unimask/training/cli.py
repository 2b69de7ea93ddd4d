"""``unimask train``: run a training recipe (the same code as ``torchrun -m unimask.train``)."""

from __future__ import annotations

import argparse
import logging
import sys

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--config``, ``--resume``, ``--log-level`` to ``parser``."""
    parser.add_argument("--config", required=True, help="training recipe YAML (configs/train/*.yaml)")
    parser.add_argument("--resume", action="store_true", help="continue exactly from <out_dir>/checkpoints/latest")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])


def run(args: argparse.Namespace) -> int:
    """Load the recipe, validate everything, train. Returns 0 on success, 1 on a reported failure."""
    from unimask.config import ConfigError
    from unimask.training.checkpoint import CheckpointError
    from unimask.training.distributed import init_distributed, shutdown_distributed
    from unimask.training.recipe import load_recipe
    from unimask.training.trainer import NonFiniteLossError, Trainer

    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    context = None
    try:
        recipe = load_recipe(args.config)
        context = init_distributed()
        trainer = Trainer(recipe, resume=args.resume, context=context)
        trainer.fit()
    except (ConfigError, ValueError, NotImplementedError, CheckpointError, NonFiniteLossError) as err:
        rank = context.rank if context is not None else 0
        print(f"unimask train: error: {err}", file=sys.stderr, flush=True)
        if rank == 0:
            logging.getLogger("unimask.train").debug("failure", exc_info=True)
        return 1
    finally:
        if context is not None:
            shutdown_distributed(context)
    return 0
