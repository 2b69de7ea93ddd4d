"""``unimask demo`` runs every task on the default model and writes a self-contained HTML report."""

from __future__ import annotations

import base64
import io
import re

import PIL.Image

from unimask.cli import main
from unimask.demo import DEMO_TASKS, TITLES, demo_samples, render_report, run_demo


def test_demo_writes_report_on_the_default_model(tiny_as_default, tmp_path, capsys):
    output = tmp_path / "report" / "demo.html"
    assert main(["demo", "--output", str(output), "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == str(output)
    page = output.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>") and "shapes-default" in page
    for task in DEMO_TASKS:
        assert f'<section id="{task}">' in page and TITLES[task] in page
    samples = demo_samples(0)
    assert samples["editing"]["instruction"] in page and samples["understanding"]["question"] in page
    # Inline PNGs: 4 inputs (understanding, editing, two references) and at least the three edit/draw outputs.
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(images) >= 7
    decoded = PIL.Image.open(io.BytesIO(base64.b64decode(images[0])))
    assert decoded.size == (128, 128)
    assert page.count("checker: ") == len(DEMO_TASKS) - 1  # every task but chat is checked
    assert "forward passes" in page
    assert "checked outputs correct" in captured.err


def test_demo_entries_carry_verdicts_and_statistics(tiny_pipe):
    entries = run_demo(tiny_pipe, seed=1, progress=False)
    assert [entry["task"] for entry in entries] == list(DEMO_TASKS)
    by_task = {entry["task"]: entry for entry in entries}
    assert by_task["chat"]["verdict"] is None
    assert by_task["thinking"]["texts"] is not None
    assert 0.0 <= by_task["text_to_image"]["verdict"]["soft"] <= 1.0
    assert len(by_task["multi_reference_editing"]["inputs"]) == 2
    assert all(entry["stats"]["nfe"] for entry in entries)


def test_report_escapes_text():
    entry = {"task": "chat", "title": "Text chat", "prompt": "<script>alert(1)</script>", "inputs": [],
             "texts": "a & b", "outputs": ["a & b"], "verdict": None, "stats": {"nfe": {"text": 1}}, "time_s": 0.1}
    page = render_report([entry], "<model>", 1.0)
    assert "<script>" not in page and "&lt;script&gt;" in page and "a &amp; b" in page and "&lt;model&gt;" in page


def test_demo_without_default_model_says_how_to_build(no_default_model, tmp_path, capsys):
    assert main(["demo", "--output", str(tmp_path / "d.html")]) == 2
    error = capsys.readouterr().err
    assert "not built yet" in error and "python -m unimask.shapes.build_default" in error
    assert not (tmp_path / "d.html").exists()


def test_demo_caps_the_thinking_span_a_checkpoint_was_not_tuned_for(tiny_pipe):
    from unimask.pipelines import GenerationDefaults, UniPipeline
    from unimask.pipelines.generation_defaults import TINY_GENERATION_DEFAULTS

    untuned_keys = ("thinking_length", "thinking_steps")
    common = {k: v for k, v in TINY_GENERATION_DEFAULTS["common"].items() if k not in untuned_keys}
    untuned = UniPipeline.from_pipe(tiny_pipe, generation_defaults=GenerationDefaults({"common": common}))
    assert untuned.generation_defaults.options_for("thinking", {})[2]["thinking_length"] == 4096  # > context 512
    thinking = next(entry for entry in run_demo(untuned, progress=False) if entry["task"] == "thinking")
    assert thinking["error"] is None and thinking["stats"]["nfe"]["thinking"] >= 1


def test_a_failing_task_is_reported_and_the_rest_still_run(tiny_as_default, tmp_path, monkeypatch, capsys):
    import unimask.demo as demo

    real = demo._run_task

    def failing_chat(pipe, task, sample, generator):
        if task == "chat":
            raise ValueError("messages: broken on purpose")
        return real(pipe, task, sample, generator)

    monkeypatch.setattr(demo, "_run_task", failing_chat)
    output = tmp_path / "d.html"
    assert main(["demo", "--output", str(output), "--no-progress"]) == 1
    page = output.read_text(encoding="utf-8")
    assert "failed: messages: broken on purpose" in page and page.count("checker: ") == len(DEMO_TASKS) - 1
    assert "chat failed" in capsys.readouterr().err
