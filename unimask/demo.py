"""``unimask demo``: run every task once on the default model and write a self-contained HTML report.

    unimask demo                         # the embedded default model; prints the report's path
    unimask demo --model DIR --output demo.html
    unimask demo --web                   # the same tasks interactively in the browser (extra `demo`)

Tasks: understanding, text-to-image without and with thinking, editing, multi-reference editing,
interleaved text and images, and text chat, on Shapes World samples drawn from ``--seed``. The report shows
each prompt, the input and output images inline (base64 PNG), the answers, the sampling statistics and,
where a program can check the output, the checker's verdict (the scene read back from the image against
the expected one).
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from unimask.default_model import DEFAULT_MODEL_NAME

DEMO_TASKS: tuple[str, ...] = (
    "understanding",
    "text_to_image",
    "thinking",
    "editing",
    "multi_reference_editing",
    "interleaved",
    "chat",
)
TITLES = {
    "understanding": "Understanding",
    "text_to_image": "Text to image",
    "thinking": "Text to image with thinking",
    "editing": "Editing",
    "multi_reference_editing": "Multi-reference editing",
    "interleaved": "Interleaved text and images",
    "chat": "Text chat",
}
CHAT_PROMPT = "hello! what can you draw?"
# The demo caps the thinking span: a checkpoint trained without thinking data (Shapes World) inherits the
# official 4096-token default, which neither fits its context nor the demo's time budget on a CPU.
DEMO_MAX_THINKING_LENGTH = 32
# Generated images are small (128 px or less); the report shows them enlarged without smoothing.
DISPLAY_PIXELS = 192


def demo_samples(seed: int) -> dict[str, dict[str, Any]]:
    """One Shapes World sample per demo task, a pure function of ``seed`` (in-distribution samples, as in
    `unimask.shapes.tasks`; ``thinking`` reuses the text-to-image task, ``chat`` has only a prompt)."""
    from unimask.shapes.tasks import sample_task

    rng = random.Random(f"unimask-demo-{seed}")
    samples = {}
    for task in DEMO_TASKS:
        if task == "chat":
            samples[task] = {"task": "chat", "images": [], "prompt": CHAT_PROMPT}
        else:
            samples[task] = sample_task("text_to_image" if task == "thinking" else task, rng)
    return samples


def _run_task(pipe: Any, task: str, sample: dict[str, Any], generator: torch.Generator) -> tuple[Any, list]:
    """Run one demo task; returns (pipeline output, input images)."""
    from unimask.shapes.evaluate import sample_prompt
    from unimask.shapes.render import render

    inputs = [render(scene) for scene in sample["images"]]
    prompt = sample_prompt(sample)
    if task == "understanding":
        return pipe.understanding(prompt, inputs, generator=generator), inputs
    if task in ("editing", "multi_reference_editing"):
        return pipe.edit(prompt, inputs, generator=generator), inputs
    if task == "text_to_image":
        return pipe.text_to_image(prompt, generator=generator), inputs
    if task == "thinking":
        length = pipe.generation_defaults.options_for("thinking", {})[2]["thinking_length"]
        return pipe.text_to_image(
            prompt, thinking=True, thinking_length=min(length, DEMO_MAX_THINKING_LENGTH), generator=generator
        ), inputs
    if task == "interleaved":
        return pipe.interleaved(prompt, generator=generator), inputs
    return pipe.chat(prompt, generator=generator), inputs


def _verdict(task: str, sample: dict[str, Any], output: Any) -> dict[str, Any] | None:
    """The checker's verdict on one output: {"correct", "expected", "read"} (plus ``soft`` recall for
    text-to-image), or None for chat (nothing to check)."""
    from unimask.shapes.checker import read_scene
    from unimask.shapes.evaluate import describe_prediction, expected_text, record_correct
    from unimask.shapes.scoring import text_to_image_score

    if task == "chat":
        return None
    if task == "understanding":
        prediction: Any = output.texts[0] or ""
    elif task == "interleaved":
        prediction = [read_scene(image) for image in output.images[0]]
    elif output.images[0]:
        prediction = read_scene(output.images[0][0])
    else:
        return {"correct": False, "expected": expected_text(sample), "read": "(no image)"}
    scored = "text_to_image" if task == "thinking" else task
    verdict = {
        "correct": record_correct({"task": scored, "sample": sample, "prediction": prediction}),
        "expected": expected_text(sample),
        "read": describe_prediction(prediction),
    }
    if task in ("text_to_image", "thinking"):
        verdict["soft"] = text_to_image_score([prediction], [sample["target"]])["soft"]
    return verdict


def run_demo(pipe: Any, seed: int = 0, progress: bool = True) -> list[dict[str, Any]]:
    """Run every task of `DEMO_TASKS` once on ``pipe`` (a `UniPipeline`).

    seed: draws the samples and seeds each call's generator. progress: show a bar over the tasks.
    Returns one entry per task: {"task", "title", "prompt", "inputs" (PIL images), "texts" (output text
    or None), "outputs" (ordered str / PIL image parts), "verdict" (see `_verdict`), "stats", "time_s",
    "error" (None, or the message of a ``ValueError`` the task raised; the other tasks still run)}.
    """
    from unimask.shapes.evaluate import sample_prompt

    device = pipe._execution_device
    entries = []
    bar = tqdm(DEMO_TASKS, desc="unimask demo", unit="task", disable=not progress)
    for index, (task, sample) in enumerate(demo_samples(seed).items()):
        bar.set_postfix_str(task)
        generator = torch.Generator(device=device).manual_seed(seed * 1_000_003 + index)
        started = time.perf_counter()
        entry = {"task": task, "title": TITLES[task], "prompt": sample_prompt(sample), "inputs": [],
                 "texts": None, "outputs": [], "verdict": None, "stats": {}, "error": None}
        try:
            output, entry["inputs"] = _run_task(pipe, task, sample, generator)
        except ValueError as error:
            entry["error"] = str(error)
        else:
            entry.update(texts=output.texts[0], outputs=list(output.parts[0]), stats=output.stats,
                         verdict=_verdict(task, sample, output))
        entry["time_s"] = time.perf_counter() - started
        entries.append(entry)
        bar.update(1)
    bar.close()
    return entries


# ----------------------------------------------------------------------------- HTML


def image_data_uri(image: Any) -> str:
    """A PIL image as a ``data:image/png;base64,...`` URI."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _image_tag(image: Any, alt: str) -> str:
    return (
        f'<img src="{image_data_uri(image)}" alt="{html.escape(alt)}" width="{DISPLAY_PIXELS}" '
        f'height="{DISPLAY_PIXELS}" title="{image.width}x{image.height} px">'
    )


