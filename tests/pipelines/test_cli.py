"""The pipeline subcommands on the tiny checkpoint."""

from __future__ import annotations

import json

import numpy as np
import PIL.Image

from unimask.cli import main


def test_generate_writes_images(tiny_root, tmp_path, capsys):
    output = tmp_path / "out.png"
    code = main(["generate", "a red circle", "--model", str(tiny_root), "-o", str(output), "--num-images", "2", "--seed", "1"])
    assert code == 0
    files = [tmp_path / "out_0.png", tmp_path / "out_1.png"]
    assert all(PIL.Image.open(path).size == (32, 32) for path in files)
    assert str(files[0]) in capsys.readouterr().out


def test_understand_edit_interleave_chat(tiny_root, tmp_path, capsys):
    source = tmp_path / "source.png"
    PIL.Image.fromarray(np.full((40, 40, 3), 200, np.uint8)).save(source)
    assert main(["understand", "what is it?", "--image", str(source), "--model", str(tiny_root)]) == 0
    edited = tmp_path / "edited.png"
    args = ["edit", "make it red", "--image", str(source), "--image", str(source), "--model", str(tiny_root)]
    assert main(args + ["-o", str(edited), "--steps", "1"]) == 0
    assert edited.is_file()
    assert main(["interleave", "a story", "--model", str(tiny_root), "--output-dir", str(tmp_path / "il")]) == 0
    capsys.readouterr()
    assert main(["chat", "hello", "--model", str(tiny_root), "--json", "--option", "gen_length=16"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert isinstance(payload["text"], str) and payload["stats"]["nfe"]["text"] >= 1


def test_missing_model_and_bad_option_are_clear_errors(tmp_path, capsys, monkeypatch):
    from unimask import default_model

    monkeypatch.setattr(default_model, "DEFAULT_MODEL_DIR", tmp_path / "no_default_model")
    assert main(["chat", "hello"]) == 2
    err = capsys.readouterr().err
    assert "build_default" in err and "--model" in err
    assert main(["understand", "what?", "--image", str(tmp_path / "missing.png"), "--model", "x"]) == 2
    assert "--image" in capsys.readouterr().err
    assert main(["generate", "a cat", "--model", str(tmp_path)]) == 2
    assert "path=" in capsys.readouterr().err
