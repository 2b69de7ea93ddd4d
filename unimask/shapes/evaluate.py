"""Evaluate a unified pipeline on Shapes World: batched pipeline calls, checker readings, scores by type.

Three steps, each usable alone:

    suite = build_evaluation_suite(seed, num_per_type, tasks)    # balanced samples, both splits
    records, sampling = run_evaluation(pipe, suite, ...)          # pipeline outputs read back as scenes
    scores = score_records(records)                               # accuracies by task, split and type

`evaluate` does all three and returns the results dict that ``unimask eval`` saves as JSON:

- ``understanding``: exact-match accuracy per split, overall and ``by_type`` (question kind);
- ``text_to_image``: per decoder variant ("turbo", "normal") and split, ``strict`` scene match,
  ``soft`` attribute recall, ``background`` and ``extra_objects``; the reader "codes" (opt-in) draws
  the generated code grids with a `PatchLookup` instead of a decoder, which scores the backbone alone;
- ``editing``: per split, ``accuracy`` (edited attribute right AND nothing else changed),
  ``edit_applied``, ``rest_preserved``, overall and ``by_type`` (instruction kind, ``multi_reference``
  included);
- ``interleaved``: per split, ``all_steps`` (every step's image right) and ``step_accuracy``;
- ``sampling``: per run (task, and decoder for text-to-image) the forward passes (NFE) and wall time;
- ``summary``: the headline numbers per split.

Splits: ``in_distribution`` (no held-out pair anywhere) and ``held_out`` (some input or target scene holds
a held-out colour-shape pair, ``purple triangle`` or ``orange circle``), reported separately.
"""

from __future__ import annotations

import hashlib
import random
import time
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from tqdm.auto import tqdm

from unimask.shapes.checker import read_scene
from unimask.shapes.language import EDIT_KINDS, QUESTION_KINDS, caption, sample_edit, sample_question
from unimask.shapes.patch_lookup import fit_patch_lookup
from unimask.shapes.render import render
from unimask.shapes.scene import Scene, sample_scene
from unimask.shapes.scoring import (
    editing_score,
    interleaved_score,
    normalise_answer,
    text_to_image_score,
    understanding_score,
)
from unimask.shapes.tasks import SPLITS, TASKS, sample_scenes, sample_task

DECODER_VARIANTS: tuple[str, ...] = ("turbo", "normal")
# What text-to-image images can be read through: a decoder variant, or "codes" (the code grid drawn by
# a PatchLookup fitted on the pipeline's image tokenizer, no decoder).
CODE_READER = "codes"
TEXT_TO_IMAGE_READERS: tuple[str, ...] = (*DECODER_VARIANTS, CODE_READER)
MULTI_REFERENCE_KIND = "multi_reference"
EDITING_TASKS = ("editing", "multi_reference_editing")
# Kinds of every task: the question kinds, the edit kinds, or the task itself when it has no kinds.
TASK_KINDS: dict[str, tuple[str, ...]] = {
    "understanding": QUESTION_KINDS,
    "text_to_image": ("text_to_image",),
    "editing": EDIT_KINDS,
    "multi_reference_editing": (MULTI_REFERENCE_KIND,),
    "interleaved": ("interleaved",),
}
RESULT_KEYS = ("model", "seed", "num_per_type", "tasks", "decoders", "options", "summary", "sampling")
# Draws tried before a (task, kind, split) stream is declared unable to produce a sample.
MAX_DRAWS = 10_000


# ----------------------------------------------------------------------------- the suite


def check_tasks(tasks: Iterable[str]) -> tuple[str, ...]:
    """``tasks`` as a tuple in `TASKS` order; raises ``ValueError`` naming unknown or missing tasks."""
    chosen = tuple(tasks)
    unknown = [task for task in chosen if task not in TASKS]
    if unknown or not chosen:
        raise ValueError(f"tasks={list(chosen)} must be a non-empty subset of {list(TASKS)}; unknown: {unknown}")
    return tuple(task for task in TASKS if task in chosen)


