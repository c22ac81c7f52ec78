"""The point-to-point protocol as data: every job's programs complete under NCCL's rules (the
verifier's sweep over layouts, segment counts and seam modes), and the verifier does catch the
orders that deadlock — among them the protocol foley_dist had before (receives pre-posted at an
item's start, a CFG swap as receive-then-send, end-of-stream to every peer, no start-up connection)."""

from __future__ import annotations

import pytest

from foley_dist.engine.protocol import (
    Event,
    ItemPlan,
    Op,
    ProtocolDeadlock,
    build_programs,
    check_job,
    code_events,
    step_group,
    verify,
)
from foley_dist.engine.autolayout import every_topology
from foley_dist.engine.schedule import Topology
from foley_dist.errors import FoleyError

COSTS = {"vision": 1.0, "fusion": 0.2, "diffusion": 5.0}


def job(topo: Topology, n: int, seam: str, steps: int = 2) -> tuple[dict, dict]:
    items = [ItemPlan(steps, seam == "joint" and i > 0, bool(topo.groups[-1].partners)) for i in range(n)]
    events = code_events(topo, items, COSTS)
    return events, build_programs(events)


SEGMENTS = (1, 2, 3, 4, 5, 6, 8, 11, 16, 23, 30)


@pytest.mark.parametrize("world", range(1, 17))
def test_every_layout_completes_under_nccl_rules(world):
    """Every layout of `world` ranks (each grouping of the stages, each replica count, CFG pairs and
    layer splits where the last group allows them; a multi-node run maps the same rank list onto
    hosts) x segment counts x both seam modes (scripts/verify_protocol.py sweeps every count 1..30 and prints the coverage table)."""
    assert every_topology(world)
    for n in (range(1, 31) if world <= 4 else SEGMENTS):
        for topo in every_topology(world, n):
            for seam in ("joint", "crossfade"):
                verify(*job(topo, n, seam))


@pytest.mark.parametrize("layout,world,cfg,n", [
    (["vision+fusion", "diffusion x3"], 4, False, 24),  # more replicas than one backlog step
    (["vision", "fusion", "diffusion x8"], 10, True, 30),  # 4 CFG pairs, joint
    (["vision+fusion+diffusion x6"], 6, False, 13),
])
def test_real_step_counts_complete(layout, world, cfg, n):
    events, programs = job(Topology.parse(layout, world, cfg), n, "joint", steps=50)
    assert verify(events, programs).ops == sum(len(p) for p in programs.values()) // 2


def test_programs_post_in_key_order_and_both_ends_share_each_key():
    events, programs = job(Topology.parse(["vision", "fusion", "diffusion x4"], 6, True), 9, "joint", steps=5)
    ends: dict[int, list[tuple[int, Op]]] = {}
    for r, ops in programs.items():
        assert [o.key for o in ops] == sorted(o.key for o in ops)
        for o in ops:
            ends.setdefault(o.key, []).append((r, o))
    for key, pair in ends.items():
        (a, x), (b, y) = pair
        assert (x.peer, y.peer, x.tag) == (b, a, y.tag) and {x.kind, y.kind} in ({"send", "recv"}, {"swap"})


def test_a_crossing_exchange_is_caught():
    # each rank sends first, then receives: fine on gloo, a deadlock when a send waits for its receive
    events = {0: [Event("send", ("msg", 0), 1), Event("recv", ("msg", 1), 1)],
              1: [Event("send", ("msg", 1), 0), Event("recv", ("msg", 0), 0)]}
    programs = {0: [Op(0, "send", ("msg", 0), 1, "stage"), Op(1, "recv", ("msg", 1), 1, "stage")],
                1: [Op(1, "send", ("msg", 1), 0, "stage"), Op(0, "recv", ("msg", 0), 0, "stage")]}
    with pytest.raises(ProtocolDeadlock, match=r"rank 0 at send item 0 -> rank 1.*rank 1 at send item 1 -> rank 0"):
        verify(events, programs)
    assert issubclass(ProtocolDeadlock, FoleyError) and ProtocolDeadlock.exit_code == 2  # refused before any work
    programs[1].reverse()  # the same messages in key order on both ranks
    assert verify(events, programs).ops == 2


