"""Distilling the few-step, guidance-free "turbo" decoder from the 50-point guided teacher.

Method: consistency distillation (Song, Dhariwal, Chen, Sutskever, "Consistency Models",
ICML 2023, Algorithm 2), with the target network taken as the stop-gradient student itself
(theta^- = stopgrad(theta)), as in Song & Dhariwal, "Improved Techniques for Training
Consistency Models", 2023.

The student's consistency function is the clean-sample prediction of its velocity,
f(x_t, t) = x_t + (1 - t) * v_student(x_t, t), which satisfies the boundary condition
f(x, 1) = x by construction, and is exactly what the turbo sampler (predict clean, re-noise to
the next time, stochast ratio 1) evaluates at every step, i.e. multistep consistency sampling.
For a data sample x and noise e, a pair of adjacent times t_n < t_{n+1} on the teacher's
time-shifted grid is drawn, x_{t_n} = t_n x + (1 - t_n) e, one guided teacher Euler step gives
x_{t_{n+1}}, and the loss is || f(x_{t_n}, t_n) - stopgrad f(x_{t_{n+1}}, t_{n+1}) ||^2.

`distillation_gap` measures the student against the teacher: both start from the same noise, the
teacher runs its full guided schedule, the student runs 1, 2, 4 and 8 steps; distances are taken
in pixels (MSE, PSNR) and, optionally, in a caller-given feature space.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from diffusers.utils.torch_utils import randn_tensor

from unimask.decoders.flow_schedule import NORMAL_STEPS, reference_data_times
from unimask.decoders.training_losses import check_decoder_batch
from unimask.decoders.vae_latents import encode_pixels
from unimask.decoders.velocity import DecoderCondition, predict_velocity, reads_cell_features


def consistency_function(
    transformer, latents: torch.Tensor, data_time: torch.Tensor, features: torch.Tensor | DecoderCondition
) -> torch.Tensor:
    """Clean-sample prediction x_t + (1 - t) * v(x_t, t) of an unguided transformer.

    latents: (batch, C, 1, h, w); data_time: (batch,) -> (batch, C, 1, h, w) float32."""
    velocity = predict_velocity(transformer, latents, data_time, features)
    return latents.float() + (1.0 - data_time).view(-1, 1, 1, 1, 1) * velocity


def distillation_loss(
    student,
    teacher,
    batch: dict,
    generator: torch.Generator | None = None,
    teacher_steps: int = NORMAL_STEPS,
    guidance_scale: float = 1.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """One consistency-distillation loss on a batch (keys as in `training_losses`).

    student, teacher: decoder parts (`sigvq`, `transformer`, `vae`); the teacher's SigVQ and VAE
    are used for both, only `student.transformer` receives gradients. teacher_steps: points of the
    teacher's time-shifted grid (>= 2); guidance_scale: the teacher's guidance (reference
    convention). Returns (scalar loss, metrics).
    """
    check_decoder_batch(batch, teacher)
    if teacher_steps < 2:
        raise ValueError(f"teacher_steps must be >= 2, got {teacher_steps}")
    device = student.transformer.device
    data = encode_pixels(teacher.vae, batch["pixel_values"], generator=generator).to(device)
    with torch.no_grad():
        features = teacher.sigvq.condition(
            batch["token_grids"], cells=reads_cell_features(teacher.transformer), latent_size=tuple(data.shape[-2:])
        ).to(device)
    count = data.shape[0]
    grid = torch.as_tensor(reference_data_times(teacher_steps, stochastic=False), dtype=torch.float32, device=device)
    rng_device = generator.device if generator is not None else "cpu"
    index = torch.randint(0, teacher_steps - 1, (count,), generator=generator, device=rng_device).to(device)
    time_now, time_next = grid[index], grid[index + 1]
    noise = randn_tensor(data.shape, generator=generator, device=device, dtype=data.dtype)
    noisy = time_now.view(-1, 1, 1, 1, 1) * data + (1.0 - time_now).view(-1, 1, 1, 1, 1) * noise
    with torch.no_grad():
        teacher_velocity = predict_velocity(teacher.transformer, noisy, time_now, features, guidance_scale)
        advanced = noisy + (time_next - time_now).view(-1, 1, 1, 1, 1) * teacher_velocity
        target = consistency_function(student.transformer, advanced, time_next, features)
    prediction = consistency_function(student.transformer, noisy, time_now, features)
    loss = F.mse_loss(prediction, target)
    return loss, {"distillation_loss": float(loss.detach()), "mean_data_time": float(time_now.mean())}


@torch.no_grad()
def distillation_gap(
    student,
    teacher,
    token_grids: torch.Tensor,
    student_steps: Sequence[int] = (1, 2, 4, 8),
    teacher_steps: int = NORMAL_STEPS,
    guidance_scale: float = 1.0,
    seed: int = 0,
    resolution_multiplier: int = 1,
    feature_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> dict[int, dict[str, float]]:
    """Distance between student and teacher decodes of the same grids from the same noise.

    student, teacher: `SemanticImageDecoder`s (student normally turbo); token_grids: (batch, h, w)
    int64; feature_fn: optional images (batch, 3, H, W) in [0, 1] -> (batch, ...) features.
    Returns {steps: {"pixel_mse", "psnr", ["feature_mse"]}} for every student step count.
    """
    batch = token_grids.shape[0]

    def generators():
        return [torch.Generator().manual_seed(seed + i) for i in range(batch)]

    common = {"resolution_multiplier": resolution_multiplier, "output_type": "pt"}
    reference = teacher(token_grids, teacher_steps, guidance_scale, generator=generators(), **common).images
    reference_features = feature_fn(reference) if feature_fn is not None else None
    report = {}
    for steps in student_steps:
        images = student(token_grids, steps, 0.0, generator=generators(), **common).images
        mse = float(F.mse_loss(images, reference))
        entry = {"pixel_mse": mse, "psnr": float(10 * np.log10(1.0 / max(mse, 1e-12)))}
        if feature_fn is not None:
            entry["feature_mse"] = float(F.mse_loss(feature_fn(images), reference_features))
        report[int(steps)] = entry
    return report
