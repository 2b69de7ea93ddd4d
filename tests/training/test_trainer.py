"""In-process trainer tests on the toy stage (one process, CPU)."""

import errno
import json
import math

import numpy as np
import pytest
import torch
import webdataset as wds
from safetensors.torch import load_file

from unimask.config import ConfigError
from unimask.data.shard_format import encode_record
from unimask.data.writer import write_shards
from unimask.training import checkpoint as checkpoint_module
from unimask.training.checkpoint import CheckpointError, latest_checkpoint
from unimask.training.metrics import peak_flops_per_device
from unimask.training.recipe import load_recipe
from unimask.training.stage_toy import ToyRegressor, toy_regression_samples
from unimask.training.trainer import NonFiniteLossError, Trainer


def train(path, resume=False):
    return Trainer(load_recipe(path), resume=resume).fit()


def test_resume_from_a_checkpoint_repeats_the_same_losses(make_recipe, tmp_path):
    path = make_recipe("full", steps=10, checkpoint={"every": 4})
    full = train(path)
    assert sorted(p.name for p in (tmp_path / "full" / "checkpoints").glob("step-*")) == ["step-00000004", "step-00000008", "step-00000010"]
    (tmp_path / "full" / "checkpoints" / "latest").write_text("step-00000004\n")
    resumed = train(path, resume=True)
    assert resumed.losses == full.losses[4:]  # bitwise: same process, same data order, same RNG
    assert resumed.step == 10


def test_gradient_accumulation_and_activation_checkpointing_match_one_big_batch(make_recipe):
    reference = train(make_recipe("big", micro_batch_size=4)).losses
    accumulated = train(make_recipe("accum", micro_batch_size=2, grad_accum_steps=2)).losses
    checkpointed = train(make_recipe("ckpt", activation_checkpointing=True)).losses
    np.testing.assert_allclose(accumulated, reference, rtol=1e-5)
    np.testing.assert_allclose(checkpointed, reference, rtol=1e-6)


