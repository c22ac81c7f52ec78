"""Joint sampling (seam=joint) and CFG branch splitting in one process: noise timeline, per-step
overlap exchange, the schedule of who talks to whom, the coherent stitch."""

import numpy as np
import pytest
import torch

from foley_dist.audio.stitch import Stitcher
from foley_dist.config import ModelConfig
from foley_dist.engine.autolayout import predict_makespan
from foley_dist.engine.message import Message
from foley_dist.engine.protocol import ItemPlan, check_job, connections
from foley_dist.engine.schedule import Topology, build_schedule
from foley_dist.errors import FoleyError
from foley_dist.media.segments import SegmentPlan
from foley_dist.models.flow import flow_schedule, sample
from foley_dist.models.foley import ModelSpec, build_parts
from foley_dist.models.joint import BLOCK, LocalChannel, link_neighbours, shared_frames, timeline_noise
from foley_dist.stages import DiffusionStage


@pytest.fixture(scope="module")
def parts():
    return ModelSpec.named("tiny"), build_parts(ModelSpec.named("tiny"), ("dit", "vae"), ModelConfig(), torch.device("cpu"))


def test_timeline_noise_is_one_signal_whatever_the_segmenting():
    whole = timeline_noise(7, 0, 600, 8)
    for offset, length in [(0, 250), (200, 250), (37, 101), (BLOCK - 1, 2), (350, 250)]:
        assert torch.equal(timeline_noise(7, offset, length, 8), whole[..., offset : offset + length])
    assert timeline_noise(7, 0, 600, 8).shape == (1, 8, 600)
    assert not torch.equal(timeline_noise(8, 0, 250, 8), whole[..., :250])


def test_link_neighbours_within_a_job_only():
    metas = [{"job": j, "segment": s, "start": 4.0 * s, "end": 4.0 * s + 5} for j, s in [(0, 0), (0, 1), (1, 0), (1, 1)]]
    link_neighbours(metas)
    assert metas[0]["joint_next"] == [4.0, 9.0] and metas[1]["joint_prev"] == [0.0, 5.0]
    assert "joint_next" not in metas[1] and "joint_prev" not in metas[2] and metas[3]["joint_prev"] == [0.0, 5.0]
    assert shared_frames((200, 250), (0, 250)) == 50 and shared_frames((0, 250), (300, 250)) == 0


def test_exchange_hook_sees_every_sigma_and_the_final_state():
    seen = []

    def exchange(step, x):
        seen.append((step, x.clone()))
        return x

    noise = torch.randn(1, 4, 10, generator=torch.Generator().manual_seed(0))
    out = sample(lambda x, t: -x, noise, steps=3, guidance_scale=1.0, exchange=exchange)
    assert [s for s, _ in seen] == [0, 1, 2, 3]
    assert torch.equal(seen[0][1], noise) and torch.equal(seen[-1][1], out)
    _, sigmas = flow_schedule(3)
    assert torch.allclose(seen[1][1], noise * (1 + (sigmas[0] - sigmas[1])))


def _conditioning(dit, seed):
    g = torch.Generator().manual_seed(seed)
    text, clip, sync = (torch.randn(2, n, 768, generator=g) for n in (9, 40, 120))
    return dit.condition(text, clip, sync)


def _run_joint(spec, parts, plan, seam="joint", cfg_split=False, steps=4):
    stage = DiffusionStage(spec, parts["dit"], parts["vae"], steps=steps, guidance_scale=4.5,
                           device=torch.device("cpu"), autocast_dtype=None, seam=seam, cfg_split=cfg_split)
    metas = [{"job": 0, "seed": 3, "segment": s.index, "start": s.start, "end": s.end} for s in plan.segments]
    link_neighbours(metas)
    outs, held = [], []
    for seg, meta in zip(plan.segments, metas):
        outs.append(stage(Message(seg.index, _conditioning(parts["dit"], seg.index), meta)))
        held.append(stage.channel.held)
    return outs, held


def test_joint_overlaps_are_one_signal_and_memory_is_one_segment_of_tails(parts):
    spec, modules = parts
    plan = SegmentPlan.build(12.0, 5.0, 1.0)  # overlaps: 1 s, then 2 s (shifted tail)
    outs, held = _run_joint(spec, modules, plan)
    for prev, cur, a, b in zip(outs, outs[1:], plan.segments, plan.segments[1:]):
        frames = round((a.end - b.start) * spec.latent_rate)
        assert frames in (50, 100)
        assert torch.equal(prev.tensors["latents"][..., -frames:], cur.tensors["latents"][..., :frames])
    assert held == [5, 5, 0]  # steps + 1 tails of the last segment wait for the next, then none
    independent, _ = _run_joint(spec, modules, plan, seam="crossfade")
    assert not torch.equal(independent[1].tensors["latents"], outs[1].tensors["latents"])


def test_cfg_split_matches_the_batched_branches_within_float_rounding(parts):
    spec, modules = parts
    plan = SegmentPlan.build(9.0, 5.0, 1.0)
    split, _ = _run_joint(spec, modules, plan, cfg_split=True)
    batched, _ = _run_joint(spec, modules, plan)
    for a, b in zip(split, batched):
        rel = (a.tensors["latents"] - b.tensors["latents"]).norm() / b.tensors["latents"].norm()
        assert rel < 1e-5


def test_local_channel_refuses_cfg_parallel():
    with pytest.raises(RuntimeError, match="partner"):
        LocalChannel().open(0, 4, None, (1, 4, 10))


