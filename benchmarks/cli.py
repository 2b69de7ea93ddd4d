"""``unimask bench [name ...]``: run side-by-side benchmarks, print and save their JSON.

Each benchmark is a module in this folder exposing ``run(quick: bool = False) -> dict``; it compares
two code paths in one process and reports ratios. Results are written to
``benchmarks/results/<name>.json`` (in a checkout; the current directory otherwise) together with a
description of the machine, so figures can be compared only where the machine is the same.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import os
import platform
import sys
import time
from pathlib import Path

# name -> module; a module that is not there yet is reported as unavailable.
BENCHMARKS: dict[str, str] = {
    "moe": "unimask.benchmarks.moe",
    "load": "unimask.benchmarks.load",
    "sampler": "unimask.benchmarks.sampler_nfe",
    "cache": "unimask.benchmarks.cache",
    "decoder": "unimask.benchmarks.decoder",
    "image_tokenizer": "unimask.benchmarks.image_tokenizer",
    "train": "unimask.benchmarks.train_mfu",
    "official_size": "unimask.benchmarks.official_size",
}


def machine_description() -> dict:
    """The facts needed to compare figures: CPU/GPU, core count, thread count, library versions."""
    import torch

    description = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    return description


def results_dir() -> Path:
    """``benchmarks/results`` of the checkout when run from one, else ``./benchmark-results``."""
    checkout = Path(__file__).resolve().parent / "results"
    if checkout.is_dir() and os.access(checkout, os.W_OK):
        return checkout
    return Path.cwd() / "benchmark-results"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``unimask bench``."""
    parser.add_argument("names", nargs="*", help=f"benchmarks to run (default: all): {', '.join(BENCHMARKS)}")
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--no-save", action="store_true", help="print only, do not write results files")


def run(args: argparse.Namespace) -> int:
    """Run the chosen benchmarks; returns 0, or 2 when a name is unknown."""
    names = args.names or list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        print(f"unknown benchmark(s) {unknown}; choose from {list(BENCHMARKS)}", file=sys.stderr)
        return 2
    machine = machine_description()
    for name in names:
        try:
            module = importlib.import_module(BENCHMARKS[name])
        except ModuleNotFoundError as err:
            print(json.dumps({"benchmark": name, "available": False, "reason": str(err)}))
            continue
        start = time.perf_counter()
        result = module.run(quick=args.quick)
        if "skipped" in result:
            # A benchmark this machine cannot run (official_size without a GPU) keeps its last saved figures.
            print(json.dumps({"benchmark": name, "skipped": result["skipped"]}))
            continue
        record = {
            "benchmark": name,
            "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "quick": args.quick,
            "machine": machine,
            "seconds": round(time.perf_counter() - start, 2),
            "result": result,
        }
        text = json.dumps(record, indent=2)
        print(text)
        if not args.no_save:
            out = results_dir()
            out.mkdir(parents=True, exist_ok=True)
            (out / f"{name}{'-quick' if args.quick else ''}.json").write_text(text + "\n")
    return 0
