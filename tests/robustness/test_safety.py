"""Safety: no code path unpickles checkpoint or shard data, and no path taken from a shard, a jsonl or
a config writes outside the output directory. (The web demo server does not exist yet: its bind
address and upload limit are listed as pending in docs/robustness.md.)"""

from __future__ import annotations

import ast
import io
import itertools
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
# Every folder that installs as part of the `unimask` package (pyproject.toml package-dir).
PACKAGE_FOLDERS = ("unimask", "unimodal", "tokenizers", "decoders", "pipelines", "configs", "benchmarks")


def package_sources() -> list[Path]:
    return sorted(path for folder in PACKAGE_FOLDERS for path in (REPO / folder).rglob("*.py"))


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return ""


def _keyword(call: ast.Call, name: str):
    for keyword in call.keywords:
        if keyword.arg == name:
            return keyword.value
    return None


def _is_true(node) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def unsafe_calls(source: str) -> list[str]:
    """Calls that could run code from data: pickle/marshal/dill loads, ``torch.load`` without
    ``weights_only=True``, ``np.load(allow_pickle=True)``, builtin ``eval``/``exec``, ``yaml.load``
    without a safe loader, ``trust_remote_code=True``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module in ("pickle", "marshal", "dill", "cloudpickle"):
            found.append(f"line {node.lineno}: from {node.module} import ...")  # would hide a bare load() call
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func)
        line = f"line {node.lineno}: {name}"
        if name in ("pickle.load", "pickle.loads", "marshal.load", "marshal.loads", "dill.load", "dill.loads",
                    "joblib.load", "cloudpickle.load", "cloudpickle.loads", "pickle.Unpickler"):
            found.append(line)
        elif name.split(".")[-2:] == ["torch", "load"]:
            if not _is_true(_keyword(node, "weights_only")):
                found.append(f"{line} without weights_only=True")
        elif name in ("np.load", "numpy.load") and _is_true(_keyword(node, "allow_pickle")):
            found.append(f"{line} with allow_pickle=True")
        elif name in ("eval", "exec", "builtins.eval", "builtins.exec"):
            found.append(line)
        elif name == "yaml.load" and "Safe" not in ast.unparse(_keyword(node, "Loader") or ast.Constant(None)):
            found.append(f"{line} without a safe Loader")
        if _is_true(_keyword(node, "trust_remote_code")):
            found.append(f"{line} with trust_remote_code=True")
    return found


def test_the_scanner_catches_every_unsafe_form():
    bad = """
import pickle, torch, numpy as np, yaml
from pickle import loads
pickle.loads(b)
torch.load(path)
torch.load(path, weights_only=False)
np.load(f, allow_pickle=True)
eval(text)
exec(text)
yaml.load(text)
AutoModel.from_pretrained(p, trust_remote_code=True)
"""
    good = """