def test_cfg_pairs_in_the_schedule():
    topo = Topology.parse(["vision+fusion", "diffusion x4"], 5, cfg_parallel=True)
    group = topo.groups[-1]
    assert group.ranks == (3, 4) and group.partners == (1, 2) and topo.sink == 4
    assert [topo.branch_of(r) for r in range(5)] == [None, 0, 0, 1, 1]
    prog = build_schedule(topo, 4)
    # the upstream owner feeds both ranks of a pair, so the two branches start together
    assert [str(a) for a in prog[0]][:6] == ["C0", "^0@1", ">0@3", "C1", "^1@2", ">1@4"]
    assert [str(a) for a in prog[1]] == ["<0@0", "C0", "x0", "<2@0", "C2", "x2"]
    assert [str(a) for a in prog[3]][:3] == ["<0@0", "C0", ">0@4"]
    assert predict_makespan(topo, {"vision": 0.1, "fusion": 0.0, "diffusion": 1.0}, 4) > 0  # no deadlock
    progs = check_job(topo, [ItemPlan(3, n > 0, True) for n in range(4)])
    assert connections(progs[0]) == {"stage": [1, 2, 3, 4]}
    assert connections(progs[1]) == {"stage": [0], "step_up": [2, 3], "step_down": [2, 3]}  # tails to 2, swaps with 3
    tails = {(op.tag[1], r, op.peer) for r, ops in progs.items() for op in ops if op.tag[0] == "tail" and op.kind == "send"}
    assert tails == {(1, 3, 4), (1, 1, 2), (2, 4, 3), (2, 2, 1), (3, 3, 4), (3, 1, 2)}  # each branch along its own chain


@pytest.mark.parametrize("layout,world", [(["vision", "fusion", "diffusion x3"], 5), (["vision+fusion+diffusion x2"], 2)])
def test_cfg_parallel_needs_an_even_diffusion_only_group(layout, world):
    with pytest.raises(FoleyError, match="cfg_parallel"):
        Topology.parse(layout, world, cfg_parallel=True)


def test_same_rank_neighbours_exchange_no_messages():
    def tails(layout, world):
        progs = check_job(Topology.parse(layout, world), [ItemPlan(2, n > 0) for n in range(3)])
        return sorted({(op.tag[1], r, op.peer) for r, ops in progs.items() for op in ops
                       if op.tag[0] == "tail" and op.kind == "send"})

    assert tails(["vision+fusion", "diffusion x2"], 3) == [(1, 1, 2), (2, 2, 1)]
    assert tails(["vision+fusion+diffusion"], 1) == []


def test_coherent_stitch_keeps_a_shared_signal_at_unit_gain():
    sr = 100
    plan = SegmentPlan.build(12.0, 5.0, 1.0)
    signal = np.sin(np.arange(1200) / 7).astype(np.float32)
    st = Stitcher(plan, sr, coherent=True)
    out = np.concatenate([st.add(s.index, signal[slice(*s.sample_range(sr))]) for s in plan.segments])
    assert np.allclose(out, signal, atol=1e-6)


@pytest.mark.parametrize("seam", ["blend", "continuation"])  # continuation was retired for joint (README, Seams)
def test_unknown_seam_mode_is_rejected(parts, seam):
    spec, modules = parts
    with pytest.raises(FoleyError, match="seam="):
        DiffusionStage(spec, modules["dit"], modules["vae"], 5, 4.5, torch.device("cpu"), None, seam=seam)


def test_failed_item_still_relays_its_overlaps(parts):
    """A segment that failed upstream (e.g. a decode error) must not leave its joint neighbour waiting."""
    spec, modules = parts
    plan = SegmentPlan.build(12.0, 5.0, 1.0)
    stage = DiffusionStage(spec, modules["dit"], modules["vae"], steps=3, guidance_scale=4.5,
                           device=torch.device("cpu"), autocast_dtype=None, seam="joint")
    metas = [{"job": 0, "seed": 3, "segment": s.index, "start": s.start, "end": s.end} for s in plan.segments]
    link_neighbours(metas)
    metas[1]["error"] = "vision: cannot decode"
    out0 = stage(Message(0, _conditioning(modules["dit"], 0), metas[0]))
    failed = stage(Message(1, {}, metas[1]))
    assert failed.meta["error"] and not failed.tensors and stage.channel.held == 4  # took 0's tails, gave its own
    out2 = stage(Message(2, _conditioning(modules["dit"], 2), metas[2]))
    assert "audio" in out2.tensors and "audio" in out0.tensors and stage.channel.held == 0


def test_joint_resume_state_keeps_the_finished_prefix_and_its_tails(tmp_path):
    from types import SimpleNamespace

    from foley_dist.audio.sink import joint_resume_state, parts_dir

    job = SimpleNamespace(output=str(tmp_path / "out.wav"), key="k", plan=SegmentPlan.build(17.0, 5.0, 1.0))
    assert joint_resume_state(job) == (set(), None)
    d = parts_dir(job)
    d.mkdir()
    for n in (0, 1, 3):  # 3 finished out of order: 2 must be sampled first, so 3 is redone
        np.save(d / f"seg{n:05d}.npy", np.zeros(4, np.float32))
    tails = np.arange(6, dtype=np.float32).reshape(3, 1, 1, 2)
    np.save(d / "tails00001.npy", tails)
    kept, got = joint_resume_state(job)
    assert kept == {0, 1} and np.array_equal(got, tails)
    (d / "tails00001.npy").unlink()
    assert joint_resume_state(job) == (set(), None)  # no tails: restart the job rather than guess