def _parts_html(parts: list[Any]) -> str:
    """Ordered text and image parts of an output as HTML."""
    pieces = []
    for number, part in enumerate(parts):
        if isinstance(part, str):
            pieces.append(f'<p class="text">{html.escape(part)}</p>')
        else:
            pieces.append(_image_tag(part, f"output {number}"))
    return "\n".join(pieces) or '<p class="muted">(empty output)</p>'


def _verdict_html(verdict: dict[str, Any] | None) -> str:
    if verdict is None:
        return '<p class="muted">no checker for this task</p>'
    label = "correct" if verdict["correct"] else "wrong"
    rows = [
        f'<p class="verdict {label}">checker: {label}</p>',
        f"<p><b>expected</b>: {html.escape(verdict['expected'])}</p>",
        f"<p><b>read back</b>: {html.escape(verdict['read'])}</p>",
    ]
    if "soft" in verdict:
        rows.append(f"<p><b>attributes recovered</b>: {verdict['soft']:.0%}</p>")
    return "\n".join(rows)


def _stats_html(stats: dict[str, Any], seconds: float) -> str:
    nfe = ", ".join(f"{stage} {count}" for stage, count in stats.get("nfe", {}).items()) or "none"
    details = html.escape(json.dumps(stats, indent=2, default=str))
    return (
        f"<p><b>time</b>: {seconds:.2f} s &middot; <b>forward passes</b>: {nfe}</p>"
        f"<details><summary>all statistics</summary><pre>{details}</pre></details>"
    )


