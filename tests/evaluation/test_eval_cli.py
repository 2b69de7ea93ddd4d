"""``unimask eval`` on a tiny random pipeline writes JSON with every required key."""

from __future__ import annotations

import json

import pytest

from unimask.cli import main
from unimask.shapes.evaluate import RESULT_KEYS, evaluate, sample_prompt
from unimask.shapes.language import EDIT_KINDS, QUESTION_KINDS
from unimask.shapes.tasks import TASKS

SPLITS = {"in_distribution", "held_out"}


def test_eval_writes_every_required_key(tiny_default_root, tmp_path, capsys):
    output = tmp_path / "results" / "r.json"
    args = ["eval", "--model", str(tiny_default_root), "--num-per-type", "1", "--output", str(output),
            "--normal-decoder-steps", "2", "--no-progress", "--records", "--batch-size", "5"]
    assert main(args) == 0
    results = json.loads(output.read_text())
    assert json.loads(capsys.readouterr().out) == results
    assert set(RESULT_KEYS) <= set(results) and results["tasks"] == list(TASKS)

    understanding = results["understanding"]
    assert set(understanding) == SPLITS
    for split in SPLITS:
        assert set(understanding[split]["by_type"]) == set(QUESTION_KINDS)
        assert understanding[split]["count"] == len(QUESTION_KINDS)
        assert 0.0 <= understanding[split]["accuracy"] <= 1.0
        editing = results["editing"][split]
        assert set(editing["by_type"]) == set(EDIT_KINDS) | {"multi_reference"}
        assert {"accuracy", "edit_applied", "rest_preserved", "count"} <= set(editing)
        assert set(results["interleaved"][split]) == {"all_steps", "step_accuracy", "count"}
    for decoder in ("turbo", "normal"):
        for split in SPLITS:
            assert set(results["text_to_image"][decoder][split]) == {"strict", "soft", "background", "extra_objects", "count"}
    for split in SPLITS:
        headline = {"understanding_accuracy", "text_to_image_turbo_strict", "text_to_image_normal_soft",
                    "editing_accuracy", "multi_reference_accuracy", "interleaved_all_steps"}
        assert headline <= set(results["summary"][split])

    sampling = results["sampling"]
    runs = {"understanding", "text_to_image_turbo", "text_to_image_normal", "editing",
            "multi_reference_editing", "interleaved"}
    assert runs | {"total_time_s"} == set(sampling)
    assert sampling["understanding"]["samples"] == 2 * len(QUESTION_KINDS)
    assert sampling["understanding"]["batches"] == 3  # 14 samples in batches of 5
    decoder_nfe = {run: sampling[f"text_to_image_{run}"]["nfe_by_stage"]["decoder"] for run in ("turbo", "normal")}
    assert decoder_nfe["normal"] > decoder_nfe["turbo"]
    assert all(sampling[run]["nfe"] > 0 and sampling[run]["time_s"] > 0 for run in runs)
    assert len(results["records"]) == sum(sampling[run]["samples"] for run in runs)


def test_eval_task_subset_default_model_and_sampler_passthrough(tiny_as_default, tmp_path, capsys):
    def run(*extra):
        output = tmp_path / "r.json"
        assert main(["eval", "--tasks", "understanding", "--num-per-type", "1", "--no-progress",
                     "--output", str(output), *extra]) == 0
        capsys.readouterr()
        return json.loads(output.read_text())

    default = run()
    assert default["model"] == "shapes-default"
    assert "text_to_image" not in default and "editing" not in default and "understanding" in default
    one_step = run("--steps", "1", "--option", "threshold=1.0")
    assert one_step["options"] == {"steps": 1, "threshold": 1.0}
    # Two steps per block by default (tiny generation defaults) against one: fewer forward passes.
    assert one_step["sampling"]["understanding"]["nfe"] < default["sampling"]["understanding"]["nfe"]


