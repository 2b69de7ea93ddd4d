"""Multi-process and crash tests: real subprocesses on localhost (127.0.0.1), gloo on CPU."""

import os
import signal
import socket
import subprocess
import sys

import numpy as np
import pytest

from unimask.training.recipe import load_recipe
from unimask.training.trainer import Trainer

pytestmark = pytest.mark.distributed


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _torchrun(nproc: int, recipe, *extra):
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}", "--master-addr=127.0.0.1",
               f"--master-port={_free_port()}", "-m", "unimask.train", "--config", str(recipe), *extra]
    done = subprocess.run(command, env=_env(), capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def test_two_gloo_processes_match_one_process_with_the_same_global_batch(make_recipe, read_losses, tmp_path):
    # split=sample: the global batch holds the same samples for any world size; FSDP2 over gloo.
    common = dict(steps=6, checkpoint={"every": 3}, export=True)
    single = Trainer(load_recipe(make_recipe("one", micro_batch_size=4, **common))).fit()
    two = make_recipe("two", micro_batch_size=2, **common)
    _torchrun(2, two)
    losses = read_losses(tmp_path / "two")
    two_losses = np.array([losses[s] for s in range(1, 7)])
    print("max relative loss difference, 2 gloo processes vs 1:", float(np.max(np.abs(two_losses / np.array(single.losses) - 1))))
    np.testing.assert_allclose(two_losses, single.losses, rtol=1e-5, atol=1e-7)
    assert sorted(p.name for p in (tmp_path / "two" / "checkpoints" / "step-00000006").glob("rank-*")) == ["rank-00000.pt", "rank-00001.pt"]
    assert (tmp_path / "two" / "export" / "model.safetensors").is_file()


def test_sigkill_mid_training_then_resume_gives_the_uninterrupted_losses(make_recipe, read_losses, tmp_path):
    common = dict(steps=12, checkpoint={"every": 3}, data={"split": "shard", "resampled": True, "num_workers": 2})
    reference = Trainer(load_recipe(make_recipe("reference", **common))).fit().losses
    killed = make_recipe("killed", **common)
    process = subprocess.Popen([sys.executable, "-m", "unimask.train", "--config", str(killed)], env=_env(),
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        for line in process.stdout:
            if line.startswith("step 8/"):
                process.send_signal(signal.SIGKILL)
                break
    finally:
        process.wait(timeout=120)
    assert process.returncode == -signal.SIGKILL
    before_kill = read_losses(tmp_path / "killed")
    resumed = Trainer(load_recipe(killed), resume=True)
    result = resumed.fit()
    assert 6 <= result.step - len(result.losses) <= 8  # resumed from the step-6 checkpoint (or a later one)
    merged = {**before_kill, **read_losses(tmp_path / "killed")}
    assert sorted(merged) == list(range(1, 13))
    # Same code and data order; the killed run ran in another process, so allow float noise of 1e-6.
    merged_losses = np.array([merged[s] for s in range(1, 13)])
    print("max relative loss difference, killed+resumed vs uninterrupted:", float(np.max(np.abs(merged_losses / np.array(reference) - 1))))
    np.testing.assert_allclose(merged_losses, reference, rtol=1e-6, atol=0)
