"""The Shapes text tokenizer build and the build driver's recipe handling."""

import json
import random
from pathlib import Path

import pytest
import torch
import yaml

from unimask.shapes.build_default import BACKBONE_STAGE, STAGE_FUNCTIONS, run_stage
from unimask.shapes.build_plan import (
    ANSWER_LENGTH, AVERAGED_STAGES, COUNTS, FIRST_EDIT_AND_QUESTION_SET, FIRST_EDIT_WEIGHTED_SET, FIRST_GROWN_SET,
    FIRST_HARD_QUESTION_SET, FIRST_REBALANCED_SET, FIRST_ROUNDS_SET, FIRST_UNDERSTANDING_WEIGHTED_SET,
    GENERATION_PARTS, GENERATION_SEEDS, RECIPES, STAGES, BuildPaths, generation_parts, part_options, recipe_path,
    round_shards,
)
from unimask.shapes.language import caption
from unimask.shapes.scene import sample_scene
from unimask.shapes.text_tokenizer_build import build_shapes_text_tokenizer, save_shapes_text_tokenizer
from unimask.tokenizers.text_tokenizer import load_text_tokenizer
from unimask.tokenizers.token_layout import SHAPES_SPECIAL_TOKENS, TokenLayout


def test_special_tokens_take_the_first_ids(shapes_text_tokenizer):
    for expected, token in enumerate(SHAPES_SPECIAL_TOKENS):
        assert shapes_text_tokenizer.convert_tokens_to_ids(token) == expected
    assert len(shapes_text_tokenizer) <= 512


def test_grammar_round_trips_compactly(shapes_text_tokenizer):
    rng = random.Random(4)
    for _ in range(50):
        text = caption(sample_scene(rng))
        ids = shapes_text_tokenizer.encode(text, add_special_tokens=False)
        assert shapes_text_tokenizer.decode(ids) == text
        assert len(ids) < ANSWER_LENGTH  # a caption answer fits the understanding span with an end token
        assert max(ids) < len(shapes_text_tokenizer)


def test_saved_tokenizer_loads_and_fits_the_layout(tmp_path):
    path = save_shapes_text_tokenizer(tmp_path / "tok")
    tokenizer = load_text_tokenizer(path.parent)
    layout = TokenLayout.from_tokenizer(tokenizer, image_token_offset=512, codebook_size=256, vocab_size=768)
    assert layout == TokenLayout.shapes(512, 256)


def test_too_small_vocab_raises():
    with pytest.raises(ValueError, match="vocab_size"):
        build_shapes_text_tokenizer(vocab_size=100)


def test_quick_recipes_are_rewritten_under_the_root(tmp_path):
    paths = BuildPaths(tmp_path / "quick", tmp_path / "out", quick=True)
    for stage in RECIPES:
        recipe = yaml.safe_load(recipe_path(stage, paths).read_text())
        assert recipe["steps"] == 2
        assert recipe["out_dir"].startswith(str(tmp_path / "quick"))
        assert all(s.startswith(str(tmp_path / "quick")) for s in recipe["data"]["shards"])


def test_generation_sets_add_an_interleaved_part_from_set_14():
    assert "interleaved" not in generation_parts(13)
    parts = generation_parts(14)
    assert parts["interleaved"][0] == ["interleaved"] and list(parts)[:4] == list(generation_parts(13))
    # every part of every set has its counts, and the sets' seed ranges (seed + part, seed + 10 + part) never meet
    assert all(f"gen{version}-{part}" in COUNTS for version in GENERATION_SEEDS for part in generation_parts(version))
    seeds = [GENERATION_SEEDS[v] + extra + i for v in GENERATION_SEEDS for extra in (0, 10)
             for i in range(len(generation_parts(v)))]
    assert len(seeds) == len(set(seeds))
    with pytest.raises(ValueError, match="version=7"):
        generation_parts(7)


def test_understanding_weighted_sets_hold_mostly_questions_and_fewer_rounds():
    parts = generation_parts(FIRST_UNDERSTANDING_WEIGHTED_SET)
    assert list(parts) == list(generation_parts(FIRST_UNDERSTANDING_WEIGHTED_SET - 1))
    full = {part: counts[0] for part, (_, counts) in parts.items()}
    assert full["understanding"] > sum(full.values()) / 2
    # one shard of 1000 interleaved requests is cut into rounds, against three before
    assert round_shards(FIRST_UNDERSTANDING_WEIGHTED_SET) == 1
    assert round_shards(FIRST_UNDERSTANDING_WEIGHTED_SET - 1) == 3 and round_shards(FIRST_ROUNDS_SET - 1) == 0


