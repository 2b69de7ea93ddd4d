"""What the Shapes World build runs and where it writes: the stage order, the recipe of each training
stage, the sample counts of the data stages, and :class:`BuildPaths`.

``unimask.shapes.build_default`` runs the stages; ``unimask.shapes.build_data`` holds the data stages.
"""

from __future__ import annotations

from pathlib import Path

import yaml

import unimask.configs

__all__ = ["STAGES", "RECIPES", "AVERAGED_STAGES", "COUNTS", "GENERATION_PARTS", "INTERLEAVED_PART", "GENERATION_SEEDS",
           "FIRST_ROUNDS_SET", "ROUND_SHARDS", "UNDERSTANDING_WEIGHTED_PARTS", "FIRST_UNDERSTANDING_WEIGHTED_SET",
           "HARD_QUESTION_KINDS", "HARD_QUESTIONS_PART", "HARD_QUESTION_PARTS", "FIRST_HARD_QUESTION_SET",
           "REBALANCED_PARTS", "FIRST_REBALANCED_SET", "FIRST_GROWN_SET", "HARD_EDIT_KINDS", "HARD_EDITS_PART",
           "EDIT_WEIGHTED_PARTS", "FIRST_EDIT_WEIGHTED_SET", "EDIT_AND_QUESTION_PARTS", "FIRST_EDIT_AND_QUESTION_SET",
           "round_shards", "part_options",
           "generation_parts", "ANSWER_LENGTH", "TAIL_EOS", "INTERLEAVED_TEXT_LENGTH",
           "BuildPaths", "recipe_path"]

RECIPE_DIR = Path(unimask.configs.__file__).parent / "shapes"
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "default_model"
# The parts of a set weighted to the image-writing tasks (stage generation<N>_data, then backbone_generation<N> on
# configs/shapes/backbone-generation<N>.yaml): the tasks each samples (None: every task) and its sample counts; and
# each set's first seed (part i is drawn with seed + i, sequenced with seed + 10 + i).
GENERATION_PARTS = {"understanding": (["understanding"], (24000, 32)),
                    "editing": (["editing", "multi_reference_editing"], (24000, 32)),
                    "t2i": (["text_to_image"], (16000, 32)),
                    "tasks": (None, (16000, 64))}
# From set 14 on, a fifth part of interleaved requests only: in the four-part sets about one sample in 25 is
# interleaved, too few for the model to copy a step's sentence from the request and stop after the last step.
INTERLEAVED_PART = {"interleaved": (["interleaved"], (16000, 32))}
FIRST_INTERLEAVED_SET = 14
# From set 17 on, a set is weighted to the questions instead: understanding answers at 0.84 (colour, shape and
# descriptions at about 0.67, 100 a type) against the image-writing tasks' steady figures of sets 15 and 16.
UNDERSTANDING_WEIGHTED_PARTS = {"understanding": (["understanding"], (48000, 32)),
                                "editing": (["editing", "multi_reference_editing"], (8000, 32)),
                                "t2i": (["text_to_image"], (6000, 32)),
                                "tasks": (None, (8000, 64)),
                                "interleaved": (["interleaved"], (6000, 32))}
FIRST_UNDERSTANDING_WEIGHTED_SET = 17
# From set 18 on, two thirds of those questions are of the kinds still answered worst (colour, shape and
# descriptions at 0.71-0.76 after set 17, against 0.90-1.00 for the others, 100 a type).
HARD_QUESTION_KINDS = ["colour", "shape", "describe"]
HARD_QUESTIONS_PART = "hard-questions"
HARD_QUESTION_PARTS = {"understanding": (["understanding"], (16000, 32)),
                       HARD_QUESTIONS_PART: (["understanding"], (32000, 32)),
                       **{part: parts for part, parts in UNDERSTANDING_WEIGHTED_PARTS.items()
                          if part != "understanding"}}
FIRST_HARD_QUESTION_SET = 18
# From set 19 on, a set keeps most of those questions but gives text-to-image its 16000 samples of sets 8-16 back
# and editing twice set 18's 8000: after two sets weighted to questions, text-to-image strict fell 0.60 -> 0.49
# and editing 0.52 -> 0.46 (seed 0).
REBALANCED_PARTS = {"understanding": (["understanding"], (8000, 32)),
                    HARD_QUESTIONS_PART: (["understanding"], (24000, 32)),
                    "editing": (["editing", "multi_reference_editing"], (16000, 32)),
                    "t2i": GENERATION_PARTS["t2i"],
                    "tasks": UNDERSTANDING_WEIGHTED_PARTS["tasks"],
                    "interleaved": UNDERSTANDING_WEIGHTED_PARTS["interleaved"]}
