"""The diffusers scheduler driven by `run_flow_sampler` reproduces the reference sampler."""

import numpy as np
import pytest
import torch

from unimask.decoders.flow_schedule import (
    make_decoder_scheduler,
    reference_data_times,
    reference_sigmas,
    run_flow_sampler,
    shift_data_time,
)


def toy_velocity(latents, data_time):
    # Depends on both the state and the time, so grid or update errors show up.
    t = data_time.view(-1, *([1] * (latents.dim() - 1)))
    return torch.sin(3 * latents) * (1 + t) - 0.5 * latents


def reference_ode(latents, num_steps, shift=6.0):
    # LLaDA2.0-Uni normal sampler written from its formula: Euler over linspace(0, 1, n) shifted.
    grid = torch.linspace(0, 1, num_steps, dtype=torch.float64)
    grid = grid / (grid + shift - shift * grid)
    x = latents.double()
    for t_now, t_next in zip(grid[:-1], grid[1:]):
        x = x + (t_next - t_now) * toy_velocity(x, t_now.expand(x.shape[0]))
    return x


def reference_renoise(latents, num_steps, generator):
    # Turbo sampler (stochast ratio 1): predict clean, re-noise to the next unshifted time.
    grid = torch.linspace(0, 1, num_steps + 1, dtype=torch.float64)
    x = latents.double()
    for t_now, t_next in zip(grid[:-1], grid[1:]):
        v = toy_velocity(x, t_now.expand(x.shape[0]))
        clean = x + (1 - t_now) * v
        noise = torch.randn(x.shape, generator=generator, dtype=torch.float32).double()
        x = t_next * clean + (1 - t_next) * noise
    return x


@pytest.mark.parametrize("steps", [2, 8, 50])
def test_normal_scheduler_grid_is_the_shifted_reference_grid(steps):
    scheduler = make_decoder_scheduler("normal")
    scheduler.set_timesteps(sigmas=reference_sigmas(steps, stochastic=False))
    data_times = 1.0 - scheduler.sigmas.double().numpy()
    np.testing.assert_allclose(data_times, reference_data_times(steps, stochastic=False), atol=1e-6)
    assert len(scheduler.timesteps) == steps - 1
    np.testing.assert_allclose(scheduler.timesteps.numpy(), scheduler.sigmas[:-1].numpy() * 1000, rtol=1e-6)


@pytest.mark.parametrize("steps", [1, 4, 8])
def test_turbo_scheduler_grid_is_unshifted_and_has_one_evaluation_per_step(steps):
    scheduler = make_decoder_scheduler("turbo")
    scheduler.set_timesteps(sigmas=reference_sigmas(steps, stochastic=True))
    assert len(scheduler.timesteps) == steps
    np.testing.assert_allclose(1.0 - scheduler.sigmas.numpy(), np.linspace(0, 1, steps + 1), atol=1e-6)


def test_shift_formula_matches_diffusers_noise_level_shift():
    t = np.linspace(0, 1, 11)
    sigma = 1 - t
    diffusers_shifted = 6 * sigma / (1 + 5 * sigma)
    np.testing.assert_allclose(shift_data_time(t), 1 - diffusers_shifted, atol=1e-12)
    assert shift_data_time(np.array([0.5]))[0] == pytest.approx(1 / 7)


def test_ode_sampler_matches_reference_loop():
    start = torch.randn(2, 4, 1, 3, 3, generator=torch.Generator().manual_seed(0))
    ours = run_flow_sampler(make_decoder_scheduler("normal"), toy_velocity, start.clone(), 50)
    np.testing.assert_allclose(ours.double().numpy(), reference_ode(start, 50).numpy(), atol=1e-4)


def test_renoising_sampler_matches_reference_loop():
    start = torch.randn(1, 4, 1, 3, 3, generator=torch.Generator().manual_seed(0))
    ours = run_flow_sampler(
        make_decoder_scheduler("turbo"), toy_velocity, start.clone(), 8, generator=torch.Generator().manual_seed(5)
    )
    reference = reference_renoise(start, 8, torch.Generator().manual_seed(5))
    np.testing.assert_allclose(ours.double().numpy(), reference.numpy(), atol=1e-4)


def test_callback_sees_every_step_in_increasing_data_time():
    seen = []
    scheduler = make_decoder_scheduler("normal")
    run_flow_sampler(scheduler, toy_velocity, torch.zeros(1, 2), 5, callback=lambda i, t, x: seen.append((i, t)))
    assert [i for i, _ in seen] == [0, 1, 2, 3]
    assert seen[0][1] == pytest.approx(0.0) and all(a[1] < b[1] for a, b in zip(seen, seen[1:]))


@pytest.mark.parametrize("steps, stochastic", [(1, False), (0, True), (-3, False), (2.5, True)])
def test_bad_step_counts_raise(steps, stochastic):
    with pytest.raises(ValueError, match="num_inference_steps"):
        reference_sigmas(steps, stochastic)


def test_unknown_variant_raises():
    with pytest.raises(ValueError, match="variant"):
        make_decoder_scheduler("fast")
