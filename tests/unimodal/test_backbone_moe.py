"""MoE routing rule, grouped dispatch vs the per-expert reference, and load balancing."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from unimask.unimodal.moe_routing import (
    expert_load,
    naive_experts_forward,
    route_tokens,
    router_z_loss,
    update_expert_bias,
)


def reference_routing(logits, bias, top_k, n_group, topk_group, scale):
    """The LLaDA2 rule written out token by token with plain Python lists."""
    num_experts = logits.shape[1]
    per_group = num_experts // n_group
    all_index, all_weight = [], []
    for row, row_bias in zip(logits.tolist(), [bias.tolist()] * logits.shape[0]):
        scores = [1.0 / (1.0 + torch.exp(torch.tensor(-value, dtype=torch.float64)).item()) for value in row]
        biased = [s + b for s, b in zip(scores, row_bias)]
        group_scores = [
            sum(sorted(biased[g * per_group:(g + 1) * per_group], reverse=True)[:2]) for g in range(n_group)
        ]
        kept = sorted(range(n_group), key=lambda g: -group_scores[g])[:topk_group]
        candidates = [e for e in range(num_experts) if e // per_group in kept]
        chosen = sorted(candidates, key=lambda e: -biased[e])[:top_k]
        total = sum(scores[e] for e in chosen)
        all_index.append(chosen)
        all_weight.append([scores[e] / total * scale for e in chosen])
    return torch.tensor(all_index), torch.tensor(all_weight)


@pytest.mark.parametrize(
    ("num_experts", "top_k", "n_group", "topk_group"), [(8, 2, 4, 2), (16, 4, 4, 1), (32, 8, 8, 4)]
)
def test_routing_matches_reference_rule(num_experts, top_k, n_group, topk_group):
    generator = torch.Generator().manual_seed(num_experts)
    logits = torch.randn(64, num_experts, generator=generator)
    bias = 0.3 * torch.randn(num_experts, generator=generator)
    index, weight = route_tokens(
        logits, bias, top_k=top_k, n_group=n_group, topk_group=topk_group, routed_scaling_factor=2.5
    )
    ref_index, ref_weight = reference_routing(logits, bias, top_k, n_group, topk_group, 2.5)
    assert torch.equal(index.sort(dim=1).values, ref_index.sort(dim=1).values)
    order, ref_order = index.argsort(dim=1), ref_index.argsort(dim=1)
    assert torch.allclose(weight.gather(1, order), ref_weight.gather(1, ref_order).float(), atol=1e-6)
    assert torch.allclose(weight.sum(dim=1), torch.full((64,), 2.5))


def test_expert_bias_changes_selection_but_not_weights_formula():
    logits = torch.zeros(4, 8)
    logits[:, 0] = 5.0
    bias = torch.zeros(8)
    bias[7] = 10.0  # expert 7 wins selection through the bias alone
    index, weight = route_tokens(logits, bias, top_k=2, n_group=1, topk_group=1, routed_scaling_factor=1.0)
    assert set(index[0].tolist()) == {7, 0}
    scores = torch.sigmoid(logits[0, [7, 0]])
    expected = scores / scores.sum()
    assert torch.allclose(weight[0][index[0].argsort()], expected[[1, 0]])


def test_group_limit_excludes_experts_of_dropped_groups():
    logits = torch.full((1, 8), -4.0)
    logits[0, [0, 1]] = 3.0  # group 0 (experts 0-1) strong
    logits[0, 2] = 4.0  # group 1 has the single best expert but a weak second
    index, _ = route_tokens(logits, None, top_k=2, n_group=4, topk_group=1, routed_scaling_factor=1.0)
    assert sorted(index[0].tolist()) == [0, 1]


@pytest.mark.parametrize("implementation", ["grouped_mm", "batched_mm"])
def test_dispatch_matches_per_expert_reference_forward_and_backward(tiny_backbone, implementation):
    moe = tiny_backbone.model.layers[1].mlp
    tokens = torch.randn(40, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        index, weight, _ = moe.gate(tokens)
    upstream = torch.randn(40, 32, generator=torch.Generator().manual_seed(4))

    def run(which):
        tiny_backbone.set_experts_implementation(which)
        moe.experts.zero_grad()
        x = tokens.clone().requires_grad_()
        w = weight.clone().requires_grad_()
        out = moe.experts(x, index, w)
        (out * upstream).sum().backward()
        return out.detach(), x.grad, w.grad, moe.experts.gate_up_proj.grad.clone(), moe.experts.down_proj.grad.clone()

    fast, reference = run(implementation), run("eager")
    for got, want in zip(fast, reference):
        assert (got - want).abs().max() < 1e-5


def test_eager_experts_are_the_naive_function(tiny_backbone):
    experts = tiny_backbone.model.layers[1].mlp.experts
    tiny_backbone.set_experts_implementation("eager")
    tokens = torch.randn(10, 32)
    index = torch.randint(0, 8, (10, 2))
    weight = torch.rand(10, 2)
    # hand-computed expert 3 contribution for one token
    expected = torch.zeros(32)
    for slot in range(2):
        gate, up = F.linear(tokens[0], experts.gate_up_proj[index[0, slot]]).chunk(2)
        expected += weight[0, slot] * F.linear(F.silu(gate) * up, experts.down_proj[index[0, slot]])
    got = naive_experts_forward(tokens, index, weight, experts.gate_up_proj, experts.down_proj)
    assert torch.allclose(got[0], expected, atol=1e-6)
    assert torch.equal(experts(tokens, index, weight), got)


def test_expert_load_and_bias_update_balance():
    index = torch.tensor([[0, 1], [0, 2], [0, 1]])
    load = expert_load(index, 4)
    assert load.tolist() == [3.0, 2.0, 1.0, 0.0]
    bias = torch.zeros(4)
    update_expert_bias(bias, load, update_rate=0.1)
    assert torch.allclose(bias, torch.tensor([-0.1, -0.1, 0.1, 0.1]))
    with pytest.raises(ValueError, match="load has shape"):
        update_expert_bias(bias, torch.zeros(3))


def test_bias_updates_reduce_load_imbalance():
    generator = torch.Generator().manual_seed(0)
    skew = torch.linspace(-2, 2, 16)
    bias = torch.zeros(16)

    def imbalance():
        logits = torch.randn(512, 16, generator=generator) + skew
        index, _ = route_tokens(logits, bias, top_k=2, n_group=4, topk_group=2, routed_scaling_factor=1.0)
        load = expert_load(index, 16)
        return load, (load.max() / load.mean()).item()

    load, before = imbalance()
    for _ in range(200):
        update_expert_bias(bias, load, update_rate=0.02)
        load, after = imbalance()
    assert after < 0.6 * before


def test_router_z_loss_value():
    logits = torch.zeros(3, 4)
    assert torch.allclose(router_z_loss(logits), torch.log(torch.tensor(4.0)) ** 2)