def _draw(task: str, kind: str, rng: random.Random, held_out: bool) -> dict[str, Any] | None:
    """One sample of ``task`` and ``kind`` from ``rng``, or None when this draw does not fit the split."""
    if task == "understanding":
        scene = sample_scene(rng, allow_held_out=held_out)
        try:
            question = sample_question(rng, scene, kind=kind)
        except ValueError:
            return None
        sample = {"task": task, "kind": kind, "images": [scene], "question": question.text, "answer": question.answer}
    elif task == "editing":
        scene = sample_scene(rng, allow_held_out=held_out)
        try:
            edit = sample_edit(rng, scene, kinds=(kind,), allow_held_out=held_out)
        except ValueError:
            return None
        sample = {"task": task, "kind": kind, "images": [scene], "instruction": edit.instruction, "target": edit.target}
    else:
        sample = {**sample_task(task, rng, allow_held_out=held_out), "kind": kind}
    if held_out and not any(scene.held_out for scene in sample_scenes(sample)):
        return None
    return sample


def build_evaluation_suite(seed: int, num_per_type: int, tasks: Sequence[str] = TASKS) -> list[dict[str, Any]]:
    """Balanced evaluation samples: ``num_per_type`` per (task, type, split).

    seed: any int (the suite is a pure function of it). num_per_type: >= 1. tasks: subset of `TASKS`.
    Types are `TASK_KINDS` (question kinds, edit kinds; one type for the other tasks). Every (task, kind,
    split) draws from its own seeded stream, so a larger ``num_per_type`` extends the suite. Returns
    sample dicts in the `unimask.shapes.tasks` format plus ``kind``, ``split`` and ``draw`` (the sample's
    place in its stream, which with ``seed`` fixes its sampling seed: `sample_seed`).
    """
    if not isinstance(num_per_type, int) or isinstance(num_per_type, bool) or num_per_type < 1:
        raise ValueError(f"num_per_type={num_per_type!r} must be an int >= 1")
    suite = []
    for task in check_tasks(tasks):
        for kind in TASK_KINDS[task]:
            for split in SPLITS:
                rng = random.Random(f"unimask-eval-{seed}-{task}-{kind}-{split}")
                drawn = 0
                for _ in range(MAX_DRAWS):
                    sample = _draw(task, kind, rng, held_out=split == "held_out")
                    if sample is not None:
                        suite.append({**sample, "split": split, "draw": drawn})
                        drawn += 1
                        if drawn == num_per_type:
                            break
                else:
                    raise RuntimeError(f"no {split} sample of task {task!r} kind {kind!r} in {MAX_DRAWS} draws")
    return suite


def sample_prompt(sample: dict[str, Any]) -> str:
    """The text the model is given for ``sample``: question, instruction or prompt."""
    for key in ("question", "instruction", "prompt"):
        if key in sample:
            return sample[key]
    raise ValueError(f"sample of task {sample.get('task')!r} has no question, instruction or prompt")


# ----------------------------------------------------------------------------- running the pipelines


class SamplingTally:
    """Forward passes (NFE) and wall time of the pipeline calls of one run (a task and decoder)."""

    def __init__(self) -> None:
        self.samples = 0
        self.batches = 0
        self.time_s = 0.0
        self.nfe_by_stage: dict[str, int] = {}
        self.time_by_stage_s: dict[str, float] = {}

    def add(self, stats: dict[str, Any], samples: int, seconds: float) -> None:
        """Count one pipeline call: its output ``stats`` (``nfe`` and ``time_s`` per stage), its sample
        count and its wall time in seconds."""
        self.samples += samples
        self.batches += 1
        self.time_s += seconds
        for stage, nfe in stats.get("nfe", {}).items():
            self.nfe_by_stage[stage] = self.nfe_by_stage.get(stage, 0) + int(nfe)
        for stage, seconds_in_stage in stats.get("time_s", {}).items():
            self.time_by_stage_s[stage] = self.time_by_stage_s.get(stage, 0.0) + float(seconds_in_stage)

    def as_dict(self) -> dict[str, Any]:
        """{"samples", "batches", "nfe", "nfe_per_batch", "nfe_by_stage", "time_s", "time_per_sample_s",
        "time_by_stage_s"}; a batched call's forward passes serve all its samples at once."""
        nfe = sum(self.nfe_by_stage.values())
        return {
            "samples": self.samples,
            "batches": self.batches,
            "nfe": nfe,
            "nfe_per_batch": nfe / self.batches if self.batches else 0.0,
            "nfe_by_stage": dict(self.nfe_by_stage),
            "time_s": self.time_s,
            "time_per_sample_s": self.time_s / self.samples if self.samples else 0.0,
            "time_by_stage_s": dict(self.time_by_stage_s),
        }


