"""Flow-matching Euler sampler of HunyuanVideo-Foley, with classifier-free guidance.

The official schedule (`FlowMatchDiscreteScheduler`, reverse=True, solver="euler") walks sigma
from 1 (pure noise) to 0 in equal steps; the model sees t = 1000 * sigma and predicts the velocity
dx/dsigma. Everything here runs in fp32 whatever precision the model uses, as in the release.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

NUM_TRAIN_TIMESTEPS = 1000

VelocityFn = Callable[[Tensor, Tensor], Tensor]


def flow_schedule(steps: int, shift: float = 1.0) -> tuple[Tensor, Tensor]:
    """(timesteps [steps], sigmas [steps + 1]) in fp32; shift > 1 spends more steps at high noise (SD3)."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    sigmas = torch.linspace(1, 0, steps + 1)
    if shift != 1.0:
        sigmas = shift * sigmas / (1 + (shift - 1) * sigmas)
    return sigmas[:-1] * NUM_TRAIN_TIMESTEPS, sigmas


def euler_step(x: Tensor, velocity: Tensor, sigma: Tensor, sigma_next: Tensor) -> Tensor:
    """x at sigma_next from x at sigma, in fp32."""
    return x.float() + velocity.float() * (sigma_next - sigma)


def guided(velocity: Tensor, guidance_scale: float) -> Tensor:
    """Combine a [uncond; cond] batch: uncond + scale * (cond - uncond)."""
    uncond, cond = velocity.float().chunk(2)
    return uncond + guidance_scale * (cond - uncond)


def sample(velocity_fn: VelocityFn, noise: Tensor, steps: int, guidance_scale: float, shift: float = 1.0,
           progress: Callable[[int, int], None] | None = None, exchange: Callable[[int, Tensor], Tensor] | None = None) -> Tensor:
    """Integrate from `noise` [B, ...] to sigma 0; returns fp32 latents.

    With guidance_scale > 1, `velocity_fn(x, t)` gets the batch [x; x] (2B: unconditional first, as
    its conditioning must be ordered) and t [2B]; otherwise one branch: x [B], t [B].
    `progress(done, steps)` is called after every step.

    `exchange(step, x) -> x` (joint sampling, foley_dist.models.joint): called with the state at sigmas[step]
    before each velocity evaluation and once more at sigma 0 (step == steps); it may replace frames
    shared with a neighbouring segment and hand its own on.
    """
    timesteps, sigmas = flow_schedule(steps, shift)
    timesteps, sigmas = timesteps.to(noise.device), sigmas.to(noise.device)
    use_cfg = guidance_scale > 1.0
    x = noise.float()
    for i in range(steps):
        if exchange is not None:
            x = exchange(i, x)
        x_in = torch.cat([x, x]) if use_cfg else x
        v = velocity_fn(x_in, timesteps[i].repeat(x_in.shape[0]))
        v = guided(v, guidance_scale) if use_cfg else v.float()
        x = euler_step(x, v, sigmas[i], sigmas[i + 1])
        if progress is not None:
            progress(i + 1, steps)
    return exchange(steps, x) if exchange is not None else x