FIRST_REBALANCED_SET = 19
# Set 20's stage grows set 19's 4-layer model to 6 layers (a zero-output copy after layers 1 and 3, stage option
# grow_after), and later sets continue the 6-layer model: a thirteenth set of set 19's recipe on the 4-layer model
# moved nothing beyond noise (docs/model-card.md, "The 6-layer backbone").
FIRST_GROWN_SET = 20
# From set 28 on, a set also has a part of edits of the kinds still applied worst (recolour 0.37 and move 0.53,
# against 0.80-0.85 for the other four, seed 0, 60 a type, on v29 with unchanged patches kept), and a third fewer
# hard questions (understanding 0.96 in distribution).
HARD_EDIT_KINDS = ["recolour", "move"]
HARD_EDITS_PART = "hard-edits"
EDIT_WEIGHTED_PARTS = {"understanding": REBALANCED_PARTS["understanding"],
                       HARD_QUESTIONS_PART: (["understanding"], (16000, 32)),
                       "editing": REBALANCED_PARTS["editing"],
                       HARD_EDITS_PART: (["editing"], (12000, 32)),
                       "t2i": REBALANCED_PARTS["t2i"],
                       "tasks": REBALANCED_PARTS["tasks"],
                       "interleaved": REBALANCED_PARTS["interleaved"]}
FIRST_EDIT_WEIGHTED_SET = 28
# From set 29 on, the hard questions are back at set 19's 24000 beside the hard edits: set 28's cut lost understanding
# (0.963 -> 0.949 in distribution, shape 0.95 -> 0.89, seeds 0 and 1) while its hard edits gained editing (0.702 ->
# 0.737).
EDIT_AND_QUESTION_PARTS = {part: (EDIT_WEIGHTED_PARTS if part == HARD_EDITS_PART else REBALANCED_PARTS)[part]
                           for part in EDIT_WEIGHTED_PARTS}
FIRST_EDIT_AND_QUESTION_SET = 29
# Stages that save the uniform mean of other stages' exports (``<root>/shapes/<stage, dashed>/export``). The shipped
# backbone is the mean of v29 (set 27) and v32 (set 29, which continued v29): v32 alone traded background and resize
# edits for recolour and move ones, the mean keeps both (docs/model-card.md, "Edits weighted to recolour and move").
AVERAGED_STAGES = {"backbone_average": ("backbone_generation27", "backbone_generation29")}
GENERATION_SEEDS = {8: 61, 9: 81, 10: 101, 11: 121, 12: 141, 13: 161, 14: 181, 15: 201, 16: 221, 17: 241, 18: 261,
                    19: 281, 20: 301, 21: 321, 22: 341, 23: 361, 24: 381,
                    25: 401, 26: 421, 27: 441, 28: 481, 29: 501}
# From set 15 on, a set's data stage also cuts the first ROUND_SHARDS shards of its interleaved requests into the
# interleaved pipeline's rounds (``backbone-generation<N>-rounds``); set 15's backbone stage continues the
# ``backbone_interleaved_rounds`` model (set 14's rounds have their own stages, which come first), each later set's
# the set before it.
FIRST_ROUNDS_SET = 15
ROUND_SHARDS = 3


def round_shards(version: int) -> int:
    """How many shards of set ``version``'s interleaved requests its data stage cuts into rounds (0 before set 15;
    1 for the understanding-weighted sets, whose interleaved part is 6000 requests, so rounds stay about a tenth)."""
    if version < FIRST_ROUNDS_SET:
        return 0
    return 1 if version >= FIRST_UNDERSTANDING_WEIGHTED_SET else ROUND_SHARDS


def part_options(part: str) -> dict[str, object]:
    """The Shapes sample options of generation part ``part`` beyond its tasks (``question_kinds`` for the
    ``hard-questions`` part, ``edit_kinds`` for the ``hard-edits`` part, else none)."""
    if part == HARD_QUESTIONS_PART:
        return {"question_kinds": list(HARD_QUESTION_KINDS)}
    if part == HARD_EDITS_PART:
        return {"edit_kinds": list(HARD_EDIT_KINDS)}
    return {}


