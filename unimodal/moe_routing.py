"""Routing rule, load balancing and the per-expert reference of the LLaDA2 MoE layers.

The routing follows the official LLaDA2.0 modeling file: sigmoid scores computed in fp32; a
per-expert bias (``expert_bias``) is added for *selection only*; experts are split into
``n_group`` groups, each group is scored by the sum of its two best biased scores, the
``topk_group`` best groups are kept and the top-k experts are chosen among them; the weights are
the un-biased sigmoid scores of the chosen experts, renormalised to sum to one (when
``norm_topk_prob``) and multiplied by ``routed_scaling_factor``.

Load balancing is the auxiliary-loss-free scheme of the reference training recipe (Megatron
``moe_router_enable_expert_bias``): after each step the bias of an under-loaded expert goes up
and that of an over-loaded expert goes down by a fixed rate (`update_expert_bias`).

The grouped dispatch (tokens sorted by expert, two grouped matmuls) is transformers'
``grouped_mm_experts_forward`` (``transformers.integrations.moe``) on accelerators; on CPU
`sorted_grouped_experts_forward` runs the same grouped matmuls but scales the (S, intermediate)
activations by the routing weights and adds the expert outputs straight into the (tokens, hidden) result
with ``index_add_``, instead of un-permuting the (S, hidden) outputs and summing over top-k (measured in
``benchmarks/moe.py``: that copy cost as much as a grouped matmul on CPU). `naive_experts_forward` is
the per-expert loop both are tested and benchmarked against.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F


def group_limited_topk(
    selection_scores: torch.Tensor, *, top_k: int, n_group: int, topk_group: int
) -> torch.Tensor:
    """Pick ``top_k`` experts per token among the ``topk_group`` best of ``n_group`` groups.

    Args:
        selection_scores: (tokens, num_experts) float, the biased scores used for selection.
        top_k: experts per token.
        n_group: number of contiguous, equal-sized expert groups.
        topk_group: number of groups kept per token (group score = sum of its top-2 scores).

    Returns:
        (tokens, top_k) int64 expert indices, best first.
    """
    num_tokens, num_experts = selection_scores.shape
    if n_group > 1 and topk_group < n_group:
        grouped = selection_scores.view(num_tokens, n_group, num_experts // n_group)
        group_scores = grouped.topk(2, dim=-1).values.sum(dim=-1)
        kept_groups = group_scores.topk(topk_group, dim=-1, sorted=False).indices
        group_keep = torch.zeros_like(group_scores, dtype=torch.bool).scatter_(1, kept_groups, True)
        expert_keep = group_keep.unsqueeze(-1).expand_as(grouped).reshape(num_tokens, num_experts)
        selection_scores = selection_scores.masked_fill(~expert_keep, float("-inf"))
    return selection_scores.topk(top_k, dim=-1).indices


def route_tokens(
    router_logits: torch.Tensor,
    expert_bias: torch.Tensor | None,
    *,
    top_k: int,
    n_group: int,
    topk_group: int,
    routed_scaling_factor: float,
    norm_topk_prob: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply the LLaDA2 routing rule to router logits.

    Args:
        router_logits: (tokens, num_experts) float32 router logits.
        expert_bias: (num_experts,) float32 selection bias, or None for no bias.
        top_k, n_group, topk_group: see `group_limited_topk`.
        routed_scaling_factor: multiplier applied to the (renormalised) weights.
        norm_topk_prob: renormalise the chosen scores to sum to one (official: True).

    Returns:
        ``(topk_index, topk_weight)``: (tokens, top_k) int64 expert indices and (tokens, top_k)
        float32 mixing weights.
    """
    scores = torch.sigmoid(router_logits.float())
    selection = scores if expert_bias is None else scores + expert_bias.float()
    topk_index = group_limited_topk(selection, top_k=top_k, n_group=n_group, topk_group=topk_group)
    topk_weight = scores.gather(1, topk_index)
    if norm_topk_prob and top_k > 1:
        topk_weight = topk_weight / (topk_weight.sum(dim=-1, keepdim=True) + 1e-20)
    return topk_index, topk_weight * routed_scaling_factor


def expert_load(topk_index: torch.Tensor, num_experts: int) -> torch.Tensor:
    """Count the token-to-expert assignments per expert.

    Args:
        topk_index: (tokens, top_k) int64 expert indices.
        num_experts: number of experts.

    Returns:
        (num_experts,) float32 counts (sum = tokens * top_k).
    """
    return torch.bincount(topk_index.reshape(-1), minlength=num_experts).float()


def router_z_loss(router_logits: torch.Tensor) -> torch.Tensor:
    """ST-MoE router z-loss: mean over tokens of ``logsumexp(logits) ** 2``; keeps logits small.

    Args:
        router_logits: (tokens, num_experts) float router logits.

    Returns:
        () float32 scalar.
    """
    return torch.logsumexp(router_logits.float(), dim=-1).square().mean()


