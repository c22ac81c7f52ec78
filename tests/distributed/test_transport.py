"""The Link over real gloo ranks: round trips in program order, timeouts, dead peers, back-pressure,
large payloads, per-step receives posted ahead. (The distributed suite runs in strict mode.)"""

import os
import time

import torch

from foley_dist.engine import transport
from foley_dist.engine.message import Message
from foley_dist.engine.protocol import programs_from
from tests.distributed.ranks import run_ranks


def _tensors(i: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(i)
    return {"f32": torch.randn(2, 3, 5, generator=g), "bf16": torch.randn(7, generator=g).bfloat16(),
            "mask": torch.rand(4, generator=g) > 0.5, "idx": torch.arange(i + 1), "scalar": torch.tensor(float(i))}


def _link(rank: int, messages: list, timeout_s: float = 20, **kw) -> transport.Link:
    env = transport.detect_env("cpu")
    transport.init(env, 30)
    link = transport.Link(rank, programs_from(messages).get(rank, []), env.device, timeout_s, **kw)
    link.connect()
    return link


def _ring(rank: int, world: int):
    # program order: for each i, 0 -> 1, 1 -> 2, 2 -> 0; every rank's code sends first, then receives:
    # rank 1 and 2 hold their send in memory until their receive has been posted
    link = _link(rank, [("send", ("msg", i), r, (r + 1) % world) for i in range(3) for r in range(world)])
    nxt, prv = (rank + 1) % world, (rank - 1) % world
    got = []
    for i in range(3):
        link.send_message(Message(i, _tensors(10 * rank + i), {"from": rank}), nxt)
        m = link.recv_message(i, prv)
        exp = _tensors(10 * prv + i)
        got.append(m.segment == i and m.meta == {"from": prv} and all(
            torch.equal(m.tensors[k], v) and m.tensors[k].dtype == v.dtype for k, v in exp.items()))
    link.finish()
    transport.shutdown()
    return got


def test_ring_round_trip_three_ranks_in_program_order():
    out = run_ranks(_ring, 3)
    assert all(status == "ok" and all(v) for status, v in out.values()), out


def _silent_peer(rank: int, world: int):
    link = _link(rank, [("send", ("msg", 0), 0, 1)], timeout_s=2)
    if rank == 0:
        time.sleep(6)  # never sends
        return None
    t = time.monotonic()
    try:
        link.recv_message(0, 0)
    except transport.PeerTimeout as e:
        return time.monotonic() - t, str(e)
    return "no error"


def test_recv_times_out_with_clear_error():
    out = run_ranks(_silent_peer, 2)
    waited, msg = out[1][1]
    assert 1.5 < waited < 10, waited
    assert "rank 0" in msg and "2 s" in msg


def _dying_peer(rank: int, world: int):
    link = _link(rank, [("send", ("msg", 0), 0, 1), ("send", ("msg", 1), 0, 1)], timeout_s=30)
    if rank == 0:
        link.send_message(Message(0, {"x": torch.ones(3)}), 1)
        link._wait(link._unwaited.popleft())  # delivered
        os._exit(17)  # dies without a goodbye
    link.recv_message(0, 0)
    t = time.monotonic()
    try:
        link.recv_message(1, 0)
    except transport.PeerTimeout as e:
        return time.monotonic() - t, str(e)
    return "no error"


def test_dead_peer_becomes_an_error_quickly():
    out = run_ranks(_dying_peer, 2)
    waited, msg = out[1][1]
    assert waited < 30, waited  # well before the 30 s timeout: the closed connection is detected
    assert "rank 0" in msg


def _backpressure(rank: int, world: int, bound: int):
    link = _link(rank, [("send", ("msg", i), 0, 1) for i in range(8)], timeout_s=30, max_inflight=bound)
    if rank == 0:
        peak = 0
        for i in range(8):
            link.send_message(Message(i, {"x": torch.randn(64, 1024)}), 1)
            peak = max(peak, link.held)
        link.finish()
        return peak
    for i in range(8):
        time.sleep(0.1)  # slow consumer
        assert link.recv_message(i, 0).segment == i
    link.finish()
    return None


def test_inflight_sends_are_bounded():
    out = run_ranks(_backpressure, 2, 2)
    assert out[0] == ("ok", 2), out


def _large_then_small(rank: int, world: int):
    link = _link(rank, [("send", ("msg", 0), 0, 1), ("send", ("msg", 1), 0, 1)], timeout_s=30)
    big = torch.arange(3 * transport.EAGER_BYTES // 4, dtype=torch.float32)  # 3x the eager part: needs a 2nd transfer
    if rank == 0:
        link.send_message(Message(0, {"big": big, "flag": torch.tensor([True])}), 1)
        link.send_message(Message(1, {"small": torch.ones(3)}), 1)
        link.finish()
        return None
    first = link.recv_message(0, 0)
    second = link.recv_message(1, 0)
    link.finish()
    return torch.equal(first.tensors["big"], big) and first.tensors["flag"].item() and second.segment == 1


def test_messages_larger_than_the_frame_arrive_whole_and_in_order():
    out = run_ranks(_large_then_small, 2)
    assert out[1] == ("ok", True), out


def _announced(rank: int, world: int):
    link = _link(rank, [("send", ("tail", 1, 0), 0, 1)], timeout_s=30)
    x = torch.arange(128 * 50, dtype=torch.float32).reshape(1, 128, 50)
    if rank == 0:
        link.send_step(("tail", 1, 0), x, 1)
        link.finish()
        return None
    link.expect(("tail", 1, 0), 0, (1, 128, 50))  # posted now, lands while this rank "computes"
    time.sleep(1.0)
    t = time.monotonic()
    got = link.recv_step(("tail", 1, 0), 0)
    waited = time.monotonic() - t
    link.finish()
    return waited, torch.equal(got, x)


def test_announced_per_step_receive_arrives_during_compute():
    out = run_ranks(_announced, 2)
    assert out[1][0] == "ok" and out[1][1][0] < 0.2 and out[1][1][1], out


def _out_of_order(rank: int, world: int):
    link = _link(rank, [("send", ("msg", 0), 0, 1), ("send", ("msg", 1), 0, 1)], timeout_s=5)
    if rank == 0:
        try:
            link.send_message(Message(1, {}), 1)  # its turn never comes before message 0 is produced...
            link.recv_message(7, 1)  # ...and this op is in no program
        except transport.ProtocolError as e:
            return str(e)
        return "no error"
    return None


def test_an_op_outside_the_program_is_a_clear_error():
    out = run_ranks(_out_of_order, 2)
    assert out[0][0] == "ok" and "not in this job's program" in out[0][1], out
