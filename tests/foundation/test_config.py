"""Strict typed config loading: unknown keys and wrong types name the key and the file."""

import dataclasses
from typing import Literal, Optional

import pytest

from unimask.config import ConfigError, check_call_kwargs, from_mapping, load_typed_config
from unimask.presets import available_presets, load_preset


@dataclasses.dataclass
class Optim:
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.95)


@dataclasses.dataclass
class Recipe:
    stage: Literal["backbone", "decoder"]
    steps: int
    optim: Optim = dataclasses.field(default_factory=Optim)
    shards: list[str] = dataclasses.field(default_factory=list)
    note: Optional[str] = None

    def __post_init__(self):
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")


def test_loads_nested_yaml(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("stage: backbone\nsteps: 3\noptim: {lr: 2, betas: [0.8, 0.9]}\nshards: [a, b]\n")
    recipe = load_typed_config(path, Recipe)
    assert recipe.optim.lr == 2.0 and isinstance(recipe.optim.lr, float)
    assert recipe.optim.betas == (0.8, 0.9)
    assert recipe.shards == ["a", "b"] and recipe.note is None


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("stage: backbone\nsteps: 3\nstepz: 4\n", "unknown key(s) ['stepz']"),
        ("stage: backbone\nsteps: three\n", "r.yaml.steps: expected an integer"),
        ("stage: backbone\nsteps: true\n", "expected an integer"),
        ("stage: vae\nsteps: 3\n", "expected one of ['backbone', 'decoder']"),
        ("stage: backbone\n", "missing required key 'steps'"),
        ("stage: backbone\nsteps: 3\noptim: {lr: fast}\n", "r.yaml.optim.lr: expected a number"),
        ("stage: backbone\nsteps: 3\noptim: {betas: [0.9]}\n", "expected 2 items"),
        ("stage: backbone\nsteps: 0\n", "steps must be >= 1"),
        ("- a\n- b\n", "top level must be a mapping"),
        ("stage: [unclosed\n", "not valid yaml"),
    ],
)
def test_bad_configs_name_the_problem(tmp_path, text, fragment):
    path = tmp_path / "r.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_typed_config(path, Recipe)
    assert fragment in str(err.value)
    assert isinstance(err.value, ValueError)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_typed_config(tmp_path / "nope.yaml", Recipe)


def test_check_call_kwargs_refuses_unknown_names():
    def build(hidden_size=8, num_layers=2, **kwargs):
        return hidden_size

    check_call_kwargs(build, {"hidden_size": 4}, "x.yaml")
    with pytest.raises(ConfigError, match=r"x.yaml: unknown key\(s\) \['hiden_size'\]"):
        check_call_kwargs(build, {"hiden_size": 4}, "x.yaml")


def test_official_preset_has_published_values():
    assert "llada2-uni" in available_presets()
    preset = load_preset("llada2-uni")
    assert preset.token_layout == "official"
    backbone = preset.component("backbone")
    assert backbone["vocab_size"] == 173568 and backbone["image_token_offset"] == 157184
    assert backbone["num_experts"] == 256 and backbone["num_experts_per_tok"] == 8
    assert backbone["n_group"] == 8 and backbone["topk_group"] == 4
    assert backbone["routed_scaling_factor"] == 2.5 and backbone["first_k_dense_replace"] == 1


def test_every_shipped_preset_resolves_its_components():
    for name in available_presets():
        preset = load_preset(name)
        assert preset.component("backbone")["model_type"] == "llada2_moe"
        assert set(preset.component("decoder")) >= {"sigvq", "transformer", "vae"}


def test_unknown_component_preset_fails_early(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("name: x\nbackbone: no-such-backbone\n")
    with pytest.raises(ConfigError, match="unknown backbone preset 'no-such-backbone'; available"):
        load_preset(path)


def test_unknown_preset_lists_available():
    with pytest.raises(ConfigError, match="available presets"):
        load_preset("huge-model")


def test_from_mapping_rejects_non_dataclass():
    with pytest.raises(TypeError):
        from_mapping(dict, {})
