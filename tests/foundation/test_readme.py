"""The README's Python example and command lines run as written (on a tiny official-layout checkpoint)."""

import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
MODEL_PLACEHOLDER = "path/to/LLaDA2.0-Uni"


def _blocks(language: str, marker: str | None = None) -> list[str]:
    pattern = (re.escape(marker) + r"\s*\n" if marker else "") + r"```" + language + r"\n(.*?)```"
    return re.findall(pattern, README, flags=re.S)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    from unimask.pipelines.tiny_uni_checkpoint import write_tiny_official_checkpoint

    return write_tiny_official_checkpoint(tmp_path_factory.mktemp("official"))


def test_python_example_runs(tiny_model, tmp_path, monkeypatch):
    (example,) = _blocks("python", "<!-- readme-example -->")
    assert MODEL_PLACEHOLDER in example
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(example.replace(MODEL_PLACEHOLDER, str(tiny_model)), "README.md", "exec"), namespace)
    assert namespace["t2i"].images[0][0].shape[-1] == 3
    assert len(namespace["t2i"].images) == 4
    assert isinstance(namespace["answer"], str)
    assert (tmp_path / "my-model" / "model_index.json").is_file()


def test_inference_command_lines_run(tiny_model, tmp_path, monkeypatch):
    """Run in-process through the console script's `main` (a subprocess per line would re-import torch)."""
    from unimask.cli import main

    monkeypatch.chdir(tmp_path)
    lines = [
        line for block in _blocks("bash") for line in block.splitlines()
        if line.startswith("unimask ") and MODEL_PLACEHOLDER in line
    ]
    assert {line.split()[1] for line in lines} >= {"generate", "understand", "edit", "chat"}
    for line in lines:
        args = shlex.split(line.replace(MODEL_PLACEHOLDER, str(tiny_model)))[1:]
        assert main(args) == 0, line
    assert (tmp_path / "square.png").is_file() and (tmp_path / "blue.png").is_file()


def test_every_documented_subcommand_and_recipe_exists():
    from unimask.cli import SUBCOMMANDS

    commands = [line for block in _blocks("bash") for line in block.splitlines() if line.startswith("unimask ")]
    assert commands
    for name in (line.split()[1] for line in commands):
        assert name in SUBCOMMANDS, name
    for recipe in re.findall(r"--config (configs/\S+\.yaml)", README):
        assert (ROOT / recipe).is_file(), recipe
