"""Training faults not covered in tests/training: poisoned or damaged checkpoints and crash leftovers.

Already covered (see docs/robustness.md): SIGKILL mid-step then resume with the same losses
(tests/training/test_distributed.py), disk full while writing a checkpoint
(tests/training/test_trainer.py::test_failed_checkpoint_write_keeps_the_previous_one), corrupt shard
samples skipped and counted, NaN loss by ``nan_policy`` (tests/training/test_trainer.py).
"""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

import pytest
import yaml

from unimask.data.writer import write_shards
from unimask.training.checkpoint import CheckpointError, latest_checkpoint
from unimask.training.recipe import load_recipe
from unimask.training.stage_toy import toy_regression_samples
from unimask.training.trainer import Trainer

RECIPE = {
    "stage": "toy",
    "model": {"preset": "tiny"},
    "data": {"shards": [], "seed": 1, "split": "sample", "resampled": False, "shuffle_buffer": 8},
    "steps": 4,
    "micro_batch_size": 4,
    "optim": {"lr": 0.01},
    "schedule": {"kind": "constant"},
    "checkpoint": {"every": 2, "keep_last": 10},
    "logging": {"progress_bar": False},
    "export": False,
}


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("toy_shards")
    write_shards(toy_regression_samples(32, seed=0), folder, max_count=16)
    return folder


@pytest.fixture
def trained(tmp_path, shard_dir):
    """A finished 4-step toy run with checkpoints at steps 2 and 4: returns (recipe path, checkpoints root, losses)."""
    recipe = copy.deepcopy(RECIPE)
    recipe["out_dir"] = str(tmp_path / "run")
    recipe["data"]["shards"] = [str(shard_dir)]
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(recipe))
    result = Trainer(load_recipe(path)).fit()
    return path, tmp_path / "run" / "checkpoints", result.losses


def resume(path: Path, steps: int = 6):
    recipe = yaml.safe_load(path.read_text())
    recipe["steps"] = steps
    path.write_text(yaml.safe_dump(recipe))
    return Trainer(load_recipe(path), resume=True).fit()


def test_pickle_in_a_rank_file_is_refused_and_never_unpickled(trained, evil_pickle):
    path, root, _ = trained
    payload, marker = evil_pickle()
    (latest_checkpoint(root) / "rank-00000.pt").write_bytes(payload)
    with pytest.raises(CheckpointError, match="rank-00000.pt is refused"):
        resume(path)
    assert not marker.exists()


@pytest.mark.parametrize("damage", ["truncated rank file", "broken trainer.json", "truncated model state"])
def test_damaged_checkpoint_raises_checkpoint_error(trained, damage):
    path, root, _ = trained
    folder = latest_checkpoint(root)
    if damage == "truncated rank file":
        target = folder / "rank-00000.pt"
        target.write_bytes(target.read_bytes()[:100])
    elif damage == "broken trainer.json":
        (folder / "trainer.json").write_text("{")
    else:
        for state_file in folder.glob("*.distcp"):
            state_file.write_bytes(state_file.read_bytes()[:64])
    with pytest.raises(CheckpointError, match=str(folder.name)):
        resume(path)


def test_latest_pointing_at_a_missing_checkpoint_raises(trained):
    path, root, _ = trained
    shutil.rmtree(latest_checkpoint(root))
    with pytest.raises(CheckpointError, match="not a complete checkpoint"):
        resume(path)


def test_leftovers_of_a_crashed_save_are_removed_and_the_run_resumes(trained):
    path, root, losses = trained
    (root / ".tmp-step-00000006").mkdir()
    (root / ".tmp-step-00000006" / "half-written.distcp").write_bytes(b"\0" * 10)
    (root / "latest.tmp").write_text("step-00000006\n")
    result = resume(path, steps=6)
    assert result.step == 6 and len(result.losses) == 2
    assert not list(root.glob(".tmp-*")) and not (root / "latest.tmp").exists()
    assert latest_checkpoint(root).name == "step-00000006"
