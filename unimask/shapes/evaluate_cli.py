"""``unimask eval``: evaluate a model on Shapes World, print the scores as JSON and save them.

    unimask eval                                  # the embedded default model, every task
    unimask eval --model DIR --num-per-type 20 --tasks understanding editing --steps 4 --output r.json

The results (see `unimask.shapes.evaluate.evaluate`) go to stdout as JSON and to ``--output``; progress
bars and the saved path go to stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from unimask.default_model import DEFAULT_MODEL_NAME
from unimask.pipelines.cli_common import DTYPES, parse_options, run_guarded
from unimask.shapes.evaluate import DECODER_VARIANTS, TEXT_TO_IMAGE_READERS, evaluate
from unimask.shapes.tasks import TASKS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``unimask eval``."""
    parser.add_argument(
        "--model",
        default=DEFAULT_MODEL_NAME,
        help=f"checkpoint directory (our layout or the official one); default: {DEFAULT_MODEL_NAME!r}",
    )
    parser.add_argument("--num-per-type", type=int, default=10, help="samples per task, type and split")
    parser.add_argument("--seed", type=int, default=0, help="seed of the evaluation suite and the samplers")
    parser.add_argument("--output", "-o", default="results.json", help="where to save the results JSON")
    parser.add_argument("--tasks", nargs="+", choices=TASKS, default=list(TASKS), help="tasks to evaluate")
    parser.add_argument(
        "--decoders", nargs="+", choices=TEXT_TO_IMAGE_READERS, default=list(DECODER_VARIANTS),
        help="what text-to-image images are read through: decoder variants, or codes (the generated code grids "
             "drawn by a patch lookup, no decoder: the backbone alone)",
    )
    parser.add_argument("--batch-size", type=int, default=8, help="samples per pipeline call")
    parser.add_argument(
        "--normal-decoder-steps", type=int, default=None, help="steps of the normal decoder (default: its own)"
    )
    parser.add_argument("--records", action="store_true", help="also save one record per sample (prompt, "
                        "expected, predicted, correct)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    parser.add_argument("--device", default=None, help="torch device, e.g. cuda or cpu (default: cpu)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="weight dtype (default: as stored)")
    parser.add_argument("--steps", type=int, default=None, help="denoising steps per block")
    parser.add_argument("--block-length", type=int, default=None, help="tokens per block")
    parser.add_argument("--threshold", type=float, default=None, help="confidence threshold in (0, 1]")
    parser.add_argument("--use-sprint", action="store_true", default=None, help="SPRINT prefix cache")
    parser.add_argument(
        "--option", action="append", default=[], metavar="KEY=VALUE",
        help="any sampler/decoder/task option for every call, VALUE parsed as JSON when possible (repeatable)",
    )


def run(args: argparse.Namespace) -> int:
    """Load the model, evaluate, print the results JSON and save it to ``--output``. Returns the exit code
    (2 with a message on stderr for a bad argument or a missing model)."""

    def body() -> int:
        if args.num_per_type < 1:
            raise ValueError(f"--num-per-type={args.num_per_type} must be >= 1")
        options = parse_options(args)
        from unimask.pipelines.pipeline_uni import UniPipeline

        pipe = UniPipeline.from_pretrained(args.model or None, torch_dtype=DTYPES.get(args.dtype), device=args.device)
        results = evaluate(
            pipe,
            tasks=args.tasks,
            num_per_type=args.num_per_type,
            seed=args.seed,
            decoders=args.decoders,
            batch_size=args.batch_size,
            options=options,
            normal_decoder_steps=args.normal_decoder_steps,
            include_records=args.records,
            progress=not args.no_progress,
            model=str(args.model),
        )
        text = json.dumps(results, indent=2, default=str)
        output = Path(args.output)
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(text + "\n")
        print(text)
        print(f"unimask eval: results saved to {output}", file=sys.stderr)
        return 0

    return run_guarded("eval", body)