_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 70em; margin: 2em auto; padding: 0 1em; color: #222; }
section { border-top: 1px solid #ccc; padding: 1em 0; }
.row { display: flex; gap: 2em; flex-wrap: wrap; align-items: flex-start; }
.row > div { min-width: 14em; }
img { image-rendering: pixelated; border: 1px solid #999; margin: 0 0.5em 0.5em 0; }
.text { background: #f4f4f4; padding: 0.4em 0.6em; white-space: pre-wrap; }
.verdict.correct { color: #176b2c; font-weight: bold; }
.verdict.wrong { color: #a61b1b; font-weight: bold; }
.muted { color: #777; }
table { border-collapse: collapse; } td, th { padding: 0.2em 0.8em; border-bottom: 1px solid #ddd; text-align: left; }
pre { font-size: 0.8em; }
"""


def render_report(entries: list[dict[str, Any]], model: str, total_time_s: float) -> str:
    """The HTML report of `run_demo` ``entries`` (a complete, self-contained page)."""
    summary_rows = []
    for entry in entries:
        verdict = entry["verdict"]
        status = "&ndash;" if verdict is None else ("correct" if verdict["correct"] else "wrong")
        if entry.get("error"):
            status = "failed"
        summary_rows.append(
            f"<tr><td><a href=\"#{entry['task']}\">{html.escape(entry['title'])}</a></td><td>{status}</td>"
            f"<td>{entry['time_s']:.2f} s</td></tr>"
        )
    sections = []
    for entry in entries:
        if entry.get("error"):
            sections.append(
                f'<section id="{entry["task"]}"><h2>{html.escape(entry["title"])}</h2>'
                f'<p><b>prompt</b>: {html.escape(entry["prompt"])}</p>'
                f'<p class="verdict wrong">failed: {html.escape(entry["error"])}</p></section>'
            )
            continue
        inputs = "\n".join(_image_tag(image, f"input {i}") for i, image in enumerate(entry["inputs"]))
        inputs_block = f"<div><h3>input images</h3>{inputs}</div>" if inputs else ""
        sections.append(
            f'<section id="{entry["task"]}"><h2>{html.escape(entry["title"])}</h2>'
            f'<p><b>prompt</b>: {html.escape(entry["prompt"])}</p>'
            f'<div class="row">{inputs_block}<div><h3>output</h3>{_parts_html(entry["outputs"])}</div>'
            f"<div><h3>check</h3>{_verdict_html(entry['verdict'])}</div></div>"
            f"{_stats_html(entry['stats'], entry['time_s'])}</section>"
        )
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>unimask demo</title>"
        f"<style>{_STYLE}</style></head><body>"
        f"<h1>unimask demo</h1><p>model: <code>{html.escape(model)}</code> &middot; total time "
        f"{total_time_s:.1f} s</p>"
        f"<table><tr><th>task</th><th>checker</th><th>time</th></tr>{''.join(summary_rows)}</table>"
        f"{''.join(sections)}</body></html>\n"
    )


# ----------------------------------------------------------------------------- command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``unimask demo``."""
    parser.add_argument(
        "--model",
        default=DEFAULT_MODEL_NAME,
        help=f"checkpoint directory (our layout or the official one); default: {DEFAULT_MODEL_NAME!r}, the "
        "embedded default model",
    )
    parser.add_argument("--output", "-o", default="unimask_demo.html", help="where to write the HTML report")
    parser.add_argument("--seed", type=int, default=0, help="seed of the demo samples and the samplers")
    parser.add_argument("--device", default=None, help="torch device, e.g. cuda or cpu (default: cpu)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    web = parser.add_argument_group("web app (--web; needs the `demo` extra: pip install 'unimask[demo]')")
    web.add_argument("--web", action="store_true", help="serve an interactive Gradio app instead of the report")
    web.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1: this machine only)")
    web.add_argument("--port", type=int, default=7860, help="port of the web app (default 7860)")
    web.add_argument("--max-file-size", default="10mb", help="largest accepted upload, e.g. 5mb (default 10mb)")


def run(args: argparse.Namespace) -> int:
    """Load the model, run every task, write the report and print its path. Returns the exit code: 0, 1
    when a task failed (the report says why), 2 with a message on stderr when the model is missing (e.g.
    the default model is not built yet)."""
    from unimask.pipelines.cli_common import run_guarded

    if getattr(args, "web", False):
        return run_guarded("demo", lambda: _run_web(args))

    def body() -> int:
        from unimask.pipelines.pipeline_uni import UniPipeline

        started = time.perf_counter()
        pipe = UniPipeline.from_pretrained(args.model or None, device=args.device)
        pipe.set_progress_bar_config(disable=args.no_progress, leave=False)
        entries = run_demo(pipe, seed=args.seed, progress=not args.no_progress)
        report = render_report(entries, str(args.model), time.perf_counter() - started)
        output = Path(args.output)
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(report, encoding="utf-8")
        checked = [entry["verdict"]["correct"] for entry in entries if entry["verdict"] is not None]
        print(f"unimask demo: {sum(checked)}/{len(checked)} checked outputs correct", file=sys.stderr)
        failed = [entry for entry in entries if entry["error"]]
        for entry in failed:
            print(f"unimask demo: {entry['task']} failed: {entry['error']}", file=sys.stderr)
        print(output)
        return 1 if failed else 0

    return run_guarded("demo", body)


def _run_web(args: argparse.Namespace) -> int:
    """``unimask demo --web``: serve the Gradio app (`unimask.web_demo`); 2 with a message when Gradio is
    not installed."""
    try:
        import gradio  # noqa: F401
    except ModuleNotFoundError:
        print("unimask demo: --web needs Gradio: pip install 'unimask[demo]'", file=sys.stderr)
        return 2
    from unimask.web_demo import run_web

    return run_web(args.model, args.device, args.host, args.port, args.max_file_size, args.seed)