import torch, numpy as np, yaml
torch.load(path, map_location="cpu", weights_only=True)
np.load(f, allow_pickle=False)
np.load(f)
model.eval()
yaml.safe_load(text)
yaml.load(text, Loader=yaml.SafeLoader)
"""
    assert len(unsafe_calls(bad)) == 9
    assert unsafe_calls(good) == []


def test_no_package_code_unpickles_or_evaluates_data():
    sources = package_sources()
    assert len(sources) > 50  # the scan really covers the package
    problems = {str(path.relative_to(REPO)): found for path in sources if (found := unsafe_calls(path.read_text()))}
    assert problems == {}


def _tar(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 10, 10)).save(buffer, "PNG")
    return buffer.getvalue()


def test_shard_pickle_members_and_pickled_codes_are_never_unpickled(tmp_path, evil_pickle):
    from unimask.data.loader import CORRUPT, ShardSampleStream, iterate_samples

    payload, marker = evil_pickle()
    object_codes = io.BytesIO()
    np.save(object_codes, np.array([{"x": 1}], dtype=object), allow_pickle=True)
    meta = json.dumps({"task": "caption", "caption": "red"}).encode()
    shard = _tar(tmp_path / "evil-000000.tar", {
        "a.json": meta, "a.pyd": payload, "a.pickle": payload, "a.pth": payload,
        "b.json": meta, "b.0.png": _png(), "b.codes.npy": object_codes.getvalue(),
        "c.json": meta, "c.0.png": _png(),
    })
    items = list(itertools.islice(iterate_samples(ShardSampleStream([str(shard)], resampled=False)), 3))  # one epoch
    by_key = {item["__key__"]: item for item in items}
    assert not by_key["a"].get(CORRUPT) and set(by_key["a"]) >= {"json", "images"}  # extra fields ignored
    assert by_key["b"].get(CORRUPT)  # an object array needs pickle: refused, sample skipped
    assert not by_key["c"].get(CORRUPT)
    assert not marker.exists()


@pytest.mark.parametrize("key", ["../../evil", "/tmp/evil_abs", "sub/evil", "..", "."])
def test_jsonl_keys_that_are_paths_are_refused_by_data_write(tmp_path, key, capsys):
    from unimask.cli import main

    jsonl = tmp_path / "in.jsonl"
    jsonl.write_text(json.dumps({"task": "caption", "caption": "red", "key": key}) + "\n")
    out = tmp_path / "deep" / "out"
    before = set(tmp_path.rglob("*"))
    assert main(["data", "write", "--jsonl", str(jsonl), "--out", str(out)]) == 1
    assert "sample key" in capsys.readouterr().err
    created = set(tmp_path.rglob("*")) - before
    assert all(out in path.parents or path == out or path in out.parents for path in created)
    assert not Path("/tmp/evil_abs").exists() and not list(tmp_path.glob("**/evil*"))


@pytest.mark.parametrize("prefix", ["../evil", "/tmp/evil", "a/b"])
def test_shard_prefixes_that_are_paths_are_refused(tmp_path, prefix):
    from unimask.data.writer import write_shards

    with pytest.raises(ValueError, match="prefix"):
        write_shards([{"__key__": "k", "json": {"task": "caption"}}], tmp_path / "out", prefix=prefix)
    assert not list(tmp_path.glob("**/evil*")) and not Path("/tmp/evil-000000.tar").exists()


def test_tokenize_never_writes_members_named_like_paths_to_disk(tmp_path):
    from unimask.data.tokenize_shards import add_image_codes

    shards = tmp_path / "a" / "b"
    shards.mkdir(parents=True)
    meta = json.dumps({"task": "caption"}).encode()
    shard = _tar(shards / "s-000000.tar", {
        "../../evil.json": meta, "../../evil.0.png": _png(),
        "/tmp/unimask_abs_evil.json": meta,
        "ok.json": meta, "ok.0.png": _png(),
    })
    before = set(tmp_path.rglob("*"))
    add_image_codes([shard], lambda images: [np.zeros((2, 2), np.int64) for _ in images])
    created = set(tmp_path.rglob("*")) - before
    assert {path.name for path in created} == {"s-000000.tar.codes-done"}
    assert not (tmp_path / "evil.json").exists() and not (tmp_path / "evil.0.png").exists()
    assert not Path("/tmp/unimask_abs_evil.json").exists()


def test_trainer_export_writes_only_inside_the_out_dir(tmp_path):
    import yaml

    from unimask.data.writer import write_shards
    from unimask.training.recipe import load_recipe
    from unimask.training.stage_toy import toy_regression_samples
    from unimask.training.trainer import Trainer

    write_shards(toy_regression_samples(16, seed=0), tmp_path / "shards")
    out_dir = tmp_path / "runs" / "run"
    recipe = {
        "stage": "toy", "out_dir": str(out_dir), "model": {"preset": "tiny"}, "steps": 2, "micro_batch_size": 4,
        "data": {"shards": [str(tmp_path / "shards")], "resampled": False},
        "checkpoint": {"every": 2}, "logging": {"progress_bar": False}, "export": True,
    }
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(recipe))
    before = set(tmp_path.rglob("*"))
    result = Trainer(load_recipe(tmp_path / "run.yaml")).fit()
    created = set(tmp_path.rglob("*")) - before
    assert result.export_dir is not None and out_dir in result.export_dir.parents
    assert created and all(path == out_dir or out_dir in path.parents or path in out_dir.parents for path in created)
