import json
import tarfile

import pytest
from PIL import Image

from unimask.data.writer import resolve_generator, samples_from_image_folder, samples_from_jsonl, write_shards
from unimask.training.stage_toy import toy_regression_samples


def _members(path):
    with tarfile.open(path) as archive:
        return archive.getnames()


def test_shards_respect_count_limit_and_are_complete(tmp_path):
    paths = write_shards(toy_regression_samples(25, seed=0), tmp_path, prefix="toy", max_count=10)
    assert [p.name for p in paths] == ["toy-000000.tar", "toy-000001.tar", "toy-000002.tar"]
    assert [len(_members(p)) for p in paths] == [10, 10, 5]  # one json file per sample
    assert not list(tmp_path.glob("*.tmp"))


def test_size_limit_starts_new_shards(tmp_path):
    paths = write_shards(toy_regression_samples(20, seed=0), tmp_path, max_count=1000, max_size=500)
    assert len(paths) > 3


def test_empty_source_and_duplicate_keys_raise(tmp_path):
    with pytest.raises(ValueError, match="empty"):
        write_shards([], tmp_path)
    sample = {"__key__": "a", "json": {"task": "t"}}
    with pytest.raises(ValueError, match="duplicate sample key 'a'"):
        write_shards([sample, sample], tmp_path / "dup")


def test_image_folder_and_jsonl_sources(tmp_path):
    Image.new("RGB", (8, 8), (255, 0, 0)).save(tmp_path / "red.png")
    (tmp_path / "red.txt").write_text("a red square\n")
    Image.new("RGB", (8, 8)).save(tmp_path / "nocaption.png")
    folder = list(samples_from_image_folder(tmp_path))
    assert len(folder) == 1 and folder[0]["json"]["caption"] == "a red square"

    lines = [{"task": "edit", "instruction": "x", "images": ["red.png", "red.png"], "key": "e1"}, {"task": "text", "text": "hi"}]
    (tmp_path / "tasks.jsonl").write_text("\n".join(json.dumps(line) for line in lines))
    samples = list(samples_from_jsonl(tmp_path / "tasks.jsonl"))
    assert samples[0]["__key__"] == "e1" and len(samples[0]["images"]) == 2 and samples[0]["json"]["n_images"] == 2
    assert samples[1]["json"] == {"task": "text", "text": "hi", "n_images": 0}
    (tmp_path / "bad.jsonl").write_text('{"task": "edit", "images": ["missing.png"]}\n')
    with pytest.raises(ValueError, match="bad.jsonl:1: image .*missing.png"):
        list(samples_from_jsonl(tmp_path / "bad.jsonl"))


def test_unknown_generator_names_the_choices():
    with pytest.raises(ValueError, match="unknown generator 'nope'.*toy"):
        resolve_generator("nope")


def test_data_cli_write_from_generator(tmp_path, capsys):
    from unimask.cli import main

    assert main(["data", "write", "--generator", "toy", "--count", "7", "--max-count", "4", "--out", str(tmp_path)]) == 0
    assert len(json.loads(capsys.readouterr().out)["shards"]) == 2
    assert main(["data", "write", "--jsonl", str(tmp_path / "none.jsonl"), "--out", str(tmp_path)]) == 1
