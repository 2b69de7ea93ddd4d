"""Auxiliary-loss-free expert balancing for the MoE backbone during training.

The router of `LLaDA2MoeGate` adds a per-expert ``expert_bias`` to its scores when it picks
experts (``moe_router_enable_expert_bias``). Training keeps that bias moving towards equal load:
`ExpertBiasBalancer` counts the tokens each expert received over the micro-batches of one
optimizer step (forward hooks on every `LLaDA2MoeSparseMoeBlock`), sums the counts over the
data-parallel ranks, and after the optimizer step applies `update_expert_bias` to every layer,
so every rank holds the same bias. The bias is a persistent buffer, so checkpoints and exports
carry it.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from unimask.unimodal.modeling_llada2_moe import LLaDA2MoeSparseMoeBlock
from unimask.unimodal.moe_routing import update_expert_bias

__all__ = ["ExpertBiasBalancer"]


class ExpertBiasBalancer:
    """Counts expert loads in training forwards and steps every layer's ``expert_bias``.

    Args:
        model: a module holding `LLaDA2MoeSparseMoeBlock` layers (an `LLaDA2MoeModelLM`, also
            after DDP / FSDP2 wrapping, which keep the submodules).
        update_rate: bias step per optimizer step, > 0 (1e-3 is the usual rate).

    Raises:
        ValueError: ``update_rate`` is not > 0, or the model has no MoE layer.
    """

    def __init__(self, model: nn.Module, update_rate: float):
        if not update_rate > 0:
            raise ValueError(f"update_rate={update_rate!r} must be > 0")
        self.blocks = [module for module in model.modules() if isinstance(module, LLaDA2MoeSparseMoeBlock)]
        if not self.blocks:
            raise ValueError("the model has no MoE layer (LLaDA2MoeSparseMoeBlock) to balance")
        self.update_rate = float(update_rate)
        self.loads: list[torch.Tensor | None] = [None] * len(self.blocks)
        self._handles = [block.register_forward_hook(self._counter(index)) for index, block in enumerate(self.blocks)]

    def _counter(self, index: int):
        def count(module: nn.Module, args, output) -> None:
            # Only training forwards count; an evaluation forward in between must not move the bias.
            # (An activation-checkpointing recompute counts a layer twice; the update uses only the
            # sign of each expert's deviation from the mean, which that does not change.)
            if not module.training:
                return
            load = output[1].expert_load.detach().float()
            self.loads[index] = load if self.loads[index] is None else self.loads[index] + load

        return count

    def reset(self) -> None:
        """Forget the loads counted so far (call before each optimizer step's forwards)."""
        self.loads = [None] * len(self.blocks)

    def step(self) -> dict[str, float]:
        """Apply one bias update from the loads counted since the last reset, then reset them.

        Layers that saw no training forward are left unchanged (their load is zero everywhere, so
        every expert sits at the mean). Under torch.distributed the loads of all layers are summed
        over the ranks in one all-reduce first (every rank must call this after the same step).

        Returns:
            ``{"expert_bias_absmax": float}``, the largest |bias| over all layers after the update.
        """
        biases = [block.gate.expert_bias for block in self.blocks]
        loads = torch.stack([
            torch.zeros_like(bias, dtype=torch.float32) if load is None else load.to(bias.device)
            for bias, load in zip(biases, self.loads)
        ])
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(loads)
        for bias, load in zip(biases, loads):
            update_expert_bias(bias, load, self.update_rate)
        self.reset()
        return {"expert_bias_absmax": max(float(bias.abs().max()) for bias in biases)}

    def remove(self) -> None:
        """Remove the forward hooks (the balancer counts nothing afterwards)."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
