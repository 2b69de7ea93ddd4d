"""Learning-rate schedules as pure functions of the step (so resuming needs only the step).

- ``constant``: linear warmup, then the peak rate.
- ``cosine``: linear warmup, then cosine decay to ``min_lr_ratio * lr`` at the last step.
- ``wsd`` (warmup-stable-decay): linear warmup, constant plateau, then a linear decay to
  ``min_lr_ratio * lr`` over the final ``decay_steps`` (default 20% of the run).
"""

from __future__ import annotations

import math

__all__ = ["lr_multiplier"]


def lr_multiplier(
    step: int, total_steps: int, kind: str, warmup_steps: int = 0, decay_steps: int = 0, min_lr_ratio: float = 0.1
) -> float:
    """Multiplier of the peak learning rate for optimizer step ``step`` (0-based).

    Args:
        step: in [0, total_steps).
        total_steps: >= 1.
        kind: ``"constant"``, ``"cosine"`` or ``"wsd"``.
        warmup_steps: linear warmup length (the first step gets 1 / warmup_steps).
        decay_steps: wsd decay length; 0 means ``max(1, total_steps // 5)``.
        min_lr_ratio: final multiplier of the decaying schedules, in [0, 1].
    Returns:
        The multiplier in [0, 1].
    Raises:
        ValueError: unknown kind or out-of-range arguments.
    """
    if total_steps < 1:
        raise ValueError(f"total_steps={total_steps} must be >= 1")
    if not 0 <= step < total_steps:
        raise ValueError(f"step={step} must be in [0, {total_steps})")
    if kind not in ("constant", "cosine", "wsd"):
        raise ValueError(f"kind={kind!r} must be 'constant', 'cosine' or 'wsd'")
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if kind == "constant":
        return 1.0
    if kind == "cosine":
        span = max(1, total_steps - 1 - warmup_steps)
        progress = min(1.0, (step - warmup_steps) / span)
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    decay = decay_steps or max(1, total_steps // 5)
    decay_start = max(warmup_steps, total_steps - decay)
    if step < decay_start:
        return 1.0
    progress = (step - decay_start + 1) / max(1, total_steps - decay_start)
    return 1.0 - (1.0 - min_lr_ratio) * progress
