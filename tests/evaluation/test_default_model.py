"""`shapes-default` and no argument resolve to the default model directory, in the API and the CLI."""

from __future__ import annotations

import pytest

import unimask.default_model as default_model
from unimask.cli import main
from unimask.default_model import DEFAULT_MODEL_NAME, DefaultModelMissingError, resolve_model_path
from unimask.pipelines import UniPipeline


def test_shipped_location_is_inside_the_package():
    assert default_model.DEFAULT_MODEL_DIR.parent.name == "unimask"
    assert default_model.DEFAULT_MODEL_DIR.name == "default_model"


def test_shipped_weights_stay_within_the_size_budget():
    # The repository ships the default model's weights; issue 7 allows them 60 MB in all (safetensors only).
    if not default_model.DEFAULT_MODEL_DIR.is_dir():
        pytest.skip("no default model shipped in this checkout")
    files = list(default_model.DEFAULT_MODEL_DIR.rglob("*"))
    weights = [f for f in files if f.suffix == ".safetensors"]
    assert weights and not [f for f in files if f.suffix in (".bin", ".pt", ".pth", ".pkl")]
    assert sum(f.stat().st_size for f in weights) <= 60 * 2**20


@pytest.mark.parametrize("name", [None, DEFAULT_MODEL_NAME])
def test_from_pretrained_loads_the_default_model(tiny_as_default, name):
    pipe = UniPipeline.from_pretrained() if name is None else UniPipeline.from_pretrained(name)
    assert pipe._source == (tiny_as_default, "unimask")
    out = pipe.text_to_image("a red circle", output_type="tokens")
    assert out.images[0][0].shape == (2, 2)
    # Both decoder variants ship: the normal one loads from decoder-normal/.
    assert pipe.decoder_for("normal").config.decoder_variant == "normal"


def test_missing_default_model_says_where_and_how_to_build(no_default_model):
    for name in (None, DEFAULT_MODEL_NAME):
        with pytest.raises(DefaultModelMissingError) as caught:
            UniPipeline.from_pretrained(name)
        message = str(caught.value)
        assert str(no_default_model) in message
        assert "unimask.shapes.build_default" in message and "--model" in message
    assert isinstance(caught.value, ValueError)


def test_other_paths_pass_through_and_a_local_folder_named_like_the_model_wins(tmp_path, monkeypatch, no_default_model):
    assert resolve_model_path(tmp_path / "x") == tmp_path / "x"
    monkeypatch.chdir(tmp_path)
    (tmp_path / DEFAULT_MODEL_NAME).mkdir()
    assert resolve_model_path(DEFAULT_MODEL_NAME).resolve() == (tmp_path / DEFAULT_MODEL_NAME).resolve()


def test_cli_model_defaults_to_the_default_model(tiny_as_default, capsys):
    assert main(["chat", "hello", "--json"]) == 0
    assert '"text"' in capsys.readouterr().out


def test_cli_without_default_model_is_a_clear_error(no_default_model, capsys):
    assert main(["chat", "hello"]) == 2
    error = capsys.readouterr().err
    assert "not built yet" in error and str(no_default_model) in error
