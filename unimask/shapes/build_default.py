"""Build the Shapes World default model end to end, resumably: data, tokenizers, backbone, decoders.

Run ``python -m unimask.shapes.build_default`` (every stage in order) or ``--stage NAME`` (one
stage; run independent stages in parallel processes, see below). Each stage skips itself when its
output exists, and a training stage resumes from its latest checkpoint, so an interrupted build is
simply started again. ``--quick`` runs the whole chain with tiny counts and 2 training steps under
``runs/quick`` (a smoke test of the wiring, not a model). The stage table, recipes and counts are in
``unimask.shapes.build_plan``, the data stages in ``unimask.shapes.build_data``; this module holds what the
shipped pipeline is assembled from and runs the stages.

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
    decoder_draftnet_pixel  its draft network continued on L1 in pixels (configs/shapes/decoder-draftnet-pixel.yaml)
    decoder_draftnet_foreground  that L1 with the foreground weighted 1.5 (configs/shapes/decoder-draftnet-foreground.yaml)
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
    generation10_data a third such set                          -> <root>/shards/gen10-*, backbone-generation10
    backbone_generation10 the backbone continued on it (configs/shapes/backbone-generation10.yaml)
    generation11_data a fourth such set                         -> <root>/shards/gen11-*, backbone-generation11
    backbone_generation11 the backbone continued on it at lr 2e-4 (configs/shapes/backbone-generation11.yaml)
    generation12_data a fifth such set                          -> <root>/shards/gen12-*, backbone-generation12
    backbone_generation12 the backbone continued on it for 7200 steps (configs/shapes/backbone-generation12.yaml)
    generation13_data a sixth such set                          -> <root>/shards/gen13-*, backbone-generation13
    backbone_generation13 the backbone continued on it for 4800 steps (configs/shapes/backbone-generation13.yaml)
    generation14_data a seventh, with a fifth part of interleaved requests -> <root>/shards/gen14-*, backbone-generation14
    backbone_generation14 the backbone continued on it for 9600 steps (configs/shapes/backbone-generation14.yaml)
    interleaved_rounds_data every round of 6000 gen14 interleaved requests as its own sequence -> <root>/shards/backbone-interleaved-rounds
    backbone_interleaved_rounds the backbone continued on set 14 + them (configs/shapes/backbone-interleaved-rounds.yaml)
    generation15_data an eighth set, and the rounds of 3000 of its interleaved requests -> <root>/shards/gen15-*, backbone-generation15(-rounds)
    backbone_generation15 the backbone_interleaved_rounds model continued on both (configs/shapes/backbone-generation15.yaml)
    generation16_data a ninth set, cut the same way          -> <root>/shards/gen16-*, backbone-generation16(-rounds)
    backbone_generation16 the backbone_generation15 model continued on both (configs/shapes/backbone-generation16.yaml)
    generation17_data a tenth set weighted to the questions, rounds of 1000 requests -> <root>/shards/gen17-*, backbone-generation17(-rounds)
    backbone_generation17 the backbone_generation16 model continued on both (configs/shapes/backbone-generation17.yaml)
    generation18_data an eleventh, most questions colour, shape or describe -> <root>/shards/gen18-*, backbone-generation18(-rounds)
    backbone_generation18 the backbone_generation17 model continued on both (configs/shapes/backbone-generation18.yaml)
    generation19_data a twelfth, with the image-writing parts of sets 8-16 back -> <root>/shards/gen19-*, backbone-generation19(-rounds)
    backbone_generation19 the backbone_generation18 model continued on both (configs/shapes/backbone-generation19.yaml)
    generation20_data a thirteenth, made as the twelfth      -> <root>/shards/gen20-*, backbone-generation20(-rounds)
    backbone_generation20 the backbone_generation19 model grown from 4 to 6 layers, continued on both (configs/shapes/backbone-generation20.yaml)
    generation21_data a fourteenth, made as the twelfth      -> <root>/shards/gen21-*, backbone-generation21(-rounds)
    backbone_generation21 the backbone_generation20 model continued on both (configs/shapes/backbone-generation21.yaml)
    generation22_data a fifteenth, made as the twelfth       -> <root>/shards/gen22-*, backbone-generation22(-rounds)
    backbone_generation22 the backbone_generation21 model continued on both (configs/shapes/backbone-generation22.yaml)
    generation23_data a sixteenth, made as the twelfth       -> <root>/shards/gen23-*, backbone-generation23(-rounds)
    backbone_generation23 the backbone_generation22 model continued on both (configs/shapes/backbone-generation23.yaml)
    generation24_data a seventeenth, made as the twelfth     -> <root>/shards/gen24-*, backbone-generation24(-rounds)
    backbone_generation24 the backbone_generation23 model continued on both (configs/shapes/backbone-generation24.yaml)
    generation25_data an eighteenth, made as the twelfth     -> <root>/shards/gen25-*, backbone-generation25(-rounds)
    backbone_generation25 the backbone_generation24 model continued on both (configs/shapes/backbone-generation25.yaml)
    generation26_data a nineteenth, made as the twelfth      -> <root>/shards/gen26-*, backbone-generation26(-rounds)
    backbone_generation26 the backbone_generation25 model continued on both (configs/shapes/backbone-generation26.yaml)
    generation27_data a twentieth, made as the twelfth       -> <root>/shards/gen27-*, backbone-generation27(-rounds)
    backbone_generation27 the backbone_generation26 model continued on both (configs/shapes/backbone-generation27.yaml)
    generation28_data a twenty-first, with recolour and move edits weighted -> <root>/shards/gen28-*, backbone-generation28(-rounds)
    backbone_generation28 the backbone_generation27 model continued on both (configs/shapes/backbone-generation28.yaml)
    generation29_data a twenty-second, as the twenty-first with set 19's hard questions -> <root>/shards/gen29-*, backbone-generation29(-rounds)
    backbone_generation29 the backbone_generation27 model continued on both (configs/shapes/backbone-generation29.yaml)
    backbone_average the mean of backbone_generation27's and 29's weights -> <root>/shapes/backbone-average/export
    assemble         UniPipeline.save_pretrained             -> unimask/default_model (or --out)
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import time
from pathlib import Path
from typing import Callable

from unimask.shapes.build_data import DATA_STAGE_FUNCTIONS, shapes_image_tokenizer, shapes_layout_and_builder
from unimask.shapes.build_plan import (
    ANSWER_LENGTH,
    AVERAGED_STAGES,
    DEFAULT_OUT,
    INTERLEAVED_TEXT_LENGTH,
    RECIPES,
    STAGES,
    BuildPaths,
    recipe_path,
)
from unimask.shapes.language import step_prompt_patterns
from unimask.tokenizers.sequence_builders import TEXT_TO_IMAGE_SYSTEM_PROMPT

__all__ = ["STAGES", "BuildPaths", "run_stage", "build", "main"]

logger = logging.getLogger("unimask.shapes.build_default")

# Which stage's transformer the turbo decoder (8 steps, no guidance) runs. The consistency-distilled
# student does not keep what the codes say: on the true code grids of 24 scenes the shipped recipe's
# student read back the right background in 0.38 of them with 6.4 objects too many an image, against
# 1.00 and 0.04 for its flow teacher on the same 8-step turbo schedule (2026-11-25; the v2 and v3
# trials' students collapsed too, docs/model-card.md). So the turbo decoder is a flow transformer on
# the turbo schedule, now decoder_draftnet's (the flow decoder continued with a draft input, trained at the
# turbo grid's noise levels, then given a draft network that regresses the latents from the codes); the
# decoder_distill stage still trains the student, for comparison. decoder_draftnet_pixel keeps that transformer
# and continues the draft network on L1 in pixels (true grids: strict 0.63 -> 0.72; docs/model-card.md, "The
# pixel-trained draft"), and decoder_draftnet_foreground continues it with the foreground weighted 1.5, so small
# squares keep their corners (docs/model-card.md, "The foreground-weighted draft").
TURBO_TRANSFORMER_STAGE = "decoder_draftnet_foreground"
# Which stage's backbone the pipeline ships (v29: v7 continued on seven fresh sets weighted to editing and
# text-to-image, the seventh with interleaved requests, then on that set plus its interleaved requests cut into
# the pipeline's rounds, then on an eighth and a ninth set, each with its own rounds (v17), then on three sets
# weighted to the questions, the last two mostly of the kinds answered worst, the third with the image-writing
# tasks' samples back (v20; docs/model-card.md, "The v18, v19 and v20 backbones"); then grown from 4 to 6 layers and
# continued on eight more sets of the third's recipe (v29; "The 6-layer backbone"); then averaged with its
# continuation on a set with recolour and move edits weighted (v32), which keeps v32's gains on those edits and v29's on
# the others ("Edits weighted to recolour and move").
BACKBONE_STAGE = "backbone_average"
# The normal decoder (50 Euler steps) runs the same transformer and draft network (docs/model-card.md, "The draft
# network"; with the pixel-trained draft, text-to-image at 50 a type: strict 0.42 / 0.10 -> 0.48 / 0.10).
NORMAL_TRANSFORMER_STAGE = "decoder_draftnet_foreground"
# The turbo decoder starts from the draft network's draft noised to data time 0.75 (its last 2 of 8 steps):
# sampling from noise lost exact scenes the draft had (true grids: 0.50 from noise, 0.71-0.73 from the draft).
# The normal decoder keeps the reference sampler from noise.
TURBO_DRAFT_STRENGTH = 0.25
# The sampler's block: one block holds a whole answer or image, so a step's quota is BLOCK_LENGTH // steps.
BLOCK_LENGTH = 1024
# Text answers, edits and interleaved rounds take BLOCK_LENGTH steps: a step commits every position above the
# threshold, else the one most confident (the official rule with a quota of 1). With 16 steps the quota of 64
# committed a whole answer in one pass, each position on its own, and wrote words no one asked for ("blue" +
# "d" of "re" "d" gave "blued"); edits and rounds committed their uncertain codes together the same way. At 100
# a type (60 for editing, 50 interleaved), seeds 0 / 1, in distribution: understanding 0.90 / 0.89 -> 0.92 /
# 0.90, editing 0.51 / 0.49 -> 0.57 / 0.59, multi-reference 0.40 / 0.43 -> 0.57 / 0.58, interleaved step images
# 0.11 / 0.12 -> 0.23 / 0.22, for 2, 31 and 135 passes a batch instead of 1, 4 and 19 (docs/model-card.md,
# "One position a step").
ONE_POSITION_A_STEP = BLOCK_LENGTH
NUM_CANDIDATES = 8
# With one code per background colour a single pass (the fixed quota of a 1024 block) draws almost
# only background; the adaptive schedule (4 codes a step) with guidance draws the objects. One code a step
# (64 steps) read 0.61 / 0.61 -> 0.70 / 0.60 strict on seeds 0 / 1 at 100 a type for four times the passes.
# Best of NUM_CANDIDATES images, ranked by how well the backbone reads the prompt back from each (the first
# drawn as before, the others at temperature 1): docs/model-card.md, "Best-of-N text-to-image". It reads both
# the codes and the decoded pixels re-encoded: "Ranking on pixels too".
TEXT_TO_IMAGE_DEFAULTS = {"num_inference_steps": 16, "guidance_scale": 2.0, "schedule": "adaptive", "threshold": 1.0,
                          "num_candidates": NUM_CANDIDATES, "ranking_source": "codes_and_pixels"}
GENERATION_DEFAULTS = {
    "common": {"block_length": BLOCK_LENGTH, "threshold": 0.9, "temperature": 0.0, "decoder": "turbo",
               "resolution_multiplier": 1, "image_size": "shapes_world", "image_grid": [8, 8],
               "gen_length": ANSWER_LENGTH},
    "understanding": {"num_inference_steps": ONE_POSITION_A_STEP},
    "chat": {"num_inference_steps": ONE_POSITION_A_STEP},
    "text_to_image": TEXT_TO_IMAGE_DEFAULTS,
    # The model was never trained to think: it writes an empty or header-only thought, which the pipeline drops, and
    # it knows only the text-to-image system prompt; so thinking draws as text-to-image does, with the same sampling
    # and ranking (docs/model-card.md, "Thinking on a model that does not think").
    "thinking": {**TEXT_TO_IMAGE_DEFAULTS, "thinking_length": 32, "thinking_steps": 16,
                 "system_prompt": TEXT_TO_IMAGE_SYSTEM_PROMPT},
    # Text guidance 0.5 edits better than 1.0 on three suite seeds (60 a type: +2.8 points in distribution, all three
    # ahead; +0.8 held out; multi-reference the same), docs/model-card.md, "The pixel-trained draft".
    # Edits and interleaved steps keep their source's pixels where their codes did not change (docs/model-card.md,
    # "Unchanged patches kept").
    "edit": {"num_inference_steps": ONE_POSITION_A_STEP, "text_guidance_scale": 0.5, "image_guidance_scale": 0.0,
             "copy_unchanged_patches": True},
    # Step images are drawn by the text-to-image and edit tasks from the step sentences the model writes, cut to
    # the prompts those tasks were trained on (docs/model-card.md, "Interleaved step images by the tasks").
    "interleaved": {"num_inference_steps": ONE_POSITION_A_STEP, "guidance_scale": 1.0,
                    "gen_length": INTERLEAVED_TEXT_LENGTH, "max_images": 4, "copy_unchanged_patches": True,
                    "step_images": "tasks", "step_prompt_patterns": step_prompt_patterns()},
}


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
    pipe = UniPipeline(backbone, text_tokenizer, shapes_image_tokenizer(paths, merged=True), turbo, layout, GenerationDefaults(GENERATION_DEFAULTS))
    pipe._decoders["normal"] = normal  # saved as decoder-normal/ next to the turbo decoder
    pipe.save_pretrained(paths.out)
    size = sum(f.stat().st_size for f in paths.out.rglob("*") if f.is_file())
    logger.info("saved the default model to %s (%.1f MB)", paths.out, size / 1e6)
    if size > 60e6:
        raise ValueError(f"the assembled model is {size / 1e6:.1f} MB, over the 60 MB budget")


def _stage_average(stage: str, paths: BuildPaths) -> None:
    from unimask.training.weight_average import average_pretrained
    from unimask.unimodal.modeling_llada2_moe import LLaDA2MoeModelLM

    sources = [paths.export(source) for source in AVERAGED_STAGES[stage]]
    average_pretrained(LLaDA2MoeModelLM, sources, paths.export(stage))


STAGE_FUNCTIONS: dict[str, Callable[[BuildPaths], None]] = {
    **DATA_STAGE_FUNCTIONS,
    **{stage: functools.partial(_stage_average, stage) for stage in AVERAGED_STAGES},
    "assemble": _stage_assemble,
}


def run_stage(stage: str, paths: BuildPaths) -> float:
    """Run one stage (skipped when its output exists, resumed when it has a checkpoint); returns seconds."""
    if stage not in STAGES:
        raise ValueError(f"stage={stage!r} is not one of {STAGES}")
    started = time.perf_counter()
    if (stage in RECIPES or stage in AVERAGED_STAGES) and paths.export(stage).is_dir():
        logger.info("%s: export exists, skipped", stage)
    elif stage in RECIPES:
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