def test_eval_results_do_not_depend_on_batch_size(tiny_pipe):
    kwargs = {"tasks": ["understanding", "editing"], "num_per_type": 1, "seed": 5, "progress": False,
              "include_records": True}
    together = evaluate(tiny_pipe, batch_size=64, **kwargs)["records"]
    apart = evaluate(tiny_pipe, batch_size=3, **kwargs)["records"]
    assert [r["predicted"] for r in together] == [r["predicted"] for r in apart]


def test_a_sample_is_generated_alike_whatever_else_the_suite_holds(tiny_pipe, monkeypatch):
    """Sampling seeds follow the sample (`sample_seed`), not its place in the suite: text-to-image alone at one
    per type gets the seeds the first draws of a larger, mixed suite get."""
    import unimask.shapes.evaluate as evaluation

    seeds_by_prompt: list[tuple[str, int]] = []
    call_pipeline = evaluation._call_pipeline

    def recording(pipe, task, batch, generator, options):
        seeds_by_prompt.extend((sample_prompt(s), g.initial_seed()) for s, g in zip(batch, generator))
        return call_pipeline(pipe, task, batch, generator, options)

    monkeypatch.setattr(evaluation, "_call_pipeline", recording)
    kwargs = {"decoders": ["codes"], "seed": 4, "progress": False, "include_records": True}
    alone = evaluate(tiny_pipe, tasks=["text_to_image"], num_per_type=1, **kwargs)["records"]
    alone_seeds = list(seeds_by_prompt)
    seeds_by_prompt.clear()
    mixed = evaluate(tiny_pipe, tasks=["understanding", "text_to_image"], num_per_type=2, **kwargs)["records"]
    assert [r["draw"] for r in alone] == [0, 0] and len(alone_seeds) == 2
    assert all(pair in seeds_by_prompt for pair in alone_seeds)
    first_draws = [r for r in mixed if r["task"] == "text_to_image" and r["draw"] == 0]
    assert [r["predicted"] for r in alone] == [r["predicted"] for r in first_draws]
    assert len({seed for _, seed in seeds_by_prompt}) == len(seeds_by_prompt)


def test_sample_seed_names_its_sample():
    from unimask.shapes.evaluate import build_evaluation_suite, sample_seed

    suite = build_evaluation_suite(seed=0, num_per_type=2, tasks=["editing"])
    seeds = [sample_seed(0, sample) for sample in suite]
    assert len(set(seeds)) == len(seeds) and all(0 <= value < 2**63 for value in seeds)
    assert seeds == [sample_seed(0, sample) for sample in build_evaluation_suite(0, 2, ["editing"])]
    assert sample_seed(1, suite[0]) != seeds[0]
    with pytest.raises(ValueError, match="draw"):
        sample_seed(0, {key: value for key, value in suite[0].items() if key != "draw"})


def test_codes_reader_scores_text_to_image_without_the_decoder(tiny_pipe):
    results = evaluate(tiny_pipe, tasks=["text_to_image"], decoders=["codes", "turbo"], num_per_type=1, seed=2,
                       progress=False)
    assert set(results["text_to_image"]) == {"codes", "turbo"}
    assert set(results["text_to_image"]["codes"]["held_out"]) == {"strict", "soft", "background", "extra_objects",
                                                                  "count"}
    assert "decoder" not in results["sampling"]["text_to_image_codes"]["nfe_by_stage"]
    assert results["sampling"]["text_to_image_turbo"]["nfe_by_stage"]["decoder"] > 0


@pytest.mark.parametrize(
    ("args", "message"),
    [(["--num-per-type", "0"], "--num-per-type"), (["--option", "nonsense=1"], "nonsense"),
     (["--normal-decoder-steps", "1"], "normal_decoder_steps")],
)
def test_eval_bad_arguments_are_clear_errors(tiny_default_root, tmp_path, capsys, args, message):
    output = str(tmp_path / "r.json")
    code = main(["eval", "--model", str(tiny_default_root), "--no-progress", "--output", output, *args])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "r.json").exists()


def test_eval_without_default_model_says_how_to_build(no_default_model, tmp_path, capsys):
    assert main(["eval", "--output", str(tmp_path / "r.json")]) == 2
    assert "not built yet" in capsys.readouterr().err
