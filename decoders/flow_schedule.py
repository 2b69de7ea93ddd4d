"""The reference decoder's sampling schedules, expressed with diffusers' flow-matching scheduler.

The official sampler (LLaDA2.0-Uni `decoder/transport`) works in data time t (t = 0 noise,
t = 1 data) on the linear path x_t = t * x_data + (1 - t) * noise, with a velocity model
v = x_data - noise (the Z-Image transformer's output):

- normal: Euler ODE on the grid t_i = linspace(0, 1, num_steps) time-shifted by
  t -> t / (t + shift * (1 - t)), shift 6. The grid has `num_steps` points, so the ODE takes
  `num_steps - 1` Euler steps (49 transformer evaluations for the default 50).
- turbo: `num_steps` points t_i = linspace(0, 1, num_steps + 1)[:-1], NOT time-shifted; at each
  point the clean sample x_hat = x_t + (1 - t) v is predicted and re-noised to the next point
  with fresh noise (stochast ratio 1): x_next = t_next * x_hat + (1 - t_next) * noise.

In noise level sigma = 1 - t the shift is diffusers' `shift * s / (1 + (shift - 1) * s)`, the
Euler update is `x + (sigma_next - sigma) * (-v)` and the re-noising is diffusers'
`stochastic_sampling`; so `FlowMatchEulerDiscreteScheduler` reproduces both samplers when it is
given the unshifted sigma grid below and fed the negated velocity.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

REFERENCE_TIME_SHIFT = 6.0
NORMAL_STEPS = 50
TURBO_STEPS = 8
# Far above any useful schedule (the reference uses 50); bounds the cost of one call.
MAX_STEPS = 1000


def shift_data_time(t: np.ndarray, shift: float = REFERENCE_TIME_SHIFT) -> np.ndarray:
    """The reference's time shift in data time: t -> t / (t + shift - shift * t).

    t: (n,) float in [0, 1] -> (n,) float in [0, 1].
    """
    t = np.asarray(t, dtype=np.float64)
    return t / (t + shift - shift * t)


def make_decoder_scheduler(variant: str) -> FlowMatchEulerDiscreteScheduler:
    """The scheduler of a decoder variant: "normal" (Euler ODE, shift 6) or "turbo"
    (re-noising every step, no shift)."""
    if variant == "normal":
        return FlowMatchEulerDiscreteScheduler(shift=REFERENCE_TIME_SHIFT)
    if variant == "turbo":
        return FlowMatchEulerDiscreteScheduler(shift=1.0, stochastic_sampling=True)
    raise ValueError(f"variant must be 'normal' or 'turbo', got {variant!r}")


def reference_sigmas(num_inference_steps: int, stochastic: bool) -> list[float]:
    """Unshifted noise levels to pass as `set_timesteps(sigmas=...)` (the scheduler appends the
    terminal 0 and applies its `shift`).

    stochastic=False (ODE): 1 - linspace(0, 1, n)[:-1], i.e. n - 1 evaluations, n >= 2.
    stochastic=True (re-noising): 1 - linspace(0, 1, n + 1)[:-1], i.e. n evaluations, n >= 1.
    """
    minimum = 1 if stochastic else 2
    is_int = isinstance(num_inference_steps, int) and not isinstance(num_inference_steps, bool)
    if not is_int or not minimum <= num_inference_steps <= MAX_STEPS:
        raise ValueError(
            f"num_inference_steps must be an int >= {minimum} (and <= {MAX_STEPS}) for the "
            f"{'re-noising' if stochastic else 'ODE'} sampler, got {num_inference_steps!r}"
        )
    points = num_inference_steps + 1 if stochastic else num_inference_steps
    data_times = np.linspace(0.0, 1.0, points)[:-1]
    return (1.0 - data_times).tolist()


def reference_data_times(num_inference_steps: int, stochastic: bool) -> np.ndarray:
    """The reference sampler's full data-time grid, endpoint included, written from its formula
    (used to check the scheduler). Returns (points,) float64 with points = n (ODE) or n + 1."""
    if stochastic:
        return np.linspace(0.0, 1.0, num_inference_steps + 1)
    return shift_data_time(np.linspace(0.0, 1.0, num_inference_steps))


def _first_step_at(scheduler: FlowMatchEulerDiscreteScheduler, start_data_time: float) -> int:
    """Index of the first step of `scheduler`'s current grid at data time >= start_data_time (the grid
    rises, so the steps before it are exactly those below); len(timesteps) when none is."""
    data_times = 1.0 - scheduler.sigmas[:-1]
    return int((data_times < start_data_time - 1e-6).sum())


def sampler_steps_from(scheduler: FlowMatchEulerDiscreteScheduler, num_inference_steps: int, start_data_time: float = 0.0) -> int:
    """How many steps `run_flow_sampler` runs (each one velocity evaluation) for this step count and
    start: the grid points of `scheduler`'s kind, as it shifts them, at data times >= start_data_time.
    `scheduler` itself is left untouched (the grid is set on a copy of its config)."""
    grid = FlowMatchEulerDiscreteScheduler.from_config(scheduler.config)
    grid.set_timesteps(sigmas=reference_sigmas(num_inference_steps, grid.config.stochastic_sampling))
    return len(grid.timesteps) - _first_step_at(grid, start_data_time)


def run_flow_sampler(
    scheduler: FlowMatchEulerDiscreteScheduler,
    velocity_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    latents: torch.Tensor,
    num_inference_steps: int,
    generator: torch.Generator | list[torch.Generator] | None = None,
    callback: Callable[[int, float, torch.Tensor], None] | None = None,
    start_data_time: float = 0.0,
) -> torch.Tensor:
    """Integrate from noise to data with the reference schedule of `scheduler`'s kind.

    velocity_fn(latents, data_time) -> velocity x_data - noise, with latents (batch, ...) and
    data_time (batch,) float; latents: initial noise (batch, ...) float32, or with `start_data_time`
    t0 > 0 a sample already at t0 (e.g. a draft noised to it): then only the schedule's steps at data
    times >= t0 run (none when t0 is past the last one, which returns `latents` unchanged).
    callback(step, data_time, latents) runs after every step. Returns the final latents (batch, ...) float32.
    """
    stochastic = scheduler.config.stochastic_sampling
    scheduler.set_timesteps(sigmas=reference_sigmas(num_inference_steps, stochastic), device=latents.device)
    begin = _first_step_at(scheduler, start_data_time)
    if begin >= len(scheduler.timesteps):
        return latents
    scheduler.set_begin_index(begin)
    batch = latents.shape[0]
    for index, timestep in enumerate(scheduler.timesteps[begin:], start=begin):
        data_time = (1.0 - scheduler.sigmas[index]).expand(batch)
        velocity = velocity_fn(latents, data_time)
        # The scheduler integrates in noise level sigma = 1 - t, so it takes -v.
        latents = scheduler.step(-velocity, timestep, latents, generator=generator).prev_sample
        if callback is not None:
            callback(index, float(data_time[0]), latents)
    return latents