def test_metrics_and_export(make_recipe, tmp_path):
    result = train(make_recipe("exp", steps=3, export=True, schedule={"kind": "wsd"}))
    records = [json.loads(line) for line in (tmp_path / "exp" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3]
    assert records[0]["samples_per_s"] > 0 and records[0]["skipped_samples"] == 0
    # MFU needs a known peak: none on a CPU, a table entry on a known GPU (an H200 ran this test too).
    peak = peak_flops_per_device(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    assert records[0]["mfu"] is None if peak is None else 0 < records[0]["mfu"] < 1
    weights = load_file(str(result.export_dir / "model.safetensors"))
    model = ToyRegressor(**json.loads((result.export_dir / "config.json").read_text()))
    model.load_state_dict(weights)


def _corrupt_shard(path, good, bad):
    samples = list(toy_regression_samples(good, seed=11))
    with wds.TarWriter(str(path)) as sink:
        for index, sample in enumerate(samples):
            sink.write(encode_record(sample))
            if index < bad:
                sink.write({"__key__": f"broken{index}", "json": b"{truncated"})


def test_corrupt_samples_are_skipped_counted_and_training_finishes(make_recipe, tmp_path, capsys):
    shard = tmp_path / "corrupt" / "bad-000000.tar"
    shard.parent.mkdir()
    _corrupt_shard(shard, good=10, bad=2)
    result = train(make_recipe("corrupt", steps=2, micro_batch_size=5, data={"shards": [str(shard)], "shuffle_buffer": 0}, checkpoint={"every": 0}))
    assert result.step == 2 and result.skipped_samples == 2
    assert "skipped corrupt samples 2" in capsys.readouterr().out
    last = json.loads((tmp_path / "corrupt" / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["skipped_samples"] == 2


def _nan_shards(folder):
    samples = list(toy_regression_samples(16, seed=5))
    samples[6]["json"]["y"] = [float("nan")]
    return write_shards(samples, folder)


def test_nan_policy_skip_drops_the_update_and_stop_raises(make_recipe, tmp_path):
    shards = [str(p) for p in _nan_shards(tmp_path / "nan")]
    data = {"shards": shards, "shuffle_buffer": 0}
    result = train(make_recipe("skip", steps=4, data=data, nan_policy="skip", checkpoint={"every": 0}, export=True))
    assert result.nan_skips == 1 and math.isnan(result.losses[1]) and all(math.isfinite(v) for i, v in enumerate(result.losses) if i != 1)
    weights = load_file(str(result.export_dir / "model.safetensors"))
    assert all(torch.isfinite(w).all() for w in weights.values())
    with pytest.raises(NonFiniteLossError, match="step 2: non-finite loss"):
        train(make_recipe("stop", steps=4, data=data, nan_policy="stop"))
    with pytest.raises(NonFiniteLossError, match="max_nan_skips=1"):
        train(make_recipe("many", steps=4, micro_batch_size=16, data=data, nan_policy="skip", max_nan_skips=1))


def test_failed_checkpoint_write_keeps_the_previous_one(make_recipe, tmp_path, monkeypatch):
    path = make_recipe("fail", steps=8, checkpoint={"every": 4})
    real_write = checkpoint_module._write_rank_file

    def disk_full(directory, rank, payload):
        if payload["step"] == 8:
            real_write(directory, rank, payload)  # a half-written folder is left behind ...
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write(directory, rank, payload)

    monkeypatch.setattr(checkpoint_module, "_write_rank_file", disk_full)
    with pytest.raises(CheckpointError, match="No space left"):
        train(path)
    root = tmp_path / "fail" / "checkpoints"
    assert latest_checkpoint(root).name == "step-00000004"
    assert not list(root.glob(".tmp-*"))
    monkeypatch.setattr(checkpoint_module, "_write_rank_file", real_write)
    resumed = train(path, resume=True)  # ... and the previous checkpoint still loads
    assert resumed.step == 8 and len(resumed.losses) == 4


@pytest.mark.parametrize(
    "overrides, error, match",
    [
        ({"stage": "nonexistent"}, ConfigError, "unknown stage 'nonexistent'; available stages"),
        ({"model": {"preset": "huge"}}, ConfigError, "unknown model preset 'huge'"),
        ({"data": {"shards": ["/no/such/shard-000000.tar"]}}, ValueError, "shard path '/no/such/shard-000000.tar' does not exist"),
        ({"optimizer": {"lr": 1}}, ConfigError, "unknown key"),
        ({"steps": "ten"}, ConfigError, "steps"),
    ],
)
def test_bad_recipes_fail_before_training(make_recipe, tmp_path, overrides, error, match):
    path = make_recipe("bad", **overrides)
    with pytest.raises(error, match=match):
        Trainer(load_recipe(path))
    assert not (tmp_path / "bad").exists()


def test_empty_dataset_and_checkpoint_conflicts_fail_before_training(make_recipe, tmp_path):
    empty = tmp_path / "empty-000000.tar"
    wds.TarWriter(str(empty)).close()
    with pytest.raises(ValueError, match="dataset is empty"):
        Trainer(load_recipe(make_recipe("empty", data={"shards": [str(empty)]})))
    path = make_recipe("twice", steps=2)
    with pytest.raises(ValueError, match="holds no checkpoint"):
        Trainer(load_recipe(path), resume=True)
    train(path)
    with pytest.raises(ValueError, match="pass --resume"):
        Trainer(load_recipe(path))


def test_cli_reports_errors_with_exit_code(make_recipe, capsys):
    from unimask.cli import main

    assert main(["train", "--config", str(make_recipe("cli", stage="nonexistent"))]) == 1
    assert "unknown stage 'nonexistent'" in capsys.readouterr().err
    assert main(["train", "--config", str(make_recipe("cli_ok", steps=2))]) == 0
