"""The repository installs as one package, `unimask`, without shadowing Hugging Face `tokenizers`."""

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
COMPONENT_FOLDERS = ["unimodal", "tokenizers", "decoders", "pipelines", "configs", "benchmarks"]
SHADOW_CHECK = "import tokenizers, transformers; print(tokenizers.__file__)"


def _run(args, cwd, env=None):
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_tokenizers_folder_is_not_a_regular_package():
    assert (ROOT / "tokenizers").is_dir()
    assert not (ROOT / "tokenizers" / "__init__.py").exists()


def test_hf_tokenizers_resolves_from_repository_root():
    result = _run([sys.executable, "-c", SHADOW_CHECK], cwd=ROOT)
    assert result.returncode == 0, result.stderr
    path = Path(result.stdout.strip())
    assert path.name == "__init__.py"
    assert ROOT / "tokenizers" not in path.parents, path


def test_unimask_subpackages_import_with_prefix():
    code = (
        "import unimask.unimodal, unimask.decoders, unimask.pipelines, unimask.configs, "
        "unimask.tokenizers.token_layout as t; print(t.__file__)"
    )
    result = _run([sys.executable, "-c", code], cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert Path(result.stdout.strip()).parent.name == "tokenizers"


def test_every_source_folder_is_a_listed_package():
    """A folder with Python files that pyproject does not list would be missing from wheels."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    package_dir = config["package-dir"]
    for package in listed:
        top = package.split(".")[:2]
        assert ".".join(top) in package_dir or package.startswith("unimask."), package
    folders = {"unimask": ROOT / "unimask"} | {f"unimask.{f}": ROOT / f for f in COMPONENT_FOLDERS}
    for name, folder in folders.items():
        for sub in folder.rglob("*.py"):
            if "__pycache__" in sub.parts:
                continue
            rel = sub.parent.relative_to(folder)
            package = ".".join([name, *rel.parts]) if rel.parts else name
            assert package in listed, f"{sub} belongs to package {package}, not listed in pyproject.toml"


@pytest.mark.slow
def test_plain_install_does_not_shadow_hf_tokenizers(tmp_path):
    """`pip install .` (a real wheel) keeps `tokenizers` resolving to Hugging Face's package."""
    # Build from a copy: an in-tree build would leave build/ and *.egg-info in the checkout.
    source = tmp_path / "src"
    shutil.copytree(
        ROOT, source,
        ignore=shutil.ignore_patterns(".venv", ".git", "build", "*.egg-info", "__pycache__", "runs", "*.safetensors"),
    )
    target = tmp_path / "site"
    build = _run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
         "--target", str(target), str(source)],
        cwd=tmp_path,
    )
    assert build.returncode == 0, build.stdout + build.stderr
    assert (target / "unimask" / "tokenizers" / "token_layout.py").is_file()
    assert not (target / "tokenizers").exists()
    env = dict(os.environ, PYTHONPATH=str(target))
    from_root = _run([sys.executable, "-c", SHADOW_CHECK], cwd=ROOT, env=env)
    assert from_root.returncode == 0, from_root.stderr
    assert ROOT / "tokenizers" not in Path(from_root.stdout.strip()).parents
    # Outside the checkout the installed copy is the one imported.
    outside = _run(
        [sys.executable, "-c", "import unimask.tokenizers.token_layout as t; print(t.__file__)"],
        cwd=tmp_path, env=env,
    )
    assert outside.returncode == 0, outside.stderr
    assert Path(outside.stdout.strip()).is_relative_to(target)