def _run_key(task: str, decoder: str | None) -> str:
    return f"{task}_{decoder}" if decoder else task


def sample_seed(seed: int, sample: dict[str, Any]) -> int:
    """The sampling seed of one suite ``sample`` (from `build_evaluation_suite` with ``seed``): a pure function
    of its task, kind, split and place in its stream, so a sample is generated the same way whatever else
    the suite holds (other ``tasks``, a larger ``num_per_type``) and however it is batched. Returns an int in
    [0, 2**63)."""
    missing = [key for key in ("task", "kind", "split", "draw") if key not in sample]
    if missing:
        raise ValueError(f"sample lacks {missing}: pass samples from build_evaluation_suite")
    name = f"unimask-eval-sample-{seed}-{sample['task']}-{sample['kind']}-{sample['split']}-{sample['draw']}"
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little") >> 1


def _generators(seed: int, samples: Sequence[dict[str, Any]], device: torch.device) -> list[torch.Generator]:
    """One generator per sample, seeded by `sample_seed`."""
    return [torch.Generator(device=device).manual_seed(sample_seed(seed, sample)) for sample in samples]


def _call_pipeline(pipe: Any, task: str, batch: list[dict[str, Any]], generator: list, options: dict[str, Any]):
    """One batched call of the task pipeline of ``task`` on ``batch``; returns its `UniPipelineOutput`."""
    prompts = [sample_prompt(sample) for sample in batch]
    if task == "understanding":
        return pipe.understanding(prompts, [[render(s) for s in sample["images"]] for sample in batch],
                                  generator=generator, **options)
    if task in EDITING_TASKS:
        return pipe.edit(prompts, [[render(s) for s in sample["images"]] for sample in batch],
                         generator=generator, **options)
    if task == "text_to_image":
        return pipe.text_to_image(prompts, generator=generator, **options)
    return pipe.interleaved(prompts, generator=generator, **options)


def _prediction(task: str, output: Any, row: int, lookup: Any = None) -> str | Scene | list[Scene]:
    """What sample ``row`` of a pipeline output predicts: the answer text, the scene read from the image
    (drawn from its code grid by ``lookup`` when given), or the scenes of the interleaved images in order."""
    if task == "understanding":
        return output.texts[row] or ""
    if task == "interleaved":
        return [read_scene(image) for image in output.images[row]]
    images = output.images[row]
    if not images:
        raise ValueError(f"task {task!r}: the pipeline returned no image for sample {row}")
    return read_scene(lookup.render(images[0]) if lookup is not None else images[0])


def _check_normal_decoder_steps(steps: int | None) -> None:
    if steps is not None and (not isinstance(steps, int) or isinstance(steps, bool) or steps < 2):
        raise ValueError(f"normal_decoder_steps={steps!r} must be an int >= 2 (the ODE sampler needs two steps)")


