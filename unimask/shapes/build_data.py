"""The data stages of the Shapes World build: task and caption shards, their image codes, backbone
sequences, and the image tokenizer's probe and background merge.

Each stage takes the build's :class:`~unimask.shapes.build_plan.BuildPaths`, skips itself when its output is
marked done (``.done`` in the folder) and is listed in :data:`DATA_STAGE_FUNCTIONS`;
``unimask.shapes.build_default`` runs them.
"""

from __future__ import annotations

import json
import logging
from functools import partial
from pathlib import Path
from typing import Any, Callable

from unimask.shapes.build_plan import (
    ANSWER_LENGTH,
    GENERATION_SEEDS,
    INTERLEAVED_TEXT_LENGTH,
    TAIL_EOS,
    BuildPaths,
    generation_parts,
    part_options,
    round_shards,
)

__all__ = ["DATA_STAGE_FUNCTIONS", "shapes_image_tokenizer", "shapes_layout_and_builder"]

logger = logging.getLogger(__name__)

# Below this held-out probe accuracy an attribute is reported as lost by the image tokenizer.
PROBE_WARNING_ACCURACY = 0.9


def shapes_image_tokenizer(paths: BuildPaths, merged: bool = False):
    """The build's trained image tokenizer (``tokenizer_vq``'s, or the merged one), sizing images as Shapes World does."""
    from unimask.tokenizers.image_tokenizer import SigLIPVQTokenizer

    folder = paths.merged_tokenizer if merged else paths.export("tokenizer_vq") / "image_tokenizer"
    return SigLIPVQTokenizer.from_pretrained(folder, size_policy="shapes_world")


def _write(paths: BuildPaths, name: str, seed: int, **options: Any) -> None:
    from unimask.data.writer import samples_from_generator, write_shards

    samples = samples_from_generator("shapes", paths.count(name), seed, **options)
    write_shards(samples, paths.shards(name), max_count=1000 if not paths.quick else 32)


def _add_codes(paths: BuildPaths, name: str, merged: bool = False) -> None:
    from unimask.data.loader import expand_shard_paths
    from unimask.data.tokenize_shards import add_image_codes, encode_fn_from_tokenizer

    tokenizer = shapes_image_tokenizer(paths, merged)
    add_image_codes(expand_shard_paths([str(paths.shards(name))]), encode_fn_from_tokenizer(tokenizer), batch_size=64)


def _done(path: Path) -> bool:
    return (path / ".done").is_file()


