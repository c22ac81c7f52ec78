"""Strict point-to-point mode (FOLEY_DIST_STRICT_P2P=1) on real gloo ranks: orders that gloo forgives
but NCCL would hang on end within the timeout as one error naming every blocked rank and op."""

from __future__ import annotations

import os
import time

import torch

from foley_dist.engine import transport
from foley_dist.engine.message import Message
from foley_dist.engine.protocol import DOWN, UP, Op
from tests.distributed.ranks import run_ranks


def _start(rank: int, program: list[Op], strict: bool, timeout_s: float, connect: bool = True) -> transport.Link:
    os.environ["FOLEY_DIST_STRICT_P2P"] = "1" if strict else "0"
    env = transport.detect_env("cpu")
    transport.init(env, 30)
    link = transport.Link(rank, program, env.device, timeout_s)
    if connect:
        link.connect()
    return link


def _crossing(rank: int, world: int, strict: bool):
    """Both ranks send, then receive: gloo completes it, a rendezvous send in posting order cannot."""
    mine, theirs = ("msg", rank), ("msg", 1 - rank)
    link = _start(rank, [Op(0, "send", mine, 1 - rank, "stage"), Op(1, "recv", theirs, 1 - rank, "stage")], strict, 4)
    t = time.monotonic()
    try:
        link.send_message(Message(rank, {"x": torch.ones(4)}), 1 - rank)
        got = link.recv_message(1 - rank, 1 - rank)
        link.finish()
        return "completed", time.monotonic() - t, got.segment
    except transport.PeerTimeout as e:
        waited = time.monotonic() - t
        time.sleep(3)  # stay alive until the peer's own timeout fires: exiting would close its pending gloo op first
        return "error", waited, str(e)


def test_a_crossing_exchange_completes_on_gloo_but_is_a_deadlock_error_in_strict_mode():
    out = run_ranks(_crossing, 2, False)
    assert [out[r][1][0] for r in (0, 1)] == ["completed", "completed"], out
    out = run_ranks(_crossing, 2, True)
    for r in (0, 1):
        status, (what, waited, text) = out[r]
        assert status == "ok" and what == "error", out
        assert 3.5 < waited < 12, waited  # the 4 s timeout, not a hang
        assert "strict point-to-point mode" in text and "deadlocks" in text
        assert "rank 0: stream at send item 0 -> rank 1" in text and "rank 1: stream at send item 1 -> rank 0" in text


def _first_contact(rank: int, world: int):
    """Each rank's first op toward the other is a receive, on the group of its direction (CFG swaps
    before this issue): NCCL blocks both in connection set-up, as neither posts on the other's group."""
    tag, group = (("tail", 1, 0), DOWN) if rank == 0 else (("tail", 0, 0), UP)
    link = _start(rank, [Op(0, "recv", tag, 1 - rank, group)], True, 3, connect=False)
    t = time.monotonic()
    try:
        link.expect(tag, 1 - rank, (4,))
        return "posted", time.monotonic() - t
    except transport.PeerTimeout as e:
        return "error", time.monotonic() - t, str(e)


def test_a_first_contact_cycle_is_caught_at_posting():
    out = run_ranks(_first_contact, 2)
    for r in (0, 1):
        status, (what, waited, text) = out[r]
        assert status == "ok" and what == "error", out
        assert 2.5 < waited < 12, waited
        assert f"rank {r} posted its first op toward rank {1 - r}" in text and "first contact" in text
