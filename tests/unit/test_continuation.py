"""Continuation sampling: each segment's overlap frames end equal to the previous segment's latents."""

import pytest
import torch

from foley_dist.config import ModelConfig
from foley_dist.message import Message
from foley_dist.models.flow import sample
from foley_dist.models.foley import ModelSpec, build_parts
from foley_dist.segments import SegmentPlan
from foley_dist.stages import DiffusionStage


@pytest.fixture(scope="module")
def parts():
    return ModelSpec.named("tiny"), build_parts(ModelSpec.named("tiny"), ("dit", "vae"), ModelConfig(), torch.device("cpu"))


def _conditioning(dit, seed):
    g = torch.Generator().manual_seed(seed)
    text, clip, sync = (torch.randn(2, n, 768, generator=g) for n in (9, 40, 120))
    return dit.condition(text, clip, sync)


def _run(spec, parts, seam, plan):
    stage = DiffusionStage(spec, parts["dit"], parts["vae"], steps=5, guidance_scale=4.5, device=torch.device("cpu"),
                           autocast_dtype=None, seam=seam)
    outs = []
    for seg in plan.segments:
        meta = {"job": 0, "seed": 3, "segment": seg.index, "start": seg.start, "end": seg.end}
        outs.append(stage(Message(seg.index, _conditioning(parts["dit"], seg.index), meta)))
    return outs


def test_overlap_latents_continue_the_previous_segment(parts):
    spec, modules = parts
    plan = SegmentPlan.build(12.0, 5.0, 1.0)  # overlaps: 1 s, then 2 s (shifted tail)
    outs = _run(spec, modules, "continuation", plan)
    for prev, cur, seg in zip(outs, outs[1:], plan.segments[1:]):
        frames = round((plan.segments[seg.index - 1].end - seg.start) * spec.latent_rate)
        tail, head = prev.tensors["latents"][..., -frames:], cur.tensors["latents"][..., :frames]
        assert frames in (50, 100)
        assert torch.equal(tail, head)  # exact: the constraint is applied at sigma 0 too
    independent = _run(spec, modules, "crossfade", plan)
    assert torch.equal(independent[0].tensors["latents"], outs[0].tensors["latents"])  # first segment unchanged
    assert not torch.equal(independent[1].tensors["latents"], outs[1].tensors["latents"])


def test_prefix_constraint_in_the_sampler():
    noise = torch.randn(1, 4, 20, generator=torch.Generator().manual_seed(0))
    prefix = torch.randn(1, 4, 6, generator=torch.Generator().manual_seed(1))
    seen = []

    def velocity(x, t):
        seen.append(x[..., :6].clone())
        return torch.zeros_like(x)

    out = sample(velocity, noise, steps=4, guidance_scale=1.0, prefix=prefix)
    assert torch.equal(out[..., :6], prefix)
    assert torch.equal(seen[0], noise[..., :6])  # sigma 1: pure noise
    assert torch.allclose(seen[2], 0.5 * prefix + 0.5 * noise[..., :6])  # sigma 0.5: half way
    assert torch.equal(out[..., 6:], noise[..., 6:])  # zero velocity leaves the rest untouched


def test_unknown_seam_mode_is_rejected(parts):
    spec, modules = parts
    from foley_dist.errors import FoleyError

    with pytest.raises(FoleyError, match="seam="):
        DiffusionStage(spec, modules["dit"], modules["vae"], 5, 4.5, torch.device("cpu"), None, seam="blend")
