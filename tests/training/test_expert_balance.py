"""Auxiliary-loss-free expert balancing: counting, the bias update, the trainer and 2 gloo ranks."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from unimask.config import ConfigError, from_mapping
from unimask.data.writer import write_shards
from unimask.training.expert_balance import ExpertBiasBalancer
from unimask.training.recipe import TrainRecipe, load_recipe
from unimask.training.stages import get_stage
from unimask.training.trainer import Trainer
from unimask.unimodal import LLaDA2MoeConfig, LLaDA2MoeModelLM
from unimask.unimodal.moe_routing import expert_load
from unimask.unimodal.tiny_checkpoint import tiny_backbone_config_dict

MODEL = {"preset": "tiny", "hidden_size": 32, "intermediate_size": 64, "moe_intermediate_size": 16, "num_hidden_layers": 3,
         "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 16, "rotary_dim": 8, "num_experts": 4,
         "num_experts_per_tok": 2, "n_group": 1, "topk_group": 1, "vocab_size": 128, "image_token_offset": 96,
         "max_position_embeddings": 64, "first_k_dense_replace": 1}


@pytest.fixture
def model():
    torch.manual_seed(0)
    config = tiny_backbone_config_dict()
    kwargs = {k: v for k, v in config.items() if k not in ("architectures", "model_type", "torch_dtype")}
    return LLaDA2MoeModelLM(LLaDA2MoeConfig(**kwargs))


def _gate_loads(model, ids):
    loads = []
    hooks = [block.register_forward_hook(lambda m, a, out: loads.append(out[1].expert_load.clone())) for block in
             (b for b in model.modules() if type(b).__name__ == "LLaDA2MoeSparseMoeBlock")]
    with torch.no_grad():
        model(ids)
    for hook in hooks:
        hook.remove()
    return loads


def test_balancer_sums_training_forwards_steps_every_layer_and_resets(model):
    balancer = ExpertBiasBalancer(model, update_rate=0.01)
    first, second = torch.randint(2, 500, (2, 24)), torch.randint(2, 500, (3, 16))
    expected = [a + b for a, b in zip(_gate_loads(model.eval(), first), _gate_loads(model, second))]
    model.train()
    model(first)
    model(second)
    model.eval()
    model(torch.randint(2, 500, (1, 40)))  # an evaluation forward is not counted
    metrics = balancer.step()
    biases = [block.gate.expert_bias for block in balancer.blocks]
    for bias, load in zip(biases, expected):
        assert torch.equal(bias, 0.01 * torch.sign(load.mean() - load))
    assert metrics["expert_bias_absmax"] == pytest.approx(0.01)
    assert balancer.step() == metrics  # nothing counted since: no further update
    assert all(torch.equal(bias, 0.01 * torch.sign(load.mean() - load)) for bias, load in zip(biases, expected))
    balancer.remove()
    model.train()
    model(first)
    assert all(load is None for load in balancer.loads)


def test_backbone_stage_drops_the_loads_of_a_step_it_did_not_apply(tmp_path):
    # The trainer calls on_step before every step's forwards and after_optimizer_step only when the
    # step was applied; a step skipped for a non-finite loss must not leak its loads into the next.
    recipe = from_mapping(TrainRecipe, {"stage": "backbone", "out_dir": str(tmp_path), "data": {"shards": ["x"]}, "model": MODEL,
                                        "stage_options": {"mask_token_id": 1, "expert_bias_update_rate": 0.01}})
    stage = get_stage("backbone")(recipe)
    model = stage.build_model().train()
    biases = [block.gate.expert_bias for block in stage.balancer.blocks]
    stage.on_step(0)
    model(torch.randint(2, 96, (2, 16)))  # step 0 is skipped: no after_optimizer_step
    stage.on_step(1)
    assert stage.after_optimizer_step() == {"expert_bias_absmax": 0.0}
    assert all(not bias.any() for bias in biases)
    model(torch.randint(2, 96, (2, 16)))
    assert stage.after_optimizer_step()["expert_bias_absmax"] == pytest.approx(0.01)


def test_balancer_refuses_bad_rate_and_models_without_experts(model):
    with pytest.raises(ValueError, match="update_rate"):
        ExpertBiasBalancer(model, update_rate=0.0)
    with pytest.raises(ValueError, match="no MoE layer"):
        ExpertBiasBalancer(torch.nn.Linear(2, 2), update_rate=1e-3)
    assert expert_load(torch.tensor([[0, 1]]), 4).tolist() == [1.0, 1.0, 0.0, 0.0]


def _sequences(count, length=24):
    rng = np.random.default_rng(0)
    for index in range(count):
        yield {"__key__": f"s{index:03d}", "json": {"task": "text", "input_ids": rng.integers(2, 96, length).tolist()}}


def _recipe(tmp_path, name, rate, **overrides):
    raw = {"stage": "backbone", "out_dir": str(tmp_path / name), "model": MODEL,
           "stage_options": {"mask_token_id": 1, "expert_bias_update_rate": rate},
           "data": {"shards": [str(tmp_path / "shards")], "split": "sample", "resampled": False, "shuffle_buffer": 0,
                    "decode_images": False},
           "steps": 3, "micro_batch_size": 4, "optim": {"lr": 1e-3}, "schedule": {"kind": "constant"},
           "checkpoint": {"every": 0}, "logging": {"progress_bar": False}, "export": True, **overrides}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _export_biases(run_dir):
    weights = load_file(str(run_dir / "export" / "model.safetensors"))
    return {key: value for key, value in weights.items() if key.endswith("expert_bias")}


@pytest.fixture
def shards(tmp_path):
    write_shards(_sequences(48), tmp_path / "shards", max_count=12)


def test_trainer_moves_and_exports_the_bias_only_when_asked(shards, tmp_path):
    Trainer(load_recipe(_recipe(tmp_path, "balanced", 0.01))).fit()
    biases = _export_biases(tmp_path / "balanced")
    assert len(biases) == MODEL["num_hidden_layers"] - MODEL["first_k_dense_replace"]
    assert all(0 < float(b.abs().max()) <= 3 * 0.01 + 1e-6 for b in biases.values())
    records = [json.loads(line) for line in (tmp_path / "balanced" / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["expert_bias_absmax"] == pytest.approx(max(float(b.abs().max()) for b in biases.values()))
    Trainer(load_recipe(_recipe(tmp_path, "plain", 0.0))).fit()
    assert all(not b.any() for b in _export_biases(tmp_path / "plain").values())


def test_bad_rate_is_a_config_error_naming_the_option(tmp_path):
    base = {"stage": "backbone", "out_dir": str(tmp_path), "data": {"shards": ["x"]}}
    for rate in (-0.1, 1.5, "fast", True):
        with pytest.raises(ConfigError, match="expert_bias_update_rate must be a float in"):
            get_stage("backbone")(from_mapping(TrainRecipe, {**base, "stage_options": {"mask_token_id": 1, "expert_bias_update_rate": rate}}))
    with pytest.raises(ConfigError, match="moe_router_enable_expert_bias"):
        get_stage("backbone")(from_mapping(TrainRecipe, {**base, "model": {"preset": "tiny", "moe_router_enable_expert_bias": False},
                                                         "stage_options": {"mask_token_id": 1, "expert_bias_update_rate": 1e-3}}))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


RANK_SCRIPT = """
import sys
import torch
import torch.distributed as dist
from safetensors.torch import save_file
from unimask.training.expert_balance import ExpertBiasBalancer
from unimask.unimodal import LLaDA2MoeConfig, LLaDA2MoeModelLM
from unimask.unimodal.tiny_checkpoint import tiny_backbone_config_dict

