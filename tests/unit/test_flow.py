"""Flow-matching Euler sampler: official schedule, first step, classifier-free guidance."""

from __future__ import annotations

import json

import pytest
import torch

from foley_dist.models.flow import euler_step, flow_schedule, guided, sample
from tests.reference import reference_file


@pytest.fixture(scope="module")
def reference() -> dict:
    return json.loads(reference_file("hvf_flow_schedule_50.json").read_text())


def test_schedule_equals_official(reference):
    assert (reference["num_inference_steps"], reference["shift"], reference["solver"]) == (50, 1.0, "euler")
    timesteps, sigmas = flow_schedule(50, shift=reference["shift"])
    assert timesteps.dtype == sigmas.dtype == torch.float32
    # the release's values; torch.linspace may round an element by an ulp differently across versions
    torch.testing.assert_close(timesteps, torch.tensor(reference["timesteps"], dtype=torch.float32), rtol=1e-6, atol=0)
    torch.testing.assert_close(sigmas, torch.tensor(reference["sigmas"], dtype=torch.float32), rtol=1e-6, atol=0)


def test_first_step_check(reference):
    check = reference["first_step_check"]
    gen = torch.Generator().manual_seed(5)
    latents = torch.randn(1, 128, 20, generator=gen)
    velocity = torch.randn(1, 128, 20, generator=gen)
    timesteps, sigmas = flow_schedule(50)
    assert timesteps[0] == 1000.0
    nxt = euler_step(latents, velocity, sigmas[0], sigmas[1])
    assert nxt.sum().item() == pytest.approx(check["next_sum"], rel=1e-6)
    assert nxt.abs().mean().item() == pytest.approx(check["next_abs_mean"], rel=1e-6)


def test_shifted_schedule_stays_at_high_noise_longer():
    _, plain = flow_schedule(10)
    timesteps, shifted = flow_schedule(10, shift=3.0)
    assert shifted[0] == 1.0 and shifted[-1] == 0.0
    assert torch.all(shifted[1:-1] > plain[1:-1]) and torch.all(shifted[1:] < shifted[:-1])
    assert torch.equal(timesteps, shifted[:-1] * 1000)
    with pytest.raises(ValueError):
        flow_schedule(0)


def test_guided_combines_uncond_first():
    uncond, cond = torch.full((2, 3), 1.0), torch.full((2, 3), 3.0)
    assert torch.equal(guided(torch.cat([uncond, cond]), 4.5), torch.full((2, 3), 1.0 + 4.5 * 2.0))


def test_sample_with_guidance_batches_uncond_then_cond():
    noise = torch.randn(2, 4, 6)
    steps, scale = 5, 4.5
    calls = []

    def velocity_fn(x, t):
        calls.append((x.clone(), t.clone()))
        # uncond rows predict x, cond rows predict 2x + t/1000
        return torch.cat([x[:2], 2 * x[2:] + t[2:, None, None] / 1000])

    seen = []
    out = sample(velocity_fn, noise, steps, scale, progress=lambda done, total: seen.append((done, total)))

    timesteps, sigmas = flow_schedule(steps)
    x = noise.clone()
    for i, (x_in, t_in) in enumerate(calls):
        assert x_in.shape == (4, 4, 6) and torch.equal(x_in[:2], x) and torch.equal(x_in[2:], x)
        assert torch.equal(t_in, timesteps[i].repeat(4))
        v_uncond, v_cond = x, 2 * x + timesteps[i] / 1000
        x = x + (v_uncond + scale * (v_cond - v_uncond)) * (sigmas[i + 1] - sigmas[i])
    assert len(calls) == steps and seen == [(i + 1, steps) for i in range(steps)]
    torch.testing.assert_close(out, x, rtol=1e-6, atol=1e-6)


def test_sample_without_guidance_is_single_branch_and_fp32():
    noise = torch.randn(3, 2, 5).to(torch.bfloat16)
    shapes = []

    def velocity_fn(x, t):
        shapes.append((x.shape[0], t.shape[0]))
        return torch.ones_like(x, dtype=torch.bfloat16)  # constant velocity: x(0) = x(1) - v

    out = sample(velocity_fn, noise, 7, guidance_scale=1.0)
    assert out.dtype == torch.float32
    assert shapes == [(3, 3)] * 7
    torch.testing.assert_close(out, noise.float() - 1, rtol=0, atol=1e-6)
