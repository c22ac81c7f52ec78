"""Replicated stages on real gloo ranks with synthetic stages: re-ordering and back-pressure."""

from __future__ import annotations

import time

import torch.distributed as dist

from foley_dist import synthetic
from foley_dist.engine import protocol, transport
from foley_dist.engine.metrics import Recorder
from foley_dist.engine.pipeline import execute
from foley_dist.engine.schedule import Topology, build_schedule
from tests.distributed.ranks import run_ranks

REPLICATED = ["vision+fusion", "diffusion x3"]


def _synthetic(rank: int, world: int, *args) -> synthetic.RankResult:
    return synthetic.run_rank(*args)


def _spans(result: synthetic.RankResult, name: str) -> dict[int, tuple[float, float]]:
    """item -> (start, end) of this rank's `name` spans, in unix seconds."""
    o = result.stats.origin_unix
    return {s.item: (o + s.start, o + s.start + s.dur) for s in result.stats.spans if s.name == name}


def test_slow_replica_completes_out_of_order_and_sink_reorders():
    # margins of tenths of a second: on a loaded 2-core machine a 0.08 s stage lost its order to noise
    costs = {"vision": 0.01, "fusion": 0.005, "diffusion": 0.25}
    out = run_ranks(_synthetic, 4, REPLICATED, costs, 9, {1: 4.0}, timeout=90)
    assert all(status == "ok" for status, _ in out.values()), out
    res = {r: v for r, (_, v) in out.items()}
    done = {n: end for r in (1, 2, 3) for n, (_, end) in _spans(res[r], "diffusion").items()}
    assert done[1] < done[0] and done[4] < done[3]  # the slow replica (rank 1) finishes items late
    assert res[3].received == [(n, synthetic.expected_audio_value(n), True) for n in range(9)]


class _Watched(transport.Link):
    """Link that records, after every send returns, how many sends it still holds."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.after_send: list[tuple[int, float, int]] = []  # (item, unix time, held)

    def send_message(self, msg, dst):
        super().send_message(msg, dst)
        self.after_send.append((msg.segment, time.time(), self.held))


def _backpressure(rank: int, world: int, costs: dict[str, float], num_items: int, bound: int):
    env = transport.detect_env("cpu")
    topo = Topology.parse(["vision+fusion", "diffusion"], world)
    transport.init(env, 30)
    programs = protocol.check_job(topo, [protocol.ItemPlan()] * num_items, costs)
    link = _Watched(rank, programs[rank], env.device, 30, bound, step_messages=False)
    link.connect()
    sink = synthetic.RecordingSink() if rank == topo.sink else None
    rec = Recorder(rank, list(topo.stages_of(rank)), env.device)
    dist.barrier()
    stages = synthetic.build_stages(topo.stages_of(rank), costs)
    execute(build_schedule(topo, num_items)[rank], stages, synthetic.work_items(num_items), link, rec, sink)
    link.finish()
    o = rec.stats.origin_unix
    received = sorted(o + s.start + s.dur for s in rec.stats.spans if s.name == "recv" and s.item >= 0)
    transport.shutdown()
    return link.after_send if sink is None else received


def test_fast_first_stage_is_held_back_by_a_slow_last_stage():
    costs = {"vision": 0.002, "fusion": 0.002, "diffusion": 0.15}
    bound, items = 2, 10
    out = run_ranks(_backpressure, 2, costs, items, bound, timeout=60)
    assert all(status == "ok" for status, _ in out.values()), out
    sends, received = out[0][1], out[1][1]
    assert max(inflight for *_, inflight in sends[:items]) <= bound
    # Without back-pressure rank 0 would send everything in ~40 ms. With it, when the send of item
    # n returns, the consumer has taken all but a few of items 0..n; outside strict mode gloo lets a
    # message that fits in the socket buffers count as delivered, hence the slack of 2 over the bound.
    for item, at, _ in sends[:items]:
        taken = sum(t <= at for t in received)
        assert item + 1 - taken <= bound + 2, (item, taken, sends, received)
    assert sends[items - 1][1] - sends[0][1] > (items - bound - 3) * costs["diffusion"]
