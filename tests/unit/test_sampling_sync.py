"""No host sync inside the sampling loop (issue 17, found by the read): every step of every mode
only queues device work. On CUDA a value read back (`.item()`, `.tolist()`, `.cpu()`, Python
branching on a tensor) or a tensor built from host data (`torch.tensor(..., device=cuda)`) stalls the
host until the GPU has drained its queue, 50 times per segment.

On the CPU the same loop runs under `host_reads_forbidden`, which fails on each of those operations
(on CUDA it also turns on torch's sync debug mode); tests/gpu/test_numerics.py runs it on a GPU.
"""

from __future__ import annotations

from contextlib import ExitStack, contextmanager
from typing import Iterator

import pytest
import torch

import foley_dist.stages as stages
from foley_dist.config import ModelConfig
from foley_dist.engine.message import Message
from foley_dist.media.segments import SegmentPlan
from foley_dist.models.flow import sample
from foley_dist.models.foley import ModelSpec, build_parts
from foley_dist.models.joint import link_neighbours
from foley_dist.stages import DiffusionStage

STEPS = 3


class HostSync(RuntimeError):
    pass


# Python-level entry points of a host read: values (item, float, int, bool/branching, index), copies
# to the host, and tensors from host data. (A TorchDispatchMode would see `_local_scalar_dense`, but
# not under inference_mode, where the stages run.)
TENSOR_READS = ("item", "tolist", "numpy", "cpu", "__float__", "__int__", "__bool__", "__index__")
HOST_DATA = ("tensor", "as_tensor")


@contextmanager
def host_reads_forbidden(monkeypatch) -> Iterator[None]:
    def refuse(name):
        def method(*args, **kwargs):
            raise HostSync(f"{name} inside the sampling loop")
        return method

    with monkeypatch.context() as m:
        for name in TENSOR_READS:
            m.setattr(torch.Tensor, name, refuse(f"Tensor.{name}"))
        for name in HOST_DATA:
            m.setattr(torch, name, refuse(f"torch.{name}"))
        cuda = torch.cuda.is_available()
        if cuda:  # on a GPU torch also reports syncs inside its own operators (nonzero, masked_select, ...)
            torch.cuda.set_sync_debug_mode("error")
        try:
            yield
        finally:
            if cuda:
                torch.cuda.set_sync_debug_mode("default")


def run_checked(monkeypatch, device: torch.device, seam: str, cfg_split: bool, guidance: float,
                autocast: torch.dtype | None = None) -> list[Message]:
    """Two overlapping segments through a tiny DiffusionStage, its sampling loop under the guard."""
    spec = ModelSpec.named("tiny")
    parts = build_parts(spec, ("dit", "vae"), ModelConfig(), device)
    checked = []

    def guarded(velocity_fn, *args, **kwargs):
        """sample() with the guard on from its first velocity call (after the schedule went to the
        device, once per segment) to its end: every step but step 0's exchange is checked."""
        with ExitStack() as guard:
            def velocity(x, t):
                if not checked or checked[-1] != "open":
                    guard.enter_context(host_reads_forbidden(monkeypatch))
                    checked.append("open")
                return velocity_fn(x, t)

            out = sample(velocity, *args, **kwargs)
        checked[-1] = "checked"
        return out

    monkeypatch.setattr(stages, "sample", guarded)
    stage = DiffusionStage(spec, parts["dit"], parts["vae"], STEPS, guidance, device, autocast, seam=seam, cfg_split=cfg_split)
    plan = SegmentPlan.build(9.0, 5.0, 1.0)
    metas = [{"job": 0, "seed": 3, "segment": s.index, "start": s.start, "end": s.end} for s in plan.segments]
    if seam == "joint":
        link_neighbours(metas)
    g = torch.Generator().manual_seed(0)
    outs = []
    for seg, meta in zip(plan.segments, metas):
        text, clip, sync = (torch.randn(2, n, 768, generator=g).to(device) for n in (9, 40, 120))
        with torch.inference_mode():
            cond = parts["dit"].condition(text, clip, sync)
        outs.append(stage(Message(seg.index, cond, meta)))
    assert checked == ["checked", "checked"]
    return outs


@pytest.mark.parametrize("seam,cfg_split,guidance", [("crossfade", False, 4.5), ("crossfade", True, 4.5),
                                                     ("joint", False, 4.5), ("joint", True, 4.5), ("crossfade", False, 1.0)])
def test_sampling_loop_never_syncs_with_the_host(monkeypatch, seam, cfg_split, guidance):
    outs = run_checked(monkeypatch, torch.device("cpu"), seam, cfg_split, guidance)
    assert all(torch.isfinite(o.tensors["audio"]).all() for o in outs)


@pytest.mark.parametrize("read", [lambda t: t[0].item(), lambda t: t.tolist(), lambda t: t[0] > 500 and None,
                                  lambda t: float(t[0]), lambda t: t.cpu(), lambda t: torch.tensor([1.0])])
def test_the_guard_catches_a_per_step_read(monkeypatch, read):
    with pytest.raises(HostSync), torch.inference_mode(), host_reads_forbidden(monkeypatch):
        sample(lambda x, t: read(t) or -x, torch.zeros(1, 4, 8), STEPS, 1.0)
