"""The job's point-to-point protocol as data: every rank's ops in the one order that is safe under NCCL.

NCCL is far stricter than gloo (the rules are in docs/DESIGN.md, "Point-to-point protocol"): a
communicator's ops complete in the order a rank posted them, a send may wait until its receive is
posted, and the first op between two ranks blocks until the peer posts toward it. Under those rules
two ranks that each post in their own natural order (receives first, sends when produced) deadlock
as soon as their exchanges cross. So the order is not left to the code path: every message of a job
gets one global `key`, and every rank posts its ops in increasing key order. Then the pending op
with the smallest key is at the head of both of its ranks' queues, so it completes: no order of
events can deadlock, whatever the backend queues. Keys come from replaying the code's own event
order (the schedule plus the per-step exchanges of joint sampling and CFG pairs) in a discrete-event
simulation with the stages' relative costs; a message's key is the simulated moment its receiver
takes it. A sender posts a message when its key comes up, possibly long after producing it (it is
held in memory until then), so a rank never blocks on a peer that is busy with something else.

`verify` replays the programs under NCCL's rules (in posting order, rendezvous sends, first-contact
connection) and proves a job completes; the runtime checks its own job this way before any work,
and the unit tests sweep layouts, segment counts and seam modes. This module is plain data: no
process group, no model.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Sequence
from dataclasses import dataclass

from foley_dist.engine.schedule import Action, Topology, build_schedule
from foley_dist.errors import FoleyError

STAGE, UP, DOWN = "stage", "step_up", "step_down"  # process groups: stage messages; per-step messages by direction


@dataclass(frozen=True)
class ItemPlan:
    """What the protocol needs to know of one work item (segment)."""

    steps: int = 0  # sampling steps with per-step messages (0: the diffusion stage exchanges nothing)
    joined: bool = False  # continues the previous item (seam=joint): takes its overlap at every step
    swap: bool = False  # CFG-parallel: the pair swaps branch velocities at every step


@dataclass(frozen=True)
class Op:
    """One point-to-point op of one rank. kind: send | recv | swap (a send and a receive to/from the
    same peer posted together, as NCCL's grouped send/recv). `tag` names the message: ("msg", item),
    ("tail", item, step) — the overlap item-1 hands to item at that step — or ("swap", item, step)."""

    key: int
    kind: str
    tag: tuple
    peer: int
    group: str

    def __str__(self) -> str:
        arrow = {"send": "->", "recv": "<-", "swap": "<->"}[self.kind]
        return f"{self.kind} {_tag(self.tag)} {arrow} rank {self.peer} [{self.group}]"


def _tag(tag: tuple) -> str:
    if tag[0] == "msg":
        return f"item {tag[1]}"
    if len(tag) == 3:
        return f"{tag[0]} of item {tag[1]} step {tag[2]}"
    return " ".join(map(str, tag))


class ProtocolDeadlock(FoleyError):
    """A job's point-to-point order cannot complete under NCCL's rules (refused before any work)."""


def step_group(src: int, dst: int) -> str:
    """Per-step messages travel on the group of their direction (a swap's halves on separate connections)."""
    return UP if dst > src else DOWN


# ---------------------------------------------------------------------------------------------------
# The code's own event order per rank (what pipeline.execute and the diffusion stage do, in order)


@dataclass(frozen=True)
class Event:
    kind: str  # send | recv | swap | work
    tag: tuple = ()
    peer: int = -1
    group: str = STAGE
    cost: float = 0.0


def chain_owner(topo: Topology, rank: int):
    """Owner of each item in `rank`'s CFG branch: per-step overlaps flow along one branch."""
    group = topo.groups[-1]
    return group.partner if topo.branch_of(rank) == 0 else group.owner


def code_events(topo: Topology, items: Sequence[ItemPlan], costs: dict[str, float]) -> dict[int, list[Event]]:
    """Every rank's communication and work in the order its code performs them."""
    schedule = build_schedule(topo, len(items))
    group = topo.groups[-1]
    out: dict[int, list[Event]] = {}
    for rank, actions in schedule.items():
        ev: list[Event] = []
        for a in actions:
            if a.kind == "recv":
                ev.append(Event("recv", ("msg", a.item), a.peer))
            elif a.kind in ("send", "fork"):
                ev.append(Event("send", ("msg", a.item), a.peer))
            elif a.kind == "compute":
                for stage in topo.stages_of(rank):
                    if stage == "diffusion" and topo.split_role(rank) is not None:
                        ev += _window_events(topo, items, a, rank, costs.get(stage, 1.0))
                    elif stage == "diffusion":
                        ev += _diffusion_events(topo, items, a.item, rank, costs.get(stage, 1.0), group)
                    else:
                        ev.append(Event("work", cost=costs.get(stage, 1.0)))
        out[rank] = ev
    return out


def _diffusion_events(topo: Topology, items: Sequence[ItemPlan], n: int, rank: int, cost: float, group) -> list[Event]:
    plan = items[n]
    if not plan.steps or not (plan.joined or plan.swap or (n + 1 < len(items) and items[n + 1].joined)):
        return [Event("work", cost=cost)]
    owner = chain_owner(topo, rank)
    prev = owner(n - 1) if plan.joined else None
    nxt = owner(n + 1) if n + 1 < len(items) and items[n + 1].joined else None
    partner = group.partner(n) if rank == group.owner(n) else group.owner(n)
    step_cost = 0.95 * cost / plan.steps
    ev: list[Event] = []
    for step in range(plan.steps + 1):
        if prev is not None and prev != rank:
            ev.append(Event("recv", ("tail", n, step), prev, step_group(prev, rank)))
        if nxt is not None and nxt != rank:
            ev.append(Event("send", ("tail", n + 1, step), nxt, step_group(rank, nxt)))
        if step < plan.steps:
            if plan.swap:
                ev += [Event("work", cost=step_cost / 2), Event("swap", ("swap", n, step), partner, "step")]
            else:
                ev.append(Event("work", cost=step_cost))
    if not (plan.swap and rank != group.owner(n)):  # the partner does not decode
        ev.append(Event("work", cost=0.05 * cost))
    return ev


def window_order(steps: Sequence[int], first: bool) -> list[tuple[int, int]]:
    """The order in which a member of a split pipeline works on its window: (position in the window,
    step) pairs, tick by tick; at tick t the item at position k runs step t - k, so every item runs
    one step behind the one before it (the joint wavefront) and, with as many items as block ranges,
    every range has work at every tick. The first member also runs a last pseudo-step per item
    (step == steps: the final overlap exchange and the audio decoder)."""
    extra = int(first)
    ticks = max((n + extra + k for k, n in enumerate(steps)), default=0)
    return [(k, t - k) for t in range(ticks) for k, n in enumerate(steps) if 0 <= t - k < n + extra]


def split_peers(topo: Topology, rank: int) -> tuple[int, int]:
    """(previous, next) member of `rank`'s split pipeline, in a ring: the first receives the latents
    back from the last."""
    position, count = topo.split_role(rank)
    first = rank - position
    return first + (position - 1) % count, first + (position + 1) % count


def _window_events(topo: Topology, items: Sequence[ItemPlan], compute: Action, rank: int, cost: float) -> list[Event]:
    """A split pipeline member's events for a window (models/split.py runs exactly this order).
    An item's stage message (from its source) is received as the item enters, before its first
    step. Per item and step: member j receives ("split", item, step) from j-1 and sends it to j+1;
    the last sends the step's latents back to the first, which receives them before the item's next
    step and makes the joint overlap exchange with the neighbouring items' owners."""
    position, count = topo.split_role(rank)
    prev, nxt = split_peers(topo, rank)
    owner = topo.groups[-1].owner
    window = compute.window
    plans = [items[n] for n in window]
    range_cost = 0.95 * cost / count
    ev: list[Event] = []
    for k, step in window_order([p.steps for p in plans], position == 0):
        n, plan = window[k], plans[k]
        if step == 0:
            ev.append(Event("recv", ("msg", n), compute.sources[k]))
        if position:
            ev += [Event("recv", ("split", n, step), prev, step_group(prev, rank)), Event("work", cost=range_cost / plan.steps),
                   Event("send", ("split", n, step), nxt, step_group(rank, nxt))]
            continue
        if step:
            ev.append(Event("recv", ("split", n, step - 1), prev, step_group(prev, rank)))
        if plan.joined and owner(n - 1) != rank:
            ev.append(Event("recv", ("tail", n, step), owner(n - 1), step_group(owner(n - 1), rank)))
        if n + 1 < len(items) and items[n + 1].joined and owner(n + 1) != rank:
            ev.append(Event("send", ("tail", n + 1, step), owner(n + 1), step_group(rank, owner(n + 1))))
        if step == plan.steps:
            ev.append(Event("work", cost=0.05 * cost))
        else:
            ev += [Event("work", cost=range_cost / plan.steps), Event("send", ("split", n, step), nxt, step_group(rank, nxt))]
    return ev


# ---------------------------------------------------------------------------------------------------
# Keys: a discrete-event replay of the code order with buffered messages


def _message(e: Event, rank: int) -> tuple:
    if e.kind == "swap":
        return (e.tag, min(rank, e.peer), max(rank, e.peer))
    return (e.tag, rank, e.peer) if e.kind == "send" else (e.tag, e.peer, rank)


def assign_keys(events: dict[int, list[Event]]) -> dict[tuple, int]:
    """Key of every message: the order in which receivers take them when every rank runs its code
    with the given costs and messages are buffered (no rendezvous)."""
    heap = [(0.0, r) for r in sorted(events)]
    pos = {r: 0 for r in events}
    clock = {r: 0.0 for r in events}
    sent: dict[tuple, float] = {}
    waiting: dict[tuple, int] = {}  # message -> rank blocked on it
    arrived: dict[tuple, tuple[int, float]] = {}  # swap -> (first rank, its time)
    keys: dict[tuple, int] = {}
    counter = itertools.count()
    while heap:
        now, r = heapq.heappop(heap)
        clock[r] = max(clock[r], now)
        while pos[r] < len(events[r]):
            e = events[r][pos[r]]
            if e.kind == "work":
                pos[r] += 1
                clock[r] += e.cost
                heapq.heappush(heap, (clock[r], r))
                break
            m = _message(e, r)
            if e.kind == "send":
                sent[m] = clock[r]
                pos[r] += 1
                if m in waiting:
                    heapq.heappush(heap, (clock[r], waiting.pop(m)))
            elif e.kind == "recv":
                if m not in sent:
                    waiting[m] = r
                    break
                keys[m] = next(counter)
                pos[r] += 1
            else:  # swap: both ranks arrive, both leave at the later time
                if m in keys:
                    pos[r] += 1
                    continue
                if m not in arrived:
                    arrived[m] = (r, clock[r])
                    break
                other, _ = arrived.pop(m)
                keys[m] = next(counter)
                pos[r] += 1
                heapq.heappush(heap, (clock[r], other))
    stuck = {r: str(events[r][pos[r]]) for r in events if pos[r] < len(events[r])}
    if stuck:
        raise ProtocolDeadlock(f"the schedule itself cannot complete (ranks stuck at {stuck}); this is a bug in foley_dist")
    return keys


def build_programs(events: dict[int, list[Event]]) -> dict[int, list[Op]]:
    """Every rank's point-to-point ops of the job (from its code events), in the key order in which it
    must post them."""
    keys = assign_keys(events)
    progs: dict[int, list[Op]] = {r: [] for r in events}
    for r, ev in events.items():
        for e in ev:
            if e.kind in ("send", "recv", "swap"):
                progs[r].append(Op(keys[_message(e, r)], e.kind, e.tag, e.peer, e.group))
    for ops in progs.values():
        ops.sort(key=lambda op: op.key)
    return progs


def programs_from(messages: Sequence[tuple[str, tuple, int, int]]) -> dict[int, list[Op]]:
    """Programs for an explicit order of messages (kind "send" src -> dst, or "swap" between the two),
    key = position: for tests and benchmarks that exchange outside a pipeline schedule."""
    progs: dict[int, list[Op]] = {}
    for key, (kind, tag, src, dst) in enumerate(messages):
        group = STAGE if tag[0] == "msg" else ("step" if kind == "swap" else step_group(src, dst))
        progs.setdefault(src, []).append(Op(key, kind, tag, dst, group))
        progs.setdefault(dst, []).append(Op(key, "swap" if kind == "swap" else "recv", tag, src, group))
    return progs


def connections(program: Sequence[Op]) -> dict[str, list[int]]:
    """Peers of one rank per process group, for the start-up connection of every pair the job uses.
    A swap uses both step groups: its send and receive travel on the group of their direction."""
    out: dict[str, set[int]] = {}
    for op in program:
        groups = (UP, DOWN) if op.kind == "swap" else (op.group,)
        for g in groups:
            out.setdefault(g, set()).add(op.peer)
    return {g: sorted(p) for g, p in out.items()}


# ---------------------------------------------------------------------------------------------------
# The verifier: replay programs under NCCL's rules


@dataclass
class Replay:
    """Outcome of `verify`: the point-to-point ops (message pairs) that completed."""

    ops: int


def verify(events: dict[int, list[Event]], programs: dict[int, list[Op]], connect_first: bool = True) -> Replay:
    """Prove that the ranks complete when each posts `programs[rank]` in order and runs its code events.

    Rules (NCCL's worst case): a rank's ops complete one at a time in posting order, across all its
    groups; a send completes only together with its receive (rendezvous), a swap with the peer's swap;
    a send is posted only once the code has produced it (after the receives that precede it in code
    order completed), a receive once the code asks for it. With `connect_first=False` (no start-up
    connection) an op between two ranks on a group also waits until each has posted toward the other
    there (NCCL's lazy connection; that the posting thread blocks meanwhile is not modelled). Raises
    ProtocolDeadlock naming every blocked rank and op."""
    ranks = sorted(events)
    cpu = {r: 0 for r in ranks}  # index into code events
    head = {r: 0 for r in ranks}  # index into program
    produced: dict[int, set[tuple]] = {r: set() for r in ranks}
    asked: dict[int, set[tuple]] = {r: set() for r in ranks}
    done: dict[int, set[tuple]] = {r: set() for r in ranks}
    contacted: set[tuple[int, int, str]] = set()  # (rank, peer, group) where rank has posted toward peer
    where = {r: {(op.tag, op.peer, op.kind): i for i, op in enumerate(programs[r])} for r in ranks}
    for r in ranks:  # each code event must be exactly one program op
        wanted = sorted((e.tag, e.peer, e.kind) for e in events[r] if e.kind != "work")
        if wanted != sorted(where[r]) or len(wanted) != len(programs[r]):
            raise ProtocolDeadlock(f"rank {r}: its program and its code events differ; this is a bug in foley_dist")
    if connect_first:  # the start-up exchange connected every pair a program uses
        contacted = {(r, p, g) for r in ranks for g, peers in connections(programs[r]).items() for p in peers}
    total = 0
    while True:
        moved = False
        for r in ranks:  # run each rank's code until it waits
            while cpu[r] < len(events[r]):
                e = events[r][cpu[r]]
                ident = (e.tag, e.peer, e.kind)
                if e.kind == "work":
                    cpu[r] += 1
                elif e.kind == "send":
                    produced[r].add(ident)
                    cpu[r] += 1
                else:
                    asked[r].add(ident)
                    if ident not in done[r]:
                        break
                    cpu[r] += 1
                moved = True
        for r in ranks:  # first contact: the op at the head is posted only once the peer posted toward us
            if head[r] < len(programs[r]):
                op = programs[r][head[r]]
                if _postable(op, produced[r], asked[r]):
                    for g in ((UP, DOWN) if op.kind == "swap" else (op.group,)):
                        contacted.add((r, op.peer, g))
        for r in ranks:  # rendezvous of the two heads
            if head[r] >= len(programs[r]):
                continue
            op = programs[r][head[r]]
            p = op.peer
            if head[p] >= len(programs[p]):
                continue
            other = programs[p][head[p]]
            if other.key != op.key or r > p:
                continue
            if not (_postable(op, produced[r], asked[r]) and _postable(other, produced[p], asked[p])):
                continue
            groups = (UP, DOWN) if op.kind == "swap" else (op.group,)
            if not all((p, r, g) in contacted and (r, p, g) in contacted for g in groups):
                continue
            done[r].add((op.tag, op.peer, op.kind))
            done[p].add((other.tag, other.peer, other.kind))
            head[r] += 1
            head[p] += 1
            total += 1
            moved = True
        if all(cpu[r] == len(events[r]) and head[r] == len(programs[r]) for r in ranks):
            return Replay(total)
        if not moved:
            raise ProtocolDeadlock(deadlock_report(events, programs, cpu, head))


def _postable(op: Op, produced: set, asked: set) -> bool:
    ident = (op.tag, op.peer, op.kind)
    return ident in produced if op.kind == "send" else ident in asked


def deadlock_report(events, programs, cpu, head) -> str:
    blocked = []
    for r in sorted(events):
        if head[r] < len(programs[r]):
            what = f"rank {r} at {programs[r][head[r]]}"
            if cpu[r] < len(events[r]):
                e = events[r][cpu[r]]
                what += f" (its code waits on {e.kind} {_tag(e.tag)} with rank {e.peer})"
            blocked.append(what)
    return ("point-to-point deadlock under NCCL's rules: " + "; ".join(blocked)
            + ". Each rank posts its ops in this order and none can complete")


def check_job(topo: Topology, items: Sequence[ItemPlan], costs: dict[str, float] | None = None) -> dict[int, list[Op]]:
    """The job's programs, verified; a job whose order would deadlock under NCCL is refused (exit 2)."""
    events = code_events(topo, items, costs or {"vision": 1.0, "fusion": 1.0, "diffusion": 1.0})
    programs = build_programs(events)
    verify(events, programs)
    return programs