def _parts_written(tmp_path, monkeypatch, version: int) -> dict[str, dict]:
    """The options `_generation_data` gives each coded part of set ``version``, by shard folder name (nothing is
    written)."""
    import unimask.shapes.build_data as build_data

    written = {}
    monkeypatch.setattr(build_data, "_coded_shard_set", lambda paths, name, **kw: written.setdefault(name, kw))
    monkeypatch.setattr(build_data, "_write_backbone_shards", lambda *args: None)
    monkeypatch.setattr(build_data, "_write_round_shards", lambda *args: None)
    build_data._generation_data(BuildPaths(tmp_path), version)
    return written


def test_hard_question_sets_ask_mostly_the_weak_kinds(tmp_path, monkeypatch):
    written = _parts_written(tmp_path, monkeypatch, FIRST_HARD_QUESTION_SET)
    hard = written[f"gen{FIRST_HARD_QUESTION_SET}-hard-questions"]
    assert hard["tasks"] == ["understanding"] and hard["question_kinds"] == ["colour", "shape", "describe"]
    # every other part samples as before: its tasks only
    assert all("question_kinds" not in options for name, options in written.items() if not name.endswith("-hard-questions"))
    assert written[f"gen{FIRST_HARD_QUESTION_SET}-understanding"]["tasks"] == ["understanding"]
    full = {part: counts[0] for part, (_, counts) in generation_parts(FIRST_HARD_QUESTION_SET).items()}
    assert full["hard-questions"] == 2 * full["understanding"]
    assert full["hard-questions"] + full["understanding"] == generation_parts(FIRST_UNDERSTANDING_WEIGHTED_SET)[
        "understanding"][1][0]


def test_the_rebalanced_set_keeps_the_weak_kinds_and_gives_the_image_tasks_samples_back():
    parts = generation_parts(FIRST_REBALANCED_SET)
    full = {part: counts[0] for part, (_, counts) in parts.items()}
    assert part_options("hard-questions")["question_kinds"] == ["colour", "shape", "describe"]
    assert full["hard-questions"] > full["understanding"]
    assert parts["t2i"] == GENERATION_PARTS["t2i"]
    assert full["editing"] == 2 * generation_parts(FIRST_HARD_QUESTION_SET)["editing"][1][0]


def test_edit_weighted_sets_add_recolour_and_move_edits(tmp_path, monkeypatch):
    written = _parts_written(tmp_path, monkeypatch, FIRST_EDIT_WEIGHTED_SET)
    hard = written[f"gen{FIRST_EDIT_WEIGHTED_SET}-hard-edits"]
    assert hard["tasks"] == ["editing"] and hard["edit_kinds"] == ["recolour", "move"]
    assert all("edit_kinds" not in options for name, options in written.items() if not name.endswith("-hard-edits"))
    # each part is seeded apart, and the set before keeps its own parts
    assert len({options["seed"] for options in written.values()}) == len(written)
    full = {part: counts[0] for part, (_, counts) in generation_parts(FIRST_EDIT_WEIGHTED_SET).items()}
    before = {part: counts[0] for part, (_, counts) in generation_parts(FIRST_EDIT_WEIGHTED_SET - 1).items()}
    assert "hard-edits" not in before and full["hard-questions"] < before["hard-questions"]
    assert {part: n for part, n in full.items() if part not in ("hard-edits", "hard-questions")} == {
        part: n for part, n in before.items() if part != "hard-questions"}
    # the set after it gives the hard questions back and keeps the hard edits
    after = generation_parts(FIRST_EDIT_WEIGHTED_SET + 1)
    assert after["hard-questions"] == generation_parts(FIRST_EDIT_WEIGHTED_SET - 1)["hard-questions"]
    assert after["hard-edits"] == generation_parts(FIRST_EDIT_WEIGHTED_SET)["hard-edits"]


def test_sets_with_rounds_continue_the_model_before_them_after_it_is_trained():
    # Set FIRST_ROUNDS_SET starts from backbone_interleaved_rounds and each later set from the set before it (but
    # set FIRST_EDIT_AND_QUESTION_SET, which continues the model before set FIRST_EDIT_WEIGHTED_SET beside it), so
    # their stages must come after those, and each recipe must read the round sequences its data stage writes.
    later = [v for v in GENERATION_SEEDS if v >= FIRST_ROUNDS_SET]
    assert len(later) >= 2
    for version in later:
        before = ("backbone_interleaved_rounds" if version == FIRST_ROUNDS_SET
                  else f"backbone_generation{FIRST_EDIT_WEIGHTED_SET - 1}" if version == FIRST_EDIT_AND_QUESTION_SET
                  else f"backbone_generation{version - 1}")
        assert STAGES.index(f"generation{version}_data") > STAGES.index(before)
        recipe = yaml.safe_load(recipe_path(f"backbone_generation{version}", BuildPaths()).read_text())
        assert recipe["stage_options"]["init"] == str(BuildPaths().export(before))
        assert recipe["data"]["shards"] == [str(BuildPaths().shards(f"backbone-generation{version}")),
                                            str(BuildPaths().shards(f"backbone-generation{version}-rounds"))]


