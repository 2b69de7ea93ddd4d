"""Every shipped recipe (configs/train/*.yaml) runs a few steps of its stage on tiny shards."""

from pathlib import Path

import numpy as np
import pytest

import unimask.configs
from unimask.config import ConfigError, from_mapping, read_config_file
from unimask.data.writer import write_shards
from unimask.training.recipe import TrainRecipe
from unimask.training.stages import STAGES, get_stage
from unimask.training.trainer import Trainer

RECIPES = Path(unimask.configs.__file__).parent / "train"


def _image_samples(count, size=32, codes_vocab=None, grid=(2, 2)):
    rng = np.random.default_rng(0)
    for index in range(count):
        sample = {"__key__": f"i{index}", "json": {"task": "caption", "caption": f"a picture number {index}"},
                  "images": [rng.integers(0, 255, (size, size, 3), dtype=np.uint8)]}
        if codes_vocab:
            sample["codes"] = rng.integers(0, codes_vocab, (1, *grid)).astype(np.int16)
        yield sample


def _sequence_samples(count):
    rng = np.random.default_rng(0)
    for index in range(count):
        length = int(rng.integers(20, 60))
        ids = rng.integers(2, 512, length).tolist()
        yield {"__key__": f"s{index}", "json": {"task": "text", "input_ids": ids, "response_start": 5}}


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("stage_shards")
    write_shards(_image_samples(8), root / "captions", max_count=4)
    write_shards(_image_samples(8, codes_vocab=64), root / "coded", max_count=4)
    write_shards(_sequence_samples(16), root / "backbone", max_count=8)
    return root


CASES = {
    "toy.yaml": ("toy", {}),
    "backbone-tiny.yaml": ("backbone", {}),
    "tokenizer-siglip-tiny.yaml": ("captions", {"image_size": 32}),
    "tokenizer-vq-tiny.yaml": ("captions", {"image_size": 32, "init_vision": None}),
    "decoder-flow-tiny.yaml": ("coded", {}),
    "decoder-distill-tiny.yaml": ("coded", {"teacher": None, "teacher_steps": 4}),
    "vae-tiny.yaml": ("captions", {"image_size": 32}),
}


def test_every_recipe_is_covered():
    assert sorted(p.name for p in RECIPES.glob("*.yaml")) == sorted(CASES)
    assert {read_config_file(RECIPES / name)["stage"] for name in CASES} == set(STAGES)


SLOW = {"vae-tiny.yaml", "decoder-distill-tiny.yaml"}  # 10-20 s each on 2 shared cores


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in sorted(CASES)])
def test_recipe_runs_a_few_steps_and_exports(name, shards, tmp_path):
    shard_folder, option_overrides = CASES[name]
    raw = read_config_file(RECIPES / name)
    if shard_folder == "toy":
        from unimask.training.stage_toy import toy_regression_samples

        write_shards(toy_regression_samples(16), tmp_path / "toy")
        shard_path = tmp_path / "toy"
    else:
        shard_path = shards / shard_folder
    raw.update(out_dir=str(tmp_path / "run"), steps=2, micro_batch_size=2, grad_accum_steps=1, export=True)
    raw["data"] = {**raw["data"], "shards": [str(shard_path)], "shuffle_buffer": 0}
    raw["data"]["token_budget"] = min(raw["data"].get("token_budget", 0), 64)
    raw["checkpoint"] = {"every": 0}
    raw["logging"] = {"progress_bar": False}
    raw["stage_options"] = {**raw.get("stage_options", {}), **option_overrides}
    if "block_schedule" in raw["stage_options"]:
        raw["stage_options"]["block_schedule"] = {"warmup_steps": 1, "stable_steps": 0, "decay_steps": 1, "final_block_length": 4}
    result = Trainer(from_mapping(TrainRecipe, raw, source=name)).fit()
    assert result.step == 2 and len(result.losses) == 2
    assert all(np.isfinite(result.losses))
    assert result.export_dir.is_dir() and any(result.export_dir.rglob("*.safetensors"))


def test_unknown_presets_and_options_are_named(tmp_path):
    base = {"out_dir": str(tmp_path), "data": {"shards": ["x"]}}
    with pytest.raises(ConfigError, match="unknown model preset 'huge'"):
        get_stage("backbone")(from_mapping(TrainRecipe, {**base, "stage": "backbone", "model": {"preset": "huge"}, "stage_options": {"mask_token_id": 1}}))
    with pytest.raises(ConfigError, match="mask_token_id"):
        get_stage("backbone")(from_mapping(TrainRecipe, {**base, "stage": "backbone"}))
    with pytest.raises(ConfigError, match="unknown model preset 'huge'"):
        get_stage("decoder_flow")(from_mapping(TrainRecipe, {**base, "stage": "decoder_flow", "model": {"preset": "huge"}}))
    with pytest.raises(ConfigError, match="stage_options: unknown key"):
        get_stage("vae")(from_mapping(TrainRecipe, {**base, "stage": "vae", "stage_options": {"klweight": 1}}))