@torch.no_grad()
def update_expert_bias(
    expert_bias: torch.Tensor, load: torch.Tensor, update_rate: float = 1e-3
) -> torch.Tensor:
    """Auxiliary-loss-free balancing step: move each expert's bias towards equal load, in place.

    ``bias += update_rate * sign(mean(load) - load)``: under-loaded experts become more likely
    to be selected, over-loaded ones less. In data-parallel training, sum ``load`` over ranks
    first so every rank applies the same update.

    Args:
        expert_bias: (num_experts,) float buffer (``mlp.gate.expert_bias``), updated in place.
        load: (num_experts,) per-expert assignment counts (from `expert_load`).
        update_rate: step size (the Megatron default is 1e-3).

    Returns:
        ``expert_bias`` (the same tensor).
    """
    if load.shape != expert_bias.shape:
        raise ValueError(f"load has shape {tuple(load.shape)}, expected {tuple(expert_bias.shape)}")
    if update_rate < 0:
        raise ValueError(f"update_rate={update_rate} must be >= 0")
    load = load.to(device=expert_bias.device, dtype=torch.float32)
    expert_bias.add_(torch.sign(load.mean() - load).to(expert_bias.dtype), alpha=update_rate)
    return expert_bias


def naive_experts_forward(
    hidden_states: torch.Tensor,
    topk_index: torch.Tensor,
    topk_weight: torch.Tensor,
    gate_up_proj: torch.Tensor,
    down_proj: torch.Tensor,
    act_fn: Callable[[torch.Tensor], torch.Tensor] = F.silu,
) -> torch.Tensor:
    """Reference MoE expert computation: one Python iteration per expert that got tokens.

    Args:
        hidden_states: (tokens, hidden) input.
        topk_index: (tokens, top_k) int64 expert indices.
        topk_weight: (tokens, top_k) float mixing weights.
        gate_up_proj: (num_experts, 2 * intermediate, hidden) stacked [gate; up] weights.
        down_proj: (num_experts, hidden, intermediate) weights.
        act_fn: gate activation (SwiGLU: silu).

    Returns:
        (tokens, hidden) in the dtype of ``hidden_states``; the weighted sum is accumulated in the
        promoted dtype of the expert outputs and the weights (fp32 for fp32 weights).
    """
    num_experts = gate_up_proj.shape[0]
    accum_dtype = torch.promote_types(hidden_states.dtype, topk_weight.dtype)
    output = torch.zeros(hidden_states.shape, dtype=accum_dtype, device=hidden_states.device)
    for expert in range(num_experts):
        token_index, slot = torch.where(topk_index == expert)
        if token_index.numel() == 0:
            continue
        gate, up = F.linear(hidden_states[token_index], gate_up_proj[expert]).chunk(2, dim=-1)
        expert_out = F.linear(act_fn(gate) * up, down_proj[expert])
        output.index_add_(0, token_index, expert_out * topk_weight[token_index, slot, None])
    return output.to(hidden_states.dtype)


def sorted_grouped_experts_forward(
    experts: torch.nn.Module,
    hidden_states: torch.Tensor,
    top_k_index: torch.Tensor,
    top_k_weights: torch.Tensor,
) -> torch.Tensor:
    """Grouped-matmul expert dispatch with a scatter-add combine (the "grouped_mm" implementation on CPU).

    Args:
        experts: the experts module (``gate_up_proj`` (E, 2I, H), ``down_proj`` (E, H, I), ``act_fn``,
            ``num_experts``), as passed by transformers' experts interface.
        hidden_states: (tokens, hidden) input.
        top_k_index: (tokens, top_k) int64 expert indices.
        top_k_weights: (tokens, top_k) float mixing weights.

    Returns:
        (tokens, hidden) in the dtype of ``hidden_states``, equal to `naive_experts_forward` up to
        summation order. On a non-CPU device this is transformers' ``grouped_mm_experts_forward``
        (``index_add_`` uses atomics there, which are not deterministic).
    """
    from transformers.integrations.moe import _grouped_mm, grouped_mm_experts_forward

    if hidden_states.device.type != "cpu":
        return grouped_mm_experts_forward(experts, hidden_states, top_k_index, top_k_weights)
    num_top_k = top_k_index.shape[-1]
    gate_up_proj, down_proj = experts.gate_up_proj, experts.down_proj
    expert_ids, order = torch.sort(top_k_index.reshape(-1), stable=True)
    token_of_row = order // num_top_k
    offsets = torch.cumsum(torch.bincount(expert_ids, minlength=experts.num_experts), 0).to(torch.int32)
    gate_up = _grouped_mm(hidden_states[token_of_row], gate_up_proj.transpose(-2, -1), offsets)
    gate, up = gate_up.chunk(2, dim=-1)
    accum_dtype = torch.promote_types(hidden_states.dtype, top_k_weights.dtype)
    # Scaling the narrow (S, I) activations is cheaper than scaling the (S, H) outputs.
    row_weights = top_k_weights.reshape(-1)[order].to(gate_up.dtype)
    activations = experts.act_fn(gate) * up * row_weights.unsqueeze(-1)
    expert_out = _grouped_mm(activations, down_proj.transpose(-2, -1), offsets)
    output = torch.zeros(hidden_states.shape, dtype=accum_dtype, device=hidden_states.device)
    output = output.index_add(0, token_of_row, expert_out.to(accum_dtype))
    return output.to(hidden_states.dtype)


__all__ = [
    "expert_load",
    "group_limited_topk",
    "naive_experts_forward",
    "route_tokens",
    "router_z_loss",
    "sorted_grouped_experts_forward",
    "update_expert_bias",
]
