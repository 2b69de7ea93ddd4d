"""Peak memory while loading a backbone checkpoint, relative to its size on disk.

Generates a random official-layout checkpoint of about ``size_mb`` (fp32, sharded like real
checkpoints: about 200 MB per shard + index), then loads it in fresh subprocesses by three paths and
reports each one's peak RSS (and peak anonymous memory) above the process's just before loading:

* ``from_pretrained``: `LLaDA2MoeModelLM.from_pretrained` (meta-device init, then every stored
  tensor read with plain file reads straight into its parameter, experts into their slice of the
  stacked parameter: `checkpoint_layout.read_official_weights_into`);
* ``transformers_loader``: transformers' own ``PreTrainedModel.from_pretrained`` on the same class
  (mmap'd shards, experts stacked by its weight converters), the path used before;
* ``eager_state_dict``: build the model with random init, ``safetensors.torch.load_file`` every
  shard, stack the experts by hand, ``load_state_dict``.

Run: ``python -m unimask.benchmarks.load [--quick] [--size-mb N]``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

_LOAD_SCRIPT = r"""
import json, resource, sys, threading, time
import torch
from unimask.unimodal import LLaDA2MoeConfig, LLaDA2MoeModelLM

def status_mb(field):
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return 0.0

# ru_maxrss counts mmap'd file pages too; a sampler also tracks anonymous (private) memory.
peak_anon = [status_mb("RssAnon")]
done = threading.Event()
def sample():
    while not done.is_set():
        peak_anon[0] = max(peak_anon[0], status_mb("RssAnon"))
        time.sleep(0.002)
sampler = threading.Thread(target=sample, daemon=True)

path, mode = sys.argv[1], sys.argv[2]
before, anon_before = status_mb("VmRSS"), status_mb("RssAnon")
sampler.start()
start = time.perf_counter()
if mode == "from_pretrained":
    model = LLaDA2MoeModelLM.from_pretrained(path, dtype=torch.float32)
elif mode == "transformers_loader":
    from transformers import PreTrainedModel
    model = PreTrainedModel.from_pretrained.__func__(LLaDA2MoeModelLM, path, dtype=torch.float32)
else:
    from pathlib import Path
    from safetensors.torch import load_file
    config_dict = json.loads((Path(path) / "config.json").read_text())
    skip = ("architectures", "model_type", "torch_dtype")
    config = LLaDA2MoeConfig(**{k: v for k, v in config_dict.items() if k not in skip})
    model = LLaDA2MoeModelLM(config)
    state = {}
    for file in sorted(Path(path).glob("*.safetensors")):
        state.update(load_file(str(file)))
    for layer in range(config.num_hidden_layers):
        prefix = f"model.layers.{layer}.mlp.experts"
        if f"{prefix}.0.gate_proj.weight" not in state:
            continue
        experts = range(config.num_experts)
        gate_up = [
            torch.cat([state.pop(f"{prefix}.{e}.gate_proj.weight"), state.pop(f"{prefix}.{e}.up_proj.weight")])
            for e in experts
        ]
        state[f"{prefix}.gate_up_proj"] = torch.stack(gate_up)
        state[f"{prefix}.down_proj"] = torch.stack([state.pop(f"{prefix}.{e}.down_proj.weight") for e in experts])
    model.load_state_dict(state, strict=True)
seconds = time.perf_counter() - start
done.set()
sampler.join()
peak_anon[0] = max(peak_anon[0], status_mb("RssAnon"))
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
params = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
print(json.dumps({"rss_before_mb": before, "peak_rss_mb": peak, "anon_before_mb": anon_before,
                  "peak_anon_mb": peak_anon[0], "load_seconds": seconds, "param_mb": params}))
"""

_WRITE_SCRIPT = r"""
import sys
from unimask.unimodal.tiny_checkpoint import write_tiny_official_backbone
path, layers, hidden, experts, width, vocab, shards = sys.argv[1], *map(int, sys.argv[2:])
write_tiny_official_backbone(
    path, num_shards=shards, num_hidden_layers=layers, hidden_size=hidden, intermediate_size=4 * hidden,
    num_attention_heads=8, num_key_value_heads=2, num_experts=experts, num_experts_per_tok=4,
    n_group=4, topk_group=2, moe_intermediate_size=width, vocab_size=vocab,
)
"""


def _sizes_for(size_mb: float) -> tuple[int, int, int, int, int]:
    """(layers, hidden, experts, expert width, vocab) giving about ``size_mb`` of fp32 weights."""
    hidden, experts, width, vocab = 512, 32, 256, 8192
    per_moe_layer = 4 * (experts * 3 * hidden * width + 3 * hidden * width + 2 * hidden * hidden + experts * hidden)
    fixed = 4 * (2 * vocab * hidden + 3 * hidden * 4 * hidden)
    layers = max(2, round((size_mb * 2**20 - fixed) / per_moe_layer))
    return layers, hidden, experts, width, vocab


def _run_python(script: str, *args: str) -> str:
    completed = subprocess.run(
        [sys.executable, "-c", script, *args], check=True, capture_output=True, text=True
    )
    return completed.stdout.strip().splitlines()[-1] if completed.stdout.strip() else ""


def run(quick: bool = False, size_mb: float | None = None) -> dict:
    """Measure peak RSS of the two loading paths against the checkpoint's size on disk.

    Args:
        quick: default size 100 MB instead of 1000 MB.
        size_mb: target checkpoint size in MiB (overrides the default).

    Returns:
        ``{"disk_mb", "config", "from_pretrained": {...}, "transformers_loader": {...},
        "eager_state_dict": {...}, "goal_met"}`` where each
        path reports ``peak_rss_mb``, ``rss_before_mb``, ``load_seconds``, ``peak_over_disk`` =
        (peak RSS - RSS before) / disk size (goal for from_pretrained: <= 1.2; it includes mmap'd
        file pages) and ``peak_anon_over_disk``, the same for anonymous memory only (sampled
        every 2 ms).
        Also printed as JSON.
    """
    size_mb = size_mb if size_mb is not None else (100.0 if quick else 1000.0)
    layers, hidden, experts, width, vocab = _sizes_for(size_mb)
    report: dict = {
        "config": {"num_hidden_layers": layers, "hidden_size": hidden, "num_experts": experts,
                   "moe_intermediate_size": width, "vocab_size": vocab, "dtype": "float32"},
    }
    with tempfile.TemporaryDirectory() as directory:
        checkpoint = Path(directory) / "backbone"
        shards = max(2, round(size_mb / 200))
        report["config"]["num_shards"] = shards
        _run_python(_WRITE_SCRIPT, str(checkpoint), *map(str, (layers, hidden, experts, width, vocab, shards)))
        disk_mb = sum(file.stat().st_size for file in checkpoint.glob("*.safetensors")) / 2**20
        report["disk_mb"] = disk_mb
        for mode in ("from_pretrained", "transformers_loader", "eager_state_dict"):
            measured = json.loads(_run_python(_LOAD_SCRIPT, str(checkpoint), mode))
            measured["peak_over_disk"] = (measured["peak_rss_mb"] - measured["rss_before_mb"]) / disk_mb
            measured["peak_anon_over_disk"] = (measured["peak_anon_mb"] - measured["anon_before_mb"]) / disk_mb
            report[mode] = measured
    report["goal_met"] = report["from_pretrained"]["peak_over_disk"] <= 1.2
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--size-mb", type=float, default=None)
    arguments = parser.parse_args()
    run(quick=arguments.quick, size_mb=arguments.size_mb)
