"""Transport over real gloo ranks: round trips, timeouts, dead peers, back-pressure."""

import os
import time

import torch

from foley_dist.engine import transport
from foley_dist.engine.message import Message
from tests.distributed.ranks import run_ranks


def _tensors(i: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(i)
    return {"f32": torch.randn(2, 3, 5, generator=g), "bf16": torch.randn(7, generator=g).bfloat16(),
            "mask": torch.rand(4, generator=g) > 0.5, "idx": torch.arange(i + 1), "scalar": torch.tensor(float(i))}


def _ring(rank: int, world: int):
    env = transport.detect_env("cpu")
    transport.init(env, 20)
    tr = transport.Transport(env.device, 20)
    nxt, prv = (rank + 1) % world, (rank - 1) % world
    got = []
    for i in range(3):  # each rank sends to the next and receives from the previous
        tr.send(Message(i, _tensors(10 * rank + i), {"from": rank}), nxt)
        m = tr.recv(prv)
        exp = _tensors(10 * prv + i)
        got.append(m.segment == i and m.meta == {"from": prv} and all(
            torch.equal(m.tensors[k], v) and m.tensors[k].dtype == v.dtype for k, v in exp.items()))
    tr.send(Message.end(), nxt)
    end = tr.recv(prv)
    tr.flush()
    transport.shutdown()
    return got + [end.is_end]


def test_ring_round_trip_three_ranks():
    out = run_ranks(_ring, 3)
    assert all(status == "ok" and all(v) for status, v in out.values()), out


def _silent_peer(rank: int, world: int):
    env = transport.detect_env("cpu")
    transport.init(env, 30)
    tr = transport.Transport(env.device, timeout_s=2)
    if rank == 0:
        time.sleep(6)  # never sends
        return None
    t = time.monotonic()
    try:
        tr.recv(0)
    except transport.PeerTimeout as e:
        return time.monotonic() - t, str(e)
    return "no error"


def test_recv_times_out_with_clear_error():
    out = run_ranks(_silent_peer, 2)
    waited, msg = out[1][1]
    assert 1.5 < waited < 10, waited
    assert "rank 0" in msg and "2 s" in msg


def _dying_peer(rank: int, world: int):
    env = transport.detect_env("cpu")
    transport.init(env, 30)
    tr = transport.Transport(env.device, timeout_s=30)
    if rank == 0:
        tr.send(Message(0, {"x": torch.ones(3)}), 1)
        tr.flush()
        os._exit(17)  # dies without a goodbye
    tr.recv(0)
    t = time.monotonic()
    try:
        tr.recv(0)
    except transport.PeerTimeout as e:
        return time.monotonic() - t, str(e)
    return "no error"


def test_dead_peer_becomes_an_error_quickly():
    out = run_ranks(_dying_peer, 2)
    waited, msg = out[1][1]
    assert waited < 30, waited  # well before the 30 s timeout: the closed connection is detected
    assert "rank 0" in msg


def _backpressure(rank: int, world: int, bound: int):
    env = transport.detect_env("cpu")
    transport.init(env, 30)
    tr = transport.Transport(env.device, timeout_s=30, max_inflight=bound)
    if rank == 0:
        peak = 0
        for i in range(8):
            tr.send(Message(i, {"x": torch.randn(64, 1024)}), 1)
            peak = max(peak, tr.inflight)
        tr.flush()
        return peak
    for i in range(8):
        time.sleep(0.1)  # slow consumer
        assert tr.recv(0).segment == i
    return None


def test_inflight_sends_are_bounded():
    out = run_ranks(_backpressure, 2, 2)
    assert out[0] == ("ok", 2), out


def _large_then_small(rank: int, world: int):
    env = transport.detect_env("cpu")
    transport.init(env, 30)
    tr = transport.Transport(env.device, timeout_s=30)
    big = torch.arange(3 * transport.EAGER_BYTES // 4, dtype=torch.float32)  # 3x the eager part: needs a 2nd transfer
    if rank == 0:
        tr.send(Message(0, {"big": big, "flag": torch.tensor([True])}), 1)
        tr.send(Message(1, {"small": torch.ones(3)}), 1)
        tr.flush()
        return None
    tr.prefetch(0)
    first = tr.recv(0)
    tr.prefetch(0)  # posted only after the first message's remainder: frames never match a payload
    second = tr.recv(0)
    return torch.equal(first.tensors["big"], big) and first.tensors["flag"].item() and second.segment == 1


def test_messages_larger_than_the_frame_and_prefetch_in_order():
    out = run_ranks(_large_then_small, 2)
    assert out[1] == ("ok", True), out


def _overlap(rank: int, world: int):
    env = transport.detect_env("cpu")
    transport.init(env, 30)
    tr = transport.Transport(env.device, timeout_s=30)
    if rank == 0:
        tr.send(Message(0, {"x": torch.randn(transport.EAGER_BYTES // 8)}), 1)  # lands in the eager part
        tr.flush()
        return None
    tr.prefetch(0)
    time.sleep(1.0)  # "compute" while the message travels
    t = time.monotonic()
    tr.recv(0)
    return time.monotonic() - t


def test_prefetched_message_arrives_during_compute():
    out = run_ranks(_overlap, 2)
    assert out[1][0] == "ok" and out[1][1] < 0.2, out  # nothing left to transfer after the "compute"