def generation_parts(version: int) -> dict[str, tuple[list[str] | None, tuple[int, int]]]:
    """The parts of generation set ``version``: ``{part: (tasks or None for every task, (full, quick) counts)}``."""
    if version not in GENERATION_SEEDS:
        raise ValueError(f"version={version} is not a generation set; known: {sorted(GENERATION_SEEDS)}")
    if version >= FIRST_EDIT_AND_QUESTION_SET:
        return dict(EDIT_AND_QUESTION_PARTS)
    if version >= FIRST_EDIT_WEIGHTED_SET:
        return dict(EDIT_WEIGHTED_PARTS)
    if version >= FIRST_REBALANCED_SET:
        return dict(REBALANCED_PARTS)
    if version >= FIRST_HARD_QUESTION_SET:
        return dict(HARD_QUESTION_PARTS)
    if version >= FIRST_UNDERSTANDING_WEIGHTED_SET:
        return dict(UNDERSTANDING_WEIGHTED_PARTS)
    return {**GENERATION_PARTS, **(INTERLEAVED_PART if version >= FIRST_INTERLEAVED_SET else {})}

STAGES = (
    "text_tokenizer", "caption_shards", "tokenizer_siglip", "tokenizer_vq", "tokenizer_probe", "coded_shards", "vae",
    "backbone_data", "backbone", "decoder_flow", "decoder_distill", "vae_decoder", "tokenizer_merge", "decoder_data",
    "decoder_draft", "decoder_draftnet_regress", "decoder_draftnet", "decoder_draftnet_pixel", "decoder_draftnet_foreground",
    "merged_backbone_data",
    "backbone_merged",
    "answer_data", "backbone_answers", "answer7_data", "backbone_answers7",
    *(stage for version in GENERATION_SEEDS if version < FIRST_ROUNDS_SET
      for stage in (f"generation{version}_data", f"backbone_generation{version}")),
    "interleaved_rounds_data", "backbone_interleaved_rounds",
    *(stage for version in GENERATION_SEEDS if version >= FIRST_ROUNDS_SET
      for stage in (f"generation{version}_data", f"backbone_generation{version}")),
    *AVERAGED_STAGES,
    "assemble",
)
RECIPES = {
    "tokenizer_siglip": "tokenizer-siglip-regions.yaml",
    "vae": "vae.yaml",
    "tokenizer_vq": "tokenizer-vq.yaml",
    "backbone": "backbone.yaml",
    "backbone_merged": "backbone-merged.yaml",
    "backbone_answers": "backbone-answers.yaml",
    "backbone_answers7": "backbone-answers7.yaml",
    **{f"backbone_generation{version}": f"backbone-generation{version}.yaml" for version in GENERATION_SEEDS},
    "backbone_interleaved_rounds": "backbone-interleaved-rounds.yaml",
    "decoder_flow": "decoder-flow.yaml",
    "decoder_draft": "decoder-draft-flow.yaml",
    "decoder_draftnet_regress": "decoder-draftnet-regress.yaml",
    "decoder_draftnet": "decoder-draftnet-flow.yaml",
    "decoder_draftnet_pixel": "decoder-draftnet-pixel.yaml",
    "decoder_draftnet_foreground": "decoder-draftnet-foreground.yaml",
    "decoder_distill": "decoder-distill.yaml",
    "vae_decoder": "vae-decoder.yaml",
}
# Sample counts (full, quick) of the data stages.
COUNTS = {"captions": (6000, 64), "captions-b": (14000, 64), "coded": (6000, 64), "tasks": (50000, 64),
          "tasks-understanding": (25000, 32), "probe": (1500, 40), "merge": (1500, 40),
          "answers": (60000, 32), "answers-tasks": (30000, 64), "coded-merged": (12000, 64),
          "answers7": (40000, 32), "answers7-tasks": (24000, 64)}
COUNTS.update({f"gen{version}-{part}": counts for version in GENERATION_SEEDS
               for part, (_, counts) in generation_parts(version).items()})
# Sequence options shared by the backbone data and the shipped generation defaults.
ANSWER_LENGTH = 32
# TEXT positions of an interleaved text round (the shipped interleaved gen_length and the round sequences' length).
INTERLEAVED_TEXT_LENGTH = 96
# End-of-sequence tokens after the last image of an interleaved training sequence (what a last text round sees).
TAIL_EOS = 16


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
        """``<root>/shapes/<recipe name>/export`` of a training stage, ``<root>/shapes/<stage, dashed>/export`` of
        an averaging one (``AVERAGED_STAGES``)."""
        name = stage.replace("_", "-") if stage in AVERAGED_STAGES else RECIPES[stage].removesuffix(".yaml")
        return self.root / "shapes" / name / "export"

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
                if key == "init":  # nothing to grow: the deeper model starts fresh too
                    recipe["stage_options"].pop("grow_after", None)
    target = paths.root / "configs" / RECIPES[stage]
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return target