dist.init_process_group("gloo")
rank = dist.get_rank()
config = {k: v for k, v in tiny_backbone_config_dict().items() if k not in ("architectures", "model_type", "torch_dtype")}
torch.manual_seed(0)
model = LLaDA2MoeModelLM(LLaDA2MoeConfig(**config)).train()
balancer = ExpertBiasBalancer(model, update_rate=0.01)
with torch.no_grad():
    model(torch.load(sys.argv[1])[rank])
balancer.step()
save_file({f"b{i}": block.gate.expert_bias.contiguous() for i, block in enumerate(balancer.blocks)}, f"{sys.argv[2]}/rank{rank}.safetensors")
dist.destroy_process_group()
"""


@pytest.mark.distributed
def test_two_gloo_ranks_apply_the_same_update_from_the_summed_loads(model, tmp_path):
    inputs = torch.randint(2, 500, (2, 3, 20), generator=torch.Generator().manual_seed(1))
    torch.save(inputs, tmp_path / "inputs.pt")
    (tmp_path / "rank_script.py").write_text(RANK_SCRIPT)
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", "--master-addr=127.0.0.1",
               f"--master-port={_free_port()}", str(tmp_path / "rank_script.py"), str(tmp_path / "inputs.pt"), str(tmp_path)]
    done = subprocess.run(command, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    ranks = [load_file(str(tmp_path / f"rank{r}.safetensors")) for r in range(2)]
    # The same model (seed 0) in one process: per-rank loads summed by hand.
    summed = [a + b for a, b in zip(_gate_loads(model, inputs[0]), _gate_loads(model, inputs[1]))]
    single = [_gate_loads(model, inputs[r]) for r in range(2)]
    assert any(not torch.equal(torch.sign(s.mean() - s), torch.sign(l.mean() - l)) for s, l in zip(summed, single[0])), \
        "inputs too easy: rank 0 alone would give the same update"
    for index, load in enumerate(summed):
        expected = 0.01 * torch.sign(load.mean() - load)
        assert torch.equal(ranks[0][f"b{index}"], expected) and torch.equal(ranks[1][f"b{index}"], expected)
