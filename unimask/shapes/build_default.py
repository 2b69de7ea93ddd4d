"""Build the Shapes World default model end to end, resumably: data, tokenizers, backbone, decoders.

Run ``python -m unimask.shapes.build_default`` (every stage in order) or ``--stage NAME`` (one
stage; run independent stages in parallel processes, see below). Each stage skips itself when its
output exists, and a training stage resumes from its latest checkpoint, so an interrupted build is
simply started again. ``--quick`` runs the whole chain with tiny counts and 2 training steps under
``runs/quick`` (a smoke test of the wiring, not a model).

Stages (``STAGES`` order; ``<root>`` is ``runs`` or ``runs/quick``)::

    text_tokenizer   byte-level BPE on the grammar            -> <root>/shapes/text_tokenizer
    caption_shards   scenes + captions + grounded object phrases -> <root>/shards/captions, captions-b
    tokenizer_siglip image tokenizer stage 1  (configs/shapes/tokenizer-siglip-regions.yaml)
    tokenizer_vq     image tokenizer stage 2  (configs/shapes/tokenizer-vq.yaml)
    tokenizer_probe  linear probes code -> colour / shape / size -> <root>/shapes/tokenizer-vq/code_probe.json
    coded_shards     new scenes + their code grids            -> <root>/shards/coded
    vae              the decoder's VAE        (configs/shapes/vae.yaml; captions + coded shards)
    backbone_data    task shards (+ understanding) -> codes -> sequences -> <root>/shards/tasks, tasks-understanding, backbone
    backbone         the MoE backbone         (configs/shapes/backbone.yaml)           } parallel
    decoder_flow     flow-matching decoder    (configs/shapes/decoder-flow.yaml)       }
    decoder_distill  turbo decoder            (configs/shapes/decoder-distill.yaml)      } parallel
    vae_decoder      VAE decoder side, encoder frozen (configs/shapes/vae-decoder.yaml) }
    tokenizer_merge  one code per background colour (background_codes) -> <root>/shapes/tokenizer-merged
    decoder_data     new scenes coded by it                   -> <root>/shards/coded-merged
    decoder_draft    the flow decoder continued with a draft input (configs/shapes/decoder-draft-flow.yaml)
    decoder_draftnet_regress  a draft network regressing the latents from the codes (configs/shapes/decoder-draftnet-regress.yaml)
    decoder_draftnet the draft decoder continued on that network's draft (configs/shapes/decoder-draftnet-flow.yaml)
    merged_backbone_data  the backbone_data samples coded again by it -> <root>/shards/backbone-merged, ...
    backbone_merged  the backbone continued on them (configs/shapes/backbone-merged.yaml)
    answer_data      fresh samples coded by it, 2 in 3 questions -> <root>/shards/answers, answers-tasks, backbone-answers
    backbone_answers the backbone continued on them (configs/shapes/backbone-answers.yaml)
    answer7_data     another fresh set the same way          -> <root>/shards/answers7, answers7-tasks, backbone-answers7
    backbone_answers7 the backbone continued on it (configs/shapes/backbone-answers7.yaml)
    generation8_data fresh samples weighted to editing and text-to-image -> <root>/shards/gen8-*, backbone-generation8
    backbone_generation8 the backbone continued on them (configs/shapes/backbone-generation8.yaml)
    generation9_data another such set, fresh seeds              -> <root>/shards/gen9-*, backbone-generation9
    backbone_generation9 the backbone continued on it (configs/shapes/backbone-generation9.yaml)
    assemble         UniPipeline.save_pretrained             -> unimask/default_model (or --out)
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any, Callable

import yaml

import unimask.configs

__all__ = ["STAGES", "BuildPaths", "run_stage", "build", "main"]

logger = logging.getLogger("unimask.shapes.build_default")

RECIPE_DIR = Path(unimask.configs.__file__).parent / "shapes"
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "default_model"
STAGES = (
    "text_tokenizer", "caption_shards", "tokenizer_siglip", "tokenizer_vq", "tokenizer_probe", "coded_shards", "vae",
    "backbone_data", "backbone", "decoder_flow", "decoder_distill", "vae_decoder", "tokenizer_merge", "decoder_data",
    "decoder_draft", "decoder_draftnet_regress", "decoder_draftnet", "merged_backbone_data", "backbone_merged",
    "answer_data", "backbone_answers", "answer7_data", "backbone_answers7", "generation8_data", "backbone_generation8",
    "generation9_data", "backbone_generation9", "assemble",
)
RECIPES = {
    "tokenizer_siglip": "tokenizer-siglip-regions.yaml",
    "vae": "vae.yaml",
    "tokenizer_vq": "tokenizer-vq.yaml",
    "backbone": "backbone.yaml",
    "backbone_merged": "backbone-merged.yaml",
    "backbone_answers": "backbone-answers.yaml",
    "backbone_answers7": "backbone-answers7.yaml",
    "backbone_generation8": "backbone-generation8.yaml",
    "backbone_generation9": "backbone-generation9.yaml",
    "decoder_flow": "decoder-flow.yaml",
    "decoder_draft": "decoder-draft-flow.yaml",
    "decoder_draftnet_regress": "decoder-draftnet-regress.yaml",
    "decoder_draftnet": "decoder-draftnet-flow.yaml",
    "decoder_distill": "decoder-distill.yaml",
    "vae_decoder": "vae-decoder.yaml",
}
# Sample counts (full, quick) of the data stages.
COUNTS = {"captions": (6000, 64), "captions-b": (14000, 64), "coded": (6000, 64), "tasks": (50000, 64),
          "tasks-understanding": (25000, 32), "probe": (1500, 40), "merge": (1500, 40),
          "answers": (60000, 32), "answers-tasks": (30000, 64), "coded-merged": (12000, 64),
          "answers7": (40000, 32), "answers7-tasks": (24000, 64)}
# The parts of a set weighted to the image-writing tasks (generation<N>_data): the tasks each samples (None: every
# task) and its sample counts; and each set's first seed (part i is drawn with seed + i, sequenced with seed + 10 + i).
GENERATION_PARTS = {"understanding": (["understanding"], (24000, 32)),
                    "editing": (["editing", "multi_reference_editing"], (24000, 32)),
                    "t2i": (["text_to_image"], (16000, 32)),
                    "tasks": (None, (16000, 64))}
GENERATION_SEEDS = {8: 61, 9: 81}
COUNTS.update({f"gen{version}-{part}": counts for version in GENERATION_SEEDS
               for part, (_, counts) in GENERATION_PARTS.items()})
# Below this held-out probe accuracy an attribute is reported as lost by the image tokenizer.
PROBE_WARNING_ACCURACY = 0.9
# Sequence options shared by the backbone data and the shipped generation defaults.
ANSWER_LENGTH = 32
# A text round must look like training, where a step's sentence is followed by its image block: with
# 48 masked positions the model saw a short ending and wrote no <|image|>; with 96 it opens the images.
INTERLEAVED_TEXT_LENGTH = 96
TAIL_EOS = 16
# Which stage's transformer the turbo decoder (8 steps, no guidance) runs. The consistency-distilled
# student does not keep what the codes say: on the true code grids of 24 scenes the shipped recipe's
# student read back the right background in 0.38 of them with 6.4 objects too many an image, against
# 1.00 and 0.04 for its flow teacher on the same 8-step turbo schedule (2026-11-25; the v2 and v3
# trials' students collapsed too, docs/model-card.md). So the turbo decoder is a flow transformer on
# the turbo schedule, now decoder_draftnet's (the flow decoder continued with a draft input, trained at the
# turbo grid's noise levels, then given a draft network that regresses the latents from the codes); the
# decoder_distill stage still trains the student, for comparison.
TURBO_TRANSFORMER_STAGE = "decoder_draftnet"
# Which stage's backbone the pipeline ships (v9: v7 continued on two fresh sets weighted to editing and
# text-to-image).
BACKBONE_STAGE = "backbone_generation9"
# The normal decoder (50 Euler steps) runs the same transformer (docs/model-card.md, "The draft network").
NORMAL_TRANSFORMER_STAGE = "decoder_draftnet"
# The turbo decoder starts from the draft network's draft noised to data time 0.75 (its last 2 of 8 steps):
# sampling from noise lost exact scenes the draft had (true grids: 0.50 from noise, 0.71-0.73 from the draft).
# The normal decoder keeps the reference sampler from noise.
TURBO_DRAFT_STRENGTH = 0.25
GENERATION_DEFAULTS = {
    "common": {"block_length": 1024, "threshold": 0.9, "temperature": 0.0, "decoder": "turbo",
               "resolution_multiplier": 1, "image_size": "shapes_world", "image_grid": [8, 8],
               "gen_length": ANSWER_LENGTH},
    "understanding": {"num_inference_steps": 16},
    "chat": {"num_inference_steps": 16},
    # With one code per background colour a single pass (the fixed quota of a 1024 block) draws almost
    # only background; the adaptive schedule (4 codes a step) with guidance draws the objects.
    "text_to_image": {"num_inference_steps": 16, "guidance_scale": 2.0, "schedule": "adaptive", "threshold": 1.0},
    "thinking": {"num_inference_steps": 16, "guidance_scale": 2.0, "schedule": "adaptive", "threshold": 1.0,
                 "thinking_length": 32, "thinking_steps": 16},
    "edit": {"num_inference_steps": 16, "text_guidance_scale": 1.0, "image_guidance_scale": 0.0},
    "interleaved": {"num_inference_steps": 16, "guidance_scale": 1.0, "gen_length": INTERLEAVED_TEXT_LENGTH,
                    "max_images": 4},
}


class BuildPaths:
    """Where one build writes: ``root`` (``runs`` or ``runs/quick``) and the final ``out`` folder."""

    def __init__(self, root: str | Path = "runs", out: str | Path = DEFAULT_OUT, quick: bool = False):
        self.root, self.out, self.quick = Path(root), Path(out), quick

    def shards(self, name: str) -> Path:
        """``<root>/shards/<name>``."""
        return self.root / "shards" / name

    @property
    def text_tokenizer(self) -> Path:
        """The trained text tokenizer folder."""
        return self.root / "shapes" / "text_tokenizer"

    @property
    def merged_tokenizer(self) -> Path:
        """The image tokenizer with one code per background colour (``tokenizer_merge``)."""
        return self.root / "shapes" / "tokenizer-merged" / "image_tokenizer"

    def export(self, stage: str) -> Path:
        """``<root>/shapes/<recipe name>/export`` of a training stage."""
        return self.root / "shapes" / RECIPES[stage].removesuffix(".yaml") / "export"

    def count(self, name: str) -> int:
        """Sample count of a data set (``COUNTS``), small in quick mode."""
        return COUNTS[name][1 if self.quick else 0]


def recipe_path(stage: str, paths: BuildPaths) -> Path:
    """The recipe a training stage runs: ``configs/shapes/<name>``, rewritten for another root or quick mode."""
    source = RECIPE_DIR / RECIPES[stage]
    if paths.root == Path("runs") and not paths.quick:
        return source
    recipe = yaml.safe_load(source.read_text().replace("runs/", f"{paths.root.as_posix()}/"))
    if paths.quick:
        recipe.update(steps=2, micro_batch_size=min(recipe["micro_batch_size"], 4))
        recipe["checkpoint"] = {"every": 1, "keep_last": 1}
        recipe["schedule"] = {"kind": "constant"}
        recipe["data"]["shuffle_buffer"] = 0
        if "teacher_steps" in recipe.get("stage_options", {}):
            recipe["stage_options"]["teacher_steps"] = 2
        # Shipped stages continue earlier runs (configs/shapes/vae.yaml, decoder-flow.yaml); a smoke build starts fresh.
        for key in ("init", "init_vae"):
            init = recipe.get("stage_options", {}).get(key)
            if init is not None and not Path(init).is_dir():
                del recipe["stage_options"][key]
    target = paths.root / "configs" / RECIPES[stage]
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return target


def _train(stage: str, paths: BuildPaths) -> None:
    from unimask.training.checkpoint import latest_checkpoint
    from unimask.training.distributed import init_distributed, shutdown_distributed
    from unimask.training.recipe import load_recipe
    from unimask.training.trainer import Trainer

    recipe = load_recipe(recipe_path(stage, paths))
    out_dir = Path(recipe.out_dir)
    resume = latest_checkpoint(out_dir / "checkpoints") is not None
    context = init_distributed()
    try:
        result = Trainer(recipe, resume=resume, context=context).fit()
    finally:
        shutdown_distributed(context)
    logger.info("%s: %d steps, export %s", stage, result.step, result.export_dir)


def _shapes_tokenizer(paths: BuildPaths, merged: bool = False):
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

    tokenizer = _shapes_tokenizer(paths, merged)
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

    tokenizer = _shapes_tokenizer(paths)
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
    tokenizer = _shapes_tokenizer(paths)
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
    # with multi-reference, text-to-image, every task, and questions to keep answering.
    seed = GENERATION_SEEDS[version]
    sampling_seeds = {}
    for offset, (part, (tasks, _)) in enumerate(GENERATION_PARTS.items()):
        name = f"gen{version}-{part}"
        options = {} if tasks is None else {"tasks": tasks}
        _coded_shard_set(paths, name, seed=seed + offset, kind="tasks", merged=True, **options)
        sampling_seeds[name] = seed + 10 + offset
    _write_backbone_shards(paths, f"backbone-generation{version}", sampling_seeds)


def _stage_generation8_data(paths: BuildPaths) -> None:
    _generation_data(paths, version=8)


def _stage_generation9_data(paths: BuildPaths) -> None:
    _generation_data(paths, version=9)


def _stage_decoder_data(paths: BuildPaths) -> None:
    # The decoder_draft stage's scenes, coded as the shipped pipeline codes images (merged tokenizer).
    _coded_shard_set(paths, "coded-merged", seed=31, kind="captions", merged=True)


def _stage_assemble(paths: BuildPaths) -> None:
    from diffusers import AutoencoderKL, ZImageTransformer2DModel

    from unimask.decoders.flow_schedule import make_decoder_scheduler
    from unimask.decoders.semantic_decoder import SemanticImageDecoder
    from unimask.decoders.sigvq import SigVQEmbedding
    from unimask.pipelines.generation_defaults import GenerationDefaults
    from unimask.pipelines.pipeline_uni import UniPipeline
    from unimask.unimodal.modeling_llada2_moe import LLaDA2MoeModelLM

    layout, text_tokenizer, _ = shapes_layout_and_builder(paths)
    backbone = LLaDA2MoeModelLM.from_pretrained(paths.export(BACKBONE_STAGE)).eval()

    # The decoder-side VAE fine-tune keeps the encoder, so the transformers' latents stay valid.
    sharpened_vae = paths.export("vae_decoder") / "vae"

    def decoder(folder: Path, variant: str, draft_strength: float = 1.0) -> SemanticImageDecoder:
        return SemanticImageDecoder(
            sigvq=SigVQEmbedding.from_pretrained(folder / "sigvq"),
            transformer=ZImageTransformer2DModel.from_pretrained(folder / "transformer"),
            vae=AutoencoderKL.from_pretrained(sharpened_vae if sharpened_vae.is_dir() else folder / "vae"),
            scheduler=make_decoder_scheduler(variant),
            decoder_variant=variant,
            draft_strength=draft_strength,
        )

    turbo = decoder(paths.export(TURBO_TRANSFORMER_STAGE) / "decoder", "turbo", TURBO_DRAFT_STRENGTH)
    normal = decoder(paths.export(NORMAL_TRANSFORMER_STAGE) / "decoder", "normal")
    pipe = UniPipeline(backbone, text_tokenizer, _shapes_tokenizer(paths, merged=True), turbo, layout, GenerationDefaults(GENERATION_DEFAULTS))
    pipe._decoders["normal"] = normal  # saved as decoder-normal/ next to the turbo decoder
    pipe.save_pretrained(paths.out)
    size = sum(f.stat().st_size for f in paths.out.rglob("*") if f.is_file())
    logger.info("saved the default model to %s (%.1f MB)", paths.out, size / 1e6)
    if size > 60e6:
        raise ValueError(f"the assembled model is {size / 1e6:.1f} MB, over the 60 MB budget")


def _stage_decoder_distill(paths: BuildPaths) -> None:
    _train("decoder_distill", paths)


STAGE_FUNCTIONS: dict[str, Callable[[BuildPaths], None]] = {
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
    "generation8_data": _stage_generation8_data,
    "generation9_data": _stage_generation9_data,
    "assemble": _stage_assemble,
}


def run_stage(stage: str, paths: BuildPaths) -> float:
    """Run one stage (skipped when its output exists, resumed when it has a checkpoint); returns seconds."""
    if stage not in STAGES:
        raise ValueError(f"stage={stage!r} is not one of {STAGES}")
    started = time.perf_counter()
    if stage in RECIPES:
        if (paths.export(stage)).is_dir():
            logger.info("%s: export exists, skipped", stage)
        else:
            _train(stage, paths)
    elif stage == "text_tokenizer" and (paths.text_tokenizer / "tokenizer.json").is_file():
        logger.info("text_tokenizer: exists, skipped")
    else:
        STAGE_FUNCTIONS[stage](paths)
    elapsed = time.perf_counter() - started
    logger.info("stage %s done in %.1f s", stage, elapsed)
    return elapsed


def build(paths: BuildPaths, stages: tuple[str, ...] = STAGES) -> dict[str, float]:
    """Run ``stages`` in order; returns ``{stage: seconds}``."""
    return {stage: run_stage(stage, paths) for stage in stages}


def main(argv: list[str] | None = None) -> int:
    """Command line: ``[--stage NAME ...] [--quick] [--root DIR] [--out DIR]``."""
    parser = argparse.ArgumentParser(prog="python -m unimask.shapes.build_default", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stage", action="append", choices=STAGES, help="run only this stage (repeatable)")
    parser.add_argument("--quick", action="store_true", help="tiny smoke build under <root>/quick")
    parser.add_argument("--root", default="runs", help="folder for shards, checkpoints and exports")
    parser.add_argument("--out", default=None, help="where to save the pipeline (default: unimask/default_model)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    root = Path(args.root) / "quick" if args.quick else Path(args.root)
    out = Path(args.out) if args.out else (root / "default_model" if args.quick else DEFAULT_OUT)
    times = build(BuildPaths(root, out, args.quick), tuple(args.stage or STAGES))
    print(json.dumps({"seconds": times}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