def normal_decoder_options(pipe: Any, steps: int | None) -> dict[str, Any]:
    """Options that run the normal decoder at its own defaults (``steps`` overrides its step count).

    The checkpoint's ``decoder_steps`` / ``decoder_guidance_scale`` defaults are tuned for the turbo decoder,
    so they are replaced here. Raises ``ValueError`` when the pipeline cannot load a normal decoder.
    """
    _check_normal_decoder_steps(steps)
    default_steps, default_guidance = pipe.decoder_for("normal").defaults
    return {"decoder": "normal", "decoder_steps": steps or default_steps, "decoder_guidance_scale": default_guidance}


def run_evaluation(
    pipe: Any,
    suite: Sequence[dict[str, Any]],
    decoders: Sequence[str] = DECODER_VARIANTS,
    batch_size: int = 8,
    seed: int = 0,
    options: dict[str, Any] | None = None,
    normal_decoder_steps: int | None = None,
    progress: bool = True,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Run every sample of ``suite`` through ``pipe`` in batches and read the outputs back.

    pipe: a `UniPipeline`. suite: samples from `build_evaluation_suite`. decoders: the readers of
    text-to-image (`TEXT_TO_IMAGE_READERS`: decoder variants, or "codes"; other tasks use the
    checkpoint's default decoder). batch_size: samples per
    pipeline call. seed: seeds one generator per sample. options: sampler / decoder options passed to
    every call (``steps``, ``threshold``, ...). normal_decoder_steps: steps of the normal decoder (None:
    its own default). progress: show a progress bar per run.

    Returns (records, sampling): one record per (sample, decoder) with ``task``, ``split``, ``kind``,
    ``decoder`` (None except for text-to-image), ``sample`` and ``prediction`` (answer text, read Scene,
    or list of read Scenes); sampling maps each run key (``understanding``, ``text_to_image_turbo``, ...)
    to `SamplingTally.as_dict`, or ``{"skipped": reason}`` when a decoder variant is not available.
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r} must be an int >= 1")
    unknown = [variant for variant in decoders if variant not in TEXT_TO_IMAGE_READERS]
    if unknown or not decoders:
        raise ValueError(f"decoders={list(decoders)} must be a non-empty subset of {list(TEXT_TO_IMAGE_READERS)}")
    _check_normal_decoder_steps(normal_decoder_steps)
    options = dict(options or {})
    device = pipe._execution_device
    pipe.set_progress_bar_config(disable=True)
    records: list[dict[str, Any]] = []
    sampling: dict[str, Any] = {}
    for task in TASKS:
        task_samples = [sample for sample in suite if sample["task"] == task]
        if not task_samples:
            continue
        for decoder in decoders if task == "text_to_image" else (None,):
            key = _run_key(task, decoder)
            call_options = dict(options)
            lookup = None
            if decoder == CODE_READER:
                call_options["output_type"] = "tokens"
                lookup = fit_patch_lookup(pipe.image_tokenizer)
            try:
                if decoder == "normal":
                    call_options.update(normal_decoder_options(pipe, normal_decoder_steps))
                elif decoder == "turbo":
                    pipe.decoder_for("turbo")
                    call_options["decoder"] = "turbo"
            except ValueError as error:
                sampling[key] = {"skipped": str(error)}
                continue
            tally = SamplingTally()
            bar = tqdm(total=len(task_samples), desc=f"eval {key}", unit="sample", disable=not progress)
            for start in range(0, len(task_samples), batch_size):
                batch = task_samples[start : start + batch_size]
                generator = _generators(seed, batch, device)
                started = time.perf_counter()
                output = _call_pipeline(pipe, task, batch, generator, call_options)
                tally.add(output.stats, len(batch), time.perf_counter() - started)
                for row, sample in enumerate(batch):
                    records.append({
                        "task": task,
                        "split": sample["split"],
                        "kind": sample["kind"],
                        "decoder": decoder,
                        "sample": sample,
                        "prediction": _prediction(task, output, row, lookup),
                    })
                bar.update(len(batch))
            bar.close()
            sampling[key] = tally.as_dict()
    return records, sampling


# ----------------------------------------------------------------------------- scoring


def _editing_source(sample: dict[str, Any]) -> Scene:
    """The image an edit changes: the only input, or the second of a multi-reference pair."""
    return sample["images"][-1]


def _score(task: str, records: Sequence[dict[str, Any]]) -> dict[str, float]:
    predictions = [record["prediction"] for record in records]
    samples = [record["sample"] for record in records]
    if task == "understanding":
        return understanding_score(predictions, [sample["answer"] for sample in samples])
    if task == "text_to_image":
        return text_to_image_score(predictions, [sample["target"] for sample in samples])
    if task == "editing":
        return editing_score(predictions, [_editing_source(s) for s in samples], [s["target"] for s in samples])
    return interleaved_score(predictions, [[step["scene"] for step in sample["steps"]] for sample in samples])


def _scores_by_split(task: str, records: Sequence[dict[str, Any]], by_type: bool) -> dict[str, Any]:
    """{split: score dict (+ ``by_type``: {kind: score dict})} for the splits present in ``records``."""
    result: dict[str, Any] = {}
    for split in SPLITS:
        in_split = [record for record in records if record["split"] == split]
        if not in_split:
            continue
        scores = _score(task, in_split)
        if by_type:
            kinds = dict.fromkeys(record["kind"] for record in in_split)
            scores["by_type"] = {
                kind: _score(task, [record for record in in_split if record["kind"] == kind]) for kind in kinds
            }
        result[split] = scores
    return result


def score_records(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Scores of evaluation ``records`` (see `run_evaluation`), grouped by task, split and type.

    Returns a dict with a section per task present: ``understanding`` and ``editing`` ({split: scores with
    ``by_type``}; editing pools single and multi-reference edits, multi-reference as type
    ``multi_reference``), ``text_to_image`` ({decoder: {split: scores}}) and ``interleaved``
    ({split: scores}). Score dicts are those of `unimask.shapes.scoring` (values in [0, 1] and ``count``).
    """
    by_task: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        task = "editing" if record["task"] in EDITING_TASKS else record["task"]
        by_task.setdefault(task, []).append(record)
    result: dict[str, Any] = {}
    if "understanding" in by_task:
        result["understanding"] = _scores_by_split("understanding", by_task["understanding"], by_type=True)
    if "text_to_image" in by_task:
        variants = dict.fromkeys(record["decoder"] for record in by_task["text_to_image"])
        result["text_to_image"] = {
            variant: _scores_by_split(
                "text_to_image", [r for r in by_task["text_to_image"] if r["decoder"] == variant], by_type=False
            )
            for variant in variants
        }
    if "editing" in by_task:
        result["editing"] = _scores_by_split("editing", by_task["editing"], by_type=True)
    if "interleaved" in by_task:
        result["interleaved"] = _scores_by_split("interleaved", by_task["interleaved"], by_type=False)
    return result


def summarise(scores: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Headline numbers of `score_records` output: {split: {metric: value}}, metrics such as
    ``understanding_accuracy``, ``text_to_image_turbo_strict``, ``text_to_image_turbo_soft``,
    ``editing_accuracy``, ``multi_reference_accuracy``, ``interleaved_all_steps``."""
    summary: dict[str, dict[str, float]] = {split: {} for split in SPLITS}
    for split in SPLITS:
        row = summary[split]
        if split in scores.get("understanding", {}):
            row["understanding_accuracy"] = scores["understanding"][split]["accuracy"]
        for variant, per_split in scores.get("text_to_image", {}).items():
            if split in per_split:
                row[f"text_to_image_{variant}_strict"] = per_split[split]["strict"]
                row[f"text_to_image_{variant}_soft"] = per_split[split]["soft"]
        if split in scores.get("editing", {}):
            editing = scores["editing"][split]
            row["editing_accuracy"] = editing["accuracy"]
            if MULTI_REFERENCE_KIND in editing["by_type"]:
                row["multi_reference_accuracy"] = editing["by_type"][MULTI_REFERENCE_KIND]["accuracy"]
        if split in scores.get("interleaved", {}):
            row["interleaved_all_steps"] = scores["interleaved"][split]["all_steps"]
    return {split: row for split, row in summary.items() if row}


# ----------------------------------------------------------------------------- verdicts and records


def describe_prediction(prediction: str | Scene | list[Scene]) -> str:
    """A prediction as text: the answer itself, a read scene's caption, or the step captions joined."""
    if isinstance(prediction, Scene):
        return caption(prediction)
    if isinstance(prediction, list):
        return " | ".join(caption(scene) for scene in prediction) or "(no image)"
    return prediction


def expected_text(sample: dict[str, Any]) -> str:
    """The right answer of ``sample`` as text: the answer, the target caption or the step captions."""
    if "answer" in sample:
        return sample["answer"]
    if "target" in sample:
        return caption(sample["target"])
    return " | ".join(caption(step["scene"]) for step in sample["steps"])


def record_correct(record: dict[str, Any]) -> bool:
    """Whether one record is fully right: the normalised answer matches, the read scene equals the target
    (text-to-image, editing), or every interleaved step's scene matches with no step missing or extra."""
    sample, prediction = record["sample"], record["prediction"]
    if record["task"] == "understanding":
        return normalise_answer(prediction) == normalise_answer(sample["answer"])
    if record["task"] == "interleaved":
        targets = [step["scene"] for step in sample["steps"]]
        return len(prediction) == len(targets) and all(p == t for p, t in zip(prediction, targets))
    return prediction == sample["target"]


def record_to_json(record: dict[str, Any]) -> dict[str, Any]:
    """A JSON-ready summary of one record: task, split, kind, draw (its place in the suite's stream; None for
    samples not drawn by `build_evaluation_suite`), decoder, prompt, expected, predicted, correct."""
    return {
        "task": record["task"],
        "split": record["split"],
        "kind": record["kind"],
        "draw": record["sample"].get("draw"),
        "decoder": record["decoder"],
        "prompt": sample_prompt(record["sample"]),
        "expected": expected_text(record["sample"]),
        "predicted": describe_prediction(record["prediction"]),
        "correct": record_correct(record),
    }


# ----------------------------------------------------------------------------- everything at once


def evaluate(
    pipe: Any,
    tasks: Sequence[str] = TASKS,
    num_per_type: int = 10,
    seed: int = 0,
    decoders: Sequence[str] = DECODER_VARIANTS,
    batch_size: int = 8,
    options: dict[str, Any] | None = None,
    normal_decoder_steps: int | None = None,
    include_records: bool = False,
    progress: bool = True,
    model: str = "",
) -> dict[str, Any]:
    """Evaluate ``pipe`` (a `UniPipeline`) on a balanced Shapes World suite; returns the results dict.

    tasks / num_per_type / seed: the suite (`build_evaluation_suite`). decoders, batch_size, options,
    normal_decoder_steps, progress: as in `run_evaluation`. include_records: add ``records``, one
    `record_to_json` per sample. model: a name recorded in the results.

    Returns {"model", "seed", "num_per_type", "tasks", "decoders", "options", the task sections of
    `score_records`, "summary" (`summarise`), "sampling" (per run, plus ``total_time_s``)}.
    """
    started = time.perf_counter()
    tasks = check_tasks(tasks)
    suite = build_evaluation_suite(seed, num_per_type, tasks)
    records, sampling = run_evaluation(
        pipe, suite, decoders, batch_size, seed, options, normal_decoder_steps, progress
    )
    scores = score_records(records)
    results: dict[str, Any] = {
        "model": model,
        "seed": seed,
        "num_per_type": num_per_type,
        "tasks": list(tasks),
        "decoders": list(decoders),
        "options": dict(options or {}),
        **scores,
        "summary": summarise(scores),
        "sampling": {**sampling, "total_time_s": time.perf_counter() - started},
    }
    if include_records:
        results["records"] = [record_to_json(record) for record in records]
    return results