def test_the_shipped_backbone_is_the_mean_of_two_sets_models_saved_after_both():
    assert BACKBONE_STAGE == "backbone_average"
    sources = AVERAGED_STAGES[BACKBONE_STAGE]
    assert sources == (f"backbone_generation{FIRST_EDIT_WEIGHTED_SET - 1}",
                       f"backbone_generation{FIRST_EDIT_AND_QUESTION_SET}")
    assert max(STAGES.index(source) for source in sources) < STAGES.index(BACKBONE_STAGE) < STAGES.index("assemble")
    assert BuildPaths("runs").export(BACKBONE_STAGE) == Path("runs/shapes/backbone-average/export")


def test_an_averaging_stage_is_skipped_when_its_export_exists(tmp_path):
    # As a training stage: a rerun keeps the export (the sources need not exist any more).
    paths = BuildPaths(tmp_path)
    paths.export(BACKBONE_STAGE).mkdir(parents=True)
    (paths.export(BACKBONE_STAGE) / "config.json").write_text("{}")
    run_stage(BACKBONE_STAGE, paths)
    assert [p.name for p in paths.export(BACKBONE_STAGE).iterdir()] == ["config.json"]


def test_the_grown_set_adds_two_layers_and_later_sets_keep_them():
    # backbone_generation20 grows the 4-layer model of the set before it by a copy of layers 1 and 3; the sets after
    # it continue the 6-layer model as it is (no grow_after, which would need a 4-layer init).
    def recipe(version):
        return yaml.safe_load(recipe_path(f"backbone_generation{version}", BuildPaths()).read_text())

    before, grown = recipe(FIRST_GROWN_SET - 1), recipe(FIRST_GROWN_SET)
    assert before["model"]["num_hidden_layers"] == 4 and "grow_after" not in before["stage_options"]
    assert grown["stage_options"]["grow_after"] == [1, 3]
    assert grown["model"]["num_hidden_layers"] == grown["model"]["max_window_layers"] == 6
    assert {k: v for k, v in grown["model"].items() if k not in ("num_hidden_layers", "max_window_layers")} == \
        {k: v for k, v in before["model"].items() if k not in ("num_hidden_layers", "max_window_layers")}
    for version in (v for v in GENERATION_SEEDS if v > FIRST_GROWN_SET):
        later = recipe(version)
        assert later["model"] == grown["model"] and "grow_after" not in later["stage_options"]


def test_a_quick_build_without_the_init_drops_grow_after_too(tmp_path):
    options = yaml.safe_load(recipe_path(f"backbone_generation{FIRST_GROWN_SET}",
                                         BuildPaths(tmp_path / "quick", tmp_path / "out", quick=True)).read_text())["stage_options"]
    assert "init" not in options and "grow_after" not in options


def test_the_pixel_trained_drafts_continue_decoder_draftnet():
    # The decoders' stages keep decoder_draftnet's transformer and train only its draft network, each from the
    # export before it, so they must run in that order; both decoders ship the last (one SigVQ, shared when loaded).
    from unimask.shapes.build_default import NORMAL_TRANSFORMER_STAGE, TURBO_TRANSFORMER_STAGE

    assert TURBO_TRANSFORMER_STAGE == NORMAL_TRANSFORMER_STAGE == "decoder_draftnet_foreground"
    chain = ["decoder_draftnet", "decoder_draftnet_pixel", "decoder_draftnet_foreground"]
    assert [STAGES.index(stage) for stage in chain] == list(range(STAGES.index(chain[0]), STAGES.index(chain[0]) + 3))
    for before, stage in zip(chain, chain[1:]):
        options = yaml.safe_load(recipe_path(stage, BuildPaths()).read_text())["stage_options"]
        assert options["init"] == str(BuildPaths().export(before) / "decoder")
        assert options["draft_only"] is True and options["draft_objective"] == "pixel_l1"
    assert options["foreground_weight"] == 1.5


def test_unknown_stage_raises(tmp_path):
    with pytest.raises(ValueError, match="stage"):
        run_stage("nope", BuildPaths(tmp_path))
    assert STAGES[0] == "text_tokenizer" and STAGES[-1] == "assemble"