def _mark(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    (path / ".done").write_text("ok\n")


def _stage_text_tokenizer(paths: BuildPaths) -> None:
    from unimask.shapes.text_tokenizer_build import save_shapes_text_tokenizer

    save_shapes_text_tokenizer(paths.text_tokenizer)


def _stage_caption_shards(paths: BuildPaths) -> None:
    # "captions" feeds every image stage; "captions-b" only widens the SigLIP stage's data.
    for name, seed in (("captions", 1), ("captions-b", 4)):
        if not _done(paths.shards(name)):
            _write(paths, name, seed=seed, kind="captions")
            _mark(paths.shards(name))


def _coded_shard_set(paths: BuildPaths, name: str, seed: int, kind: str, merged: bool = False, **options: Any) -> None:
    """Write ``<root>/shards/<name>`` (unless its shards exist) and add image codes (of the merged
    tokenizer when ``merged``); marked done after."""
    folder = paths.shards(name)
    if not _done(folder):
        if not any(folder.glob("*.tar")):
            _write(paths, name, seed=seed, kind=kind, **options)
        _add_codes(paths, name, merged=merged)
        _mark(folder)


def _stage_coded_shards(paths: BuildPaths) -> None:
    _coded_shard_set(paths, "coded", seed=2, kind="captions")


def shapes_layout_and_builder(paths: BuildPaths, max_length: int | None = None):
    """The Shapes token layout (text vocabulary of the trained tokenizer, the VQ codebook) and a SequenceBuilder."""
    from unimask.tokenizers.sequence_builders import SequenceBuilder
    from unimask.tokenizers.text_tokenizer import load_text_tokenizer
    from unimask.tokenizers.token_layout import TokenLayout

    text_tokenizer = load_text_tokenizer(paths.text_tokenizer)
    codebook = json.loads((paths.export("tokenizer_vq") / "image_tokenizer" / "config.json").read_text())
    layout = TokenLayout.shapes(text_vocab_size=len(text_tokenizer), codebook_size=_codebook_size(codebook))
    return layout, text_tokenizer, SequenceBuilder(layout, text_tokenizer, max_length=max_length)


def _codebook_size(config: dict) -> int:
    vq = config.get("vq_config", config)
    return int(vq["num_embeddings"])


def _stage_tokenizer_probe(paths: BuildPaths) -> None:
    import random

    from unimask.shapes.code_probe import probe_codes
    from unimask.shapes.scene import sample_scene

    tokenizer = shapes_image_tokenizer(paths)
    rng = random.Random("shapes-code-probe")
    count = paths.count("probe")
    train, test = [sample_scene(rng) for _ in range(count)], [sample_scene(rng) for _ in range(count // 3 + 1)]
    result = probe_codes(lambda images: tokenizer.encode(images, "shapes_world").ids, train, test,
                         codebook_size=tokenizer.codebook_size)
    target = paths.export("tokenizer_vq").parent / "code_probe.json"
    target.write_text(json.dumps(result, indent=2) + "\n")
    for attribute, scores in result.items():
        level = logging.WARNING if scores["accuracy"] < PROBE_WARNING_ACCURACY else logging.INFO
        logger.log(level, "image codes -> %s: probe accuracy %.3f (chance %.3f)%s", attribute, scores["accuracy"],
                   scores["chance"], "; the codes lose it, later stages cannot recover it" if level == logging.WARNING else "")


def _write_backbone_shards(paths: BuildPaths, out: str, task_sets: dict[str, int]) -> None:
    """Sequences of the coded task sets (``{shard folder name: sampling seed}``), interleaved evenly,
    into ``<root>/shards/<out>``; a ``-merged`` folder holds as many samples as the set it was copied from."""
    from unimask.data.loader import expand_shard_paths
    from unimask.data.writer import write_shards
    from unimask.shapes.backbone_samples import backbone_records, interleave_evenly

    folder = paths.shards(out)
    if _done(folder):
        return
    _, _, builder = shapes_layout_and_builder(paths)
    sources = [
        (backbone_records(expand_shard_paths([str(paths.shards(name))]), builder, seed=seed,
                          answer_length=ANSWER_LENGTH, tail_eos=TAIL_EOS), paths.count(name.removesuffix("-merged")))
        for name, seed in task_sets.items()
    ]
    write_shards(interleave_evenly(sources), folder, max_count=2000)
    _mark(folder)


def _stage_backbone_data(paths: BuildPaths) -> None:
    # Every task, plus half as many again understanding samples only: an answer is a few tokens
    # against a 64-code image, and each question kind needs thousands of them.
    _coded_shard_set(paths, "tasks", seed=3, kind="tasks")
    _coded_shard_set(paths, "tasks-understanding", seed=5, kind="tasks", tasks=["understanding"])
    _write_backbone_shards(paths, "backbone", {"tasks": 0, "tasks-understanding": 1})


def _stage_tokenizer_merge(paths: BuildPaths) -> None:
    import random

    from unimask.shapes.background_codes import merge_background_codes
    from unimask.shapes.scene import sample_scene

    if (paths.merged_tokenizer / "config.json").is_file():
        logger.info("tokenizer_merge: %s exists, skipped", paths.merged_tokenizer)
        return
    tokenizer = shapes_image_tokenizer(paths)
    rng = random.Random(11)
    report = merge_background_codes(tokenizer, [sample_scene(rng) for _ in range(paths.count("merge"))])
    tokenizer.save_pretrained(paths.merged_tokenizer)
    (paths.merged_tokenizer.parent / "background_codes.json").write_text(json.dumps(report, indent=1) + "\n")
    for name, after in report["after"].items():
        logger.info("image codes of %s: %.2f bits (%.2f before)", name, after["bits"], report["before"][name]["bits"])


def _stage_merged_backbone_data(paths: BuildPaths) -> None:
    import shutil

    # The same samples as backbone_data, their images coded again by the merged tokenizer.
    for name in ("tasks", "tasks-understanding"):
        source, target = paths.shards(name), paths.shards(f"{name}-merged")
        if _done(target):
            continue
        target.mkdir(parents=True, exist_ok=True)
        for shard in sorted(source.glob("*.tar")):
            shutil.copyfile(shard, target / shard.name)
        _add_codes(paths, f"{name}-merged", merged=True)
        _mark(target)
    _write_backbone_shards(paths, "backbone-merged", {"tasks-merged": 0, "tasks-understanding-merged": 1})
    # The understanding samples once more on their own, so about half of a step's sequences are answers.
    _write_backbone_shards(paths, "backbone-understanding-merged", {"tasks-understanding-merged": 1})


def _stage_answer_data(paths: BuildPaths) -> None:
    # New samples (not the ones backbone_merged read many times), two in three of them questions, so
    # most sequences of a step end in an answer.
    _coded_shard_set(paths, "answers", seed=21, kind="tasks", merged=True, tasks=["understanding"])
    _coded_shard_set(paths, "answers-tasks", seed=22, kind="tasks", merged=True)
    _write_backbone_shards(paths, "backbone-answers", {"answers": 31, "answers-tasks": 32})


def _stage_answer7_data(paths: BuildPaths) -> None:
    # Another fresh set like answer_data's (new seeds), for a further continuation.
    _coded_shard_set(paths, "answers7", seed=41, kind="tasks", merged=True, tasks=["understanding"])
    _coded_shard_set(paths, "answers7-tasks", seed=42, kind="tasks", merged=True)
    _write_backbone_shards(paths, "backbone-answers7", {"answers7": 51, "answers7-tasks": 52})


def _generation_data(paths: BuildPaths, version: int) -> None:
    # Fresh samples weighted to the image-writing tasks (v7's edits rewrote objects they should copy): editing
    # with multi-reference, text-to-image, every task, and questions to keep answering (from set 14 on, also
    # interleaved requests; from set 15 on, also some of them cut into the pipeline's rounds; from set 17 on,
    # weighted to the questions, and from set 18 on, most of them of the kinds answered worst).
    seed = GENERATION_SEEDS[version]
    sampling_seeds = {}
    for offset, (part, (tasks, _)) in enumerate(generation_parts(version).items()):
        name = f"gen{version}-{part}"
        options = {**({} if tasks is None else {"tasks": tasks}), **part_options(part)}
        _coded_shard_set(paths, name, seed=seed + offset, kind="tasks", merged=True, **options)
        sampling_seeds[name] = seed + 10 + offset
    _write_backbone_shards(paths, f"backbone-generation{version}", sampling_seeds)
    num_round_shards = round_shards(version)
    if num_round_shards:
        _write_round_shards(paths, f"gen{version}-interleaved", f"backbone-generation{version}-rounds", num_round_shards)


def _write_round_shards(paths: BuildPaths, source: str, out: str, num_shards: int) -> None:
    """Every round of the interleaved requests in the first ``num_shards`` shards of ``<root>/shards/<source>``
    as its own sequence (ending where the pipeline's round ends) -> ``<root>/shards/<out>``."""
    from unimask.data.loader import expand_shard_paths
    from unimask.data.writer import write_shards
    from unimask.shapes.backbone_samples import interleaved_round_records

    folder = paths.shards(out)
    if _done(folder):
        return
    _, _, builder = shapes_layout_and_builder(paths)
    shards = expand_shard_paths([str(paths.shards(source))])[:num_shards]
    write_shards(interleaved_round_records(shards, builder, INTERLEAVED_TEXT_LENGTH), folder, max_count=2000)
    _mark(folder)


def _stage_interleaved_rounds_data(paths: BuildPaths) -> None:
    # Every round of set 14's interleaved requests as its own sequence (the whole-sample form ends long after a
    # text round's positions, so text rounds wrote wrong lengths). The first 6000 requests (about 42000 round
    # sequences): a third of the shards backbone_interleaved_rounds reads.
    _write_round_shards(paths, "gen14-interleaved", "backbone-interleaved-rounds", 6)


def _stage_decoder_data(paths: BuildPaths) -> None:
    # The decoder_draft stage's scenes, coded as the shipped pipeline codes images (merged tokenizer).
    _coded_shard_set(paths, "coded-merged", seed=31, kind="captions", merged=True)


DATA_STAGE_FUNCTIONS: dict[str, Callable[[BuildPaths], None]] = {
    "text_tokenizer": _stage_text_tokenizer,
    "caption_shards": _stage_caption_shards,
    "tokenizer_probe": _stage_tokenizer_probe,
    "coded_shards": _stage_coded_shards,
    "backbone_data": _stage_backbone_data,
    "tokenizer_merge": _stage_tokenizer_merge,
    "decoder_data": _stage_decoder_data,
    "merged_backbone_data": _stage_merged_backbone_data,
    "answer_data": _stage_answer_data,
    "answer7_data": _stage_answer7_data,
    **{f"generation{version}_data": partial(_generation_data, version=version) for version in GENERATION_SEEDS},
    "interleaved_rounds_data": _stage_interleaved_rounds_data,
}