def test_check_job_refuses_a_program_that_disagrees_with_the_code():
    events, programs = job(Topology.parse(["vision+fusion", "diffusion x2"], 3, True), 2, "joint")
    programs[1] = programs[1][1:] + programs[1][:1]
    with pytest.raises(ProtocolDeadlock):
        verify(events, programs)
    assert check_job(Topology.parse(["vision+fusion", "diffusion x2"], 3, True), [ItemPlan(2, i > 0, True) for i in range(2)])


# --- the protocol before issue 17, as the verifier sees it -------------------------------------------

def _old_peers(topo: Topology, rank: int) -> tuple[list[int], list[int]]:
    """Old end-of-stream peers: every rank of the neighbouring groups (and the sink's replicas)."""
    up, down = set(), set()
    for g, group in enumerate(topo.groups):
        if rank in group.partners:
            up |= set(topo.groups[g - 1].ranks)
        if rank not in group.ranks:
            continue
        if g > 0:
            up |= set(topo.groups[g - 1].ranks)
        if g < len(topo.groups) - 1:
            down |= set(topo.groups[g + 1].ranks) | set(topo.groups[g + 1].partners)
        elif rank != topo.sink:
            down.add(topo.sink)
        if g == len(topo.groups) - 1 and rank == topo.sink:
            up |= {r for r in group.ranks if r != rank}
    return sorted(up), sorted(down)


def old_protocol(layout, world, cfg, n, seam):
    """Each rank posted in its code order, except that an item's per-step receives (overlaps, the
    partner's velocities) were all posted when the item opened; a swap was a send plus that receive;
    end-of-stream went to every neighbouring rank; no pair was connected at start-up."""
    topo = Topology.parse(layout, world, cfg)
    events = code_events(topo, [ItemPlan(2, seam == "joint" and i > 0, cfg) for i in range(n)], COSTS)
    keys: dict[tuple, int] = {}

    def op(kind, tag, me, peer, group):
        msg = (tag, me, peer) if kind == "send" else (tag, peer, me)
        return Op(keys.setdefault(msg, len(keys)), kind, tag, peer, group)

    out_events, programs = {}, {}
    for r, evs in events.items():
        split = []
        for e in evs:
            if e.kind == "swap":
                split += [Event("send", ("v", *e.tag[1:]), e.peer, step_group(r, e.peer)),
                          Event("recv", ("v", *e.tag[1:]), e.peer, step_group(e.peer, r))]
            else:
                split.append(e)
        up, down = _old_peers(topo, r)
        split += [Event("send", ("end",), p) for p in down] + [Event("recv", ("end",), p) for p in up]
        prog, opened = [], set()
        for e in split:
            if e.kind == "work" or (e.kind == "recv" and e.tag[0] in ("tail", "v")):
                item = e.tag[1] if e.kind == "recv" else None
                if item is not None and item not in opened:  # StepLinks.open posted them all
                    opened.add(item)
                    prog += [op("recv", x.tag, r, x.peer, x.group) for x in split
                             if x.kind == "recv" and x.tag[0] in ("tail", "v") and x.tag[1] == item]
                continue
            prog.append(op(e.kind, e.tag, r, e.peer, e.group))
        out_events[r], programs[r] = split, prog
    return out_events, programs


@pytest.mark.parametrize("layout,world,cfg,n", [
    (["vision+fusion", "diffusion x3"], 4, False, 5),  # joint over replicas
    (["vision+fusion", "diffusion x2"], 3, True, 2),  # a CFG pair
    (["vision", "fusion", "diffusion x3"], 5, False, 1),  # a 4 s clip on a wide layout: end-of-stream
])
def test_the_old_protocol_deadlocks_under_nccl_rules(layout, world, cfg, n):
    events, programs = old_protocol(layout, world, cfg, n, "joint")
    with pytest.raises(ProtocolDeadlock, match="deadlock under NCCL's rules"):
        verify(events, programs, connect_first=False)


def test_the_old_protocol_was_fine_on_a_linear_pipeline():
    events, programs = old_protocol(["vision", "fusion", "diffusion"], 3, False, 6, "joint")
    verify(events, programs, connect_first=False)
