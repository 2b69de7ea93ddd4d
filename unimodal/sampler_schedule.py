"""How many masked positions of a block to commit per denoising step, and which ones.

`MaskedBlockScheduler` is a diffusers-style scheduler (`SchedulerMixin, ConfigMixin`): it holds the
step math of block-wise masked diffusion and no model, so the sampler loop (`sampler.py`) stays a
readable "forward, guide, constrain, step" and the rule can be swapped or unit-tested alone.

Schedules (per batch row, over the masked positions of the active block):

- `fixed` (the official LLaDA2 rule): step `i` of `num_inference_steps` has the quota
  `block_length // steps + (1 if i < block_length % steps else 0)`, raised to `minimal_topk` and capped by
  the masked count. With threshold acceptance, if at least `quota` masked positions have a candidate
  probability > `threshold`, exactly those are committed; otherwise the `quota` best-scored ones.
  (The official code can give a quota of 0 when steps > block_length and then commits only the
  above-threshold set; here the quota never drops below `minimal_topk`, so no forward pass is wasted.)
- `adaptive` (SPRINT): k = max(minimal_topk, ceil(masked / steps_left)) best-scored positions, plus
  (batch acceptance) every masked position whose candidate probability > `threshold`.

`threshold = 1.0` switches threshold acceptance off (a probability never exceeds 1), so `fixed` with
`num_inference_steps == block_length` and `threshold = 1.0` is one token per step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils import BaseOutput

SCHEDULES = ("fixed", "adaptive")


@dataclass
class MaskedBlockSchedulerOutput(BaseOutput):
    """Result of one step.

    prev_sample: (batch, block) int64, the block with the committed candidates written in.
    transfer_index: (batch, block) bool, the positions committed in this step.
    """

    prev_sample: torch.LongTensor
    transfer_index: torch.BoolTensor


class MaskedBlockScheduler(SchedulerMixin, ConfigMixin):
    """Commit-by-confidence step rule for one block (see the module docstring for the exact rules).

    Args: block_length (>= 1), num_inference_steps (steps per block, >= 1), schedule (`fixed` |
    `adaptive`), threshold (in (0, 1]; 1.0 disables batch acceptance), minimal_topk (>= 1, the least number
    of positions committed per step while any are masked).
    """

    order = 1

    @register_to_config
    def __init__(
        self,
        block_length: int = 32,
        num_inference_steps: int = 32,
        schedule: str = "fixed",
        threshold: float = 0.95,
        minimal_topk: int = 1,
    ):
        if schedule not in SCHEDULES:
            raise ValueError(f"`schedule` must be one of {SCHEDULES}, got {schedule!r}.")
        if block_length < 1 or num_inference_steps < 1 or minimal_topk < 1:
            raise ValueError(
                "`block_length`, `num_inference_steps` and `minimal_topk` must be >= 1, got "
                f"{block_length}, {num_inference_steps}, {minimal_topk}."
            )
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"`threshold` must be in (0, 1], got {threshold}.")

    @staticmethod
    def get_num_transfer_tokens(block_length: int, num_inference_steps: int) -> torch.LongTensor:
        """Official fixed quota: (num_inference_steps,) int64 summing to `block_length`."""
        base, remainder = divmod(block_length, num_inference_steps)
        quota = torch.full((num_inference_steps,), base, dtype=torch.long)
        quota[:remainder] += 1
        return quota

    def tokens_to_commit(self, step_index: int, masked_count: torch.LongTensor) -> torch.LongTensor:
        """Per-row number of best-scored positions to commit at `step_index` (0-based, within the block).

        masked_count: (batch,) int64. Returns (batch,) int64 in [0, masked_count].
        """
        steps = self.config.num_inference_steps
        if self.config.schedule == "fixed":
            quota = self.get_num_transfer_tokens(self.config.block_length, steps)
            k = torch.full_like(masked_count, int(quota[min(step_index, steps - 1)]))
        else:
            steps_left = max(1, steps - step_index)
            k = (masked_count + steps_left - 1) // steps_left
        return torch.minimum(k.clamp_min(self.config.minimal_topk), masked_count)

    def select_transfer(
        self,
        scores: torch.Tensor,
        candidate_probs: torch.Tensor,
        masked: torch.BoolTensor,
        step_index: int,
    ) -> torch.BoolTensor:
        """Which masked positions to commit.

        scores: (batch, block) float, the remasking strategy's score (higher first);
        candidate_probs: (batch, block) float, probability of each candidate (for the threshold);
        masked: (batch, block) bool, positions still to generate. Returns (batch, block) bool, a subset of
        `masked` with at least min(minimal_topk, masked count) positions per row.
        """
        masked_count = masked.sum(dim=-1)
        k = self.tokens_to_commit(step_index, masked_count)
        ranked = scores.float().masked_fill(~masked, float("-inf"))
        order = ranked.argsort(dim=-1, descending=True, stable=True)
        positions = torch.arange(order.shape[-1], device=order.device).expand_as(order)
        rank = torch.empty_like(order).scatter_(-1, order, positions)
        top_k = (rank < k.unsqueeze(-1)) & masked
        above = (candidate_probs > self.config.threshold) & masked
        if self.config.schedule == "adaptive":
            return top_k | above
        enough_above = above.sum(dim=-1, keepdim=True) >= k.unsqueeze(-1)
        return torch.where(enough_above, above, top_k)

    def step(
        self,
        candidates: torch.LongTensor,
        scores: torch.Tensor,
        candidate_probs: torch.Tensor,
        sample: torch.LongTensor,
        masked: torch.BoolTensor,
        step_index: int,
        return_dict: bool = True,
    ) -> MaskedBlockSchedulerOutput | tuple[torch.LongTensor, torch.BoolTensor]:
        """Commit the selected candidates into the block.

        candidates / sample: (batch, block) int64; scores / candidate_probs: (batch, block) float;
        masked: (batch, block) bool. Returns `MaskedBlockSchedulerOutput` (or a tuple
        (prev_sample, transfer_index) when return_dict is False).
        """
        transfer = self.select_transfer(scores, candidate_probs, masked, step_index)
        prev_sample = torch.where(transfer, candidates, sample)
        if not return_dict:
            return prev_sample, transfer
        return MaskedBlockSchedulerOutput(prev_sample=prev_sample, transfer_index=transfer)