def test_every_stage_has_one_runner():
    # A stage trains its recipe or runs its function, never both, and the table lists no stage the order lacks.
    assert not set(RECIPES) & set(STAGE_FUNCTIONS)
    assert set(RECIPES) | set(STAGE_FUNCTIONS) == set(STAGES)


@pytest.mark.slow
def test_quick_chain_builds_a_loadable_pipeline(tmp_path):
    from unimask.pipelines.pipeline_uni import UniPipeline
    from unimask.shapes.build_default import build
    from unimask.tokenizers.image_tokenizer import SigLIPVQTokenizer
    from unimask.unimodal.modeling_llada2_moe import LLaDA2MoeModelLM

    paths = BuildPaths(tmp_path / "quick", tmp_path / "model", quick=True)
    build(paths)
    pipe = UniPipeline.from_pretrained(tmp_path / "model")
    assert pipe.token_layout.codebook_size == 256
    # The shipped image tokenizer is the merged one, and the backbone the one continued on its codes.
    merged = json.loads((paths.merged_tokenizer.parent / "background_codes.json").read_text())
    assert set(merged) == {"before", "after", "rounds"} and len(merged["rounds"]) == 2
    shipped = pipe.image_tokenizer.vqmodel.quantize.embedding.weight
    torch.testing.assert_close(shipped, SigLIPVQTokenizer.from_pretrained(paths.merged_tokenizer).vqmodel.quantize.embedding.weight)
    assert (paths.export("backbone_merged") / "model.safetensors").is_file()
    assert (paths.shards("backbone-understanding-merged") / ".done").is_file()
    # ... then on two sets of fresh, answer-heavy samples, seven weighted to the image-writing tasks (the seventh
    # with interleaved requests), and the seventh again with its interleaved requests cut into the pipeline's
    # rounds; that last continuation is what the pipeline ships.
    assert (paths.shards("backbone-answers") / ".done").is_file()
    assert (paths.shards("backbone-answers7") / ".done").is_file()
    assert all((paths.shards(f"backbone-generation{version}") / ".done").is_file() for version in GENERATION_SEEDS)
    assert (paths.shards("gen14-interleaved") / ".done").is_file()
    assert (paths.shards("backbone-interleaved-rounds") / ".done").is_file()
    assert all((paths.shards(f"backbone-generation{version}-rounds") / ".done").is_file()
               for version in GENERATION_SEEDS if version >= FIRST_ROUNDS_SET)
    # The decoders read a draft (continued from decoder_flow with the draft input), written by a draft network.
    assert pipe.decoder.sigvq.config.draft_channels == 8 and pipe.decoder.transformer.config.in_channels == 16
    assert pipe.decoder.sigvq.config.draft_layers == 4 and pipe.decoder.sigvq.has_draft_network
    assert pipe.decoder.config.draft_strength == 0.25
    shipped_backbone = pipe.backbone.state_dict()
    first, second = (LLaDA2MoeModelLM.from_pretrained(paths.export(stage)).state_dict()
                     for stage in AVERAGED_STAGES[BACKBONE_STAGE])
    for name, tensor in shipped_backbone.items():
        torch.testing.assert_close(tensor, (first[name] + second[name]) / 2, msg=name)


def test_shipped_text_and_edit_defaults_commit_one_uncertain_position_a_step():
    # Text answers, edits and interleaved rounds take block_length steps: a step commits every position above the
    # threshold, else only the most confident one, so two uncertain tokens of one word ("re" "d") never meet.
    from unimask.default_model import default_model_dir
    from unimask.shapes.build_default import GENERATION_DEFAULTS
    from unimask.unimodal.sampler_schedule import MaskedBlockScheduler

    common = GENERATION_DEFAULTS["common"]
    for task in ("understanding", "chat", "edit", "interleaved"):
        assert GENERATION_DEFAULTS[task]["num_inference_steps"] == common["block_length"], task
    scheduler = MaskedBlockScheduler(block_length=4, num_inference_steps=4, threshold=common["threshold"])
    masked = torch.ones(1, 4, dtype=torch.bool)
    uncertain = torch.tensor([[0.5, 0.45, 0.3, 0.2]])
    assert scheduler.select_transfer(uncertain, uncertain, masked, 0).tolist() == [[True, False, False, False]]
    sure = torch.tensor([[0.95, 0.45, 0.97, 0.2]])
    assert scheduler.select_transfer(sure, sure, masked, 0).tolist() == [[True, False, True, False]]
    shipped = default_model_dir() / "generation_defaults.json"
    if shipped.is_file():  # the shipped file is what the assemble stage writes
        assert json.loads(shipped.read_text()) == json.loads(json.dumps(GENERATION_DEFAULTS))
