"""The scheduling model as code: predicted makespan of a layout, and the best layout for WORLD_SIZE.

A layout's makespan is predicted by replaying the exact static schedule the ranks execute
(schedule.build_schedule) with fixed per-segment stage costs: a rank's compute of a group costs the
sum of its stages' costs, a receive is posted when the rank reaches it and completes `comm_s` after
both it and the matching send are posted (transport.Link: stage messages are received just in time,
a send moves once its receive is posted), and a send blocks while more than `max_inflight` of the
rank's sends have not been delivered.
For one rank per stage this is DESIGN.md's sum(t) + (M-1)*max(t); for replicated groups the
steady-state period is max over groups of (group cost / replicas), and the replay also gets the
fill, the drain and round-robin remainders right, which the closed form only bounds.

A split pipeline ('diffusion/N') is replayed as N ranks in lockstep: each segment of a member's
window is received as it enters and costs diffusion cost / N, the member's share of the DiT's work.
That is an approximation: the step-by-step hand-offs inside the window (fill and drain of the block
ranges at every step, the hidden-state sends) are not replayed, and the cost passed in is expected to
carry them (planning/memory_options.py scales it by the split's imbalance and send time).

Without a memory limit, replicating the whole pipeline (`vision+fusion+diffusion xW`) is optimal:
it has no fill and perfect balance. Pipelining pays off when a rank cannot hold every stage, so
`choose_layout` takes per-stage memory and a per-rank capacity and only considers groups that fit.
"""

from __future__ import annotations

from collections import deque
from itertools import combinations
from typing import Sequence

from foley_dist.engine.schedule import STAGES, Action, Topology, build_schedule
from foley_dist.errors import FoleyError

_TIE = 1e-6  # relative: makespans closer than this are ties, broken by simplicity


def _topology(layout: Topology | Sequence[str], world_size: int | None, num_items: int | None = None) -> Topology:
    if isinstance(layout, Topology):
        return layout
    if world_size is None:
        raise ValueError("world_size is needed to parse a layout list")
    return Topology.parse(layout, world_size, num_items=num_items)  # split windows sized as the runtime sizes them


def _check_costs(stage_costs: dict[str, float]) -> None:
    missing = [s for s in STAGES if s not in stage_costs]
    if missing or any(stage_costs[s] < 0 for s in STAGES):
        raise FoleyError(f"stage costs need a non-negative seconds-per-segment for each of {', '.join(STAGES)}; "
                         f"got {stage_costs}")


def period(layout: Topology | Sequence[str], stage_costs: dict[str, float], world_size: int | None = None) -> float:
    """Steady-state seconds per segment: the slowest group's cost divided by its replicas."""
    topo = _topology(layout, world_size)
    return max(sum(stage_costs[s] for s in g.stages) / len(g.ranks) for g in topo.groups)


def predict_makespan(layout: Topology | Sequence[str], stage_costs: dict[str, float], num_items: int,
                     world_size: int | None = None, comm_s: float = 0.0, max_inflight: int | None = 2) -> float:
    """Seconds from the first compute to the sink's last collect for `num_items` segments.

    `layout` is a Topology or a list of layout entries (then `world_size` is needed to parse it).
    `comm_s` is added to every message between ranks (latency + size/bandwidth, if known);
    `max_inflight` is the transport's send bound (hardware.max_inflight).
    """
    _check_costs(stage_costs)
    topo = _topology(layout, world_size, num_items)
    return replay(build_schedule(topo, num_items), rank_costs(topo, stage_costs), comm_s, max_inflight)


def _items_as_they_enter(actions: list[Action]) -> list[Action]:
    """A split member's window as the replay sees it: each item is received as it enters the window
    and costs its share then (the steps interleaved inside the window are not replayed)."""
    out: list[Action] = []
    for a in actions:
        if a.window:
            out += [x for i, src in zip(a.window, a.sources) for x in (Action("recv", i, src), Action("compute", i))]
        else:
            out.append(a)
    return out


def rank_costs(topo: Topology, stage_costs: dict[str, float]) -> dict[int, float]:
    """Seconds of each rank's compute per item: its stages' costs; a CFG pair's ranks each take half
    the diffusion stage, a split pipeline's members 1/N of it (per item of their window)."""
    cost = {r: sum(stage_costs[s] for s in topo.stages_of(r)) for r in range(topo.world_size)}
    for r in range(topo.world_size):
        if topo.branch_of(r) is not None:
            cost[r] -= stage_costs["diffusion"] / 2
        if topo.split_role(r) is not None:
            cost[r] /= topo.split_role(r)[1]
    return cost


def replay(prog: dict[int, list[Action]], rank_cost: dict[int, float], comm_s: float = 0.0,
           max_inflight: int | None = 2) -> float:
    """Makespan of per-rank programs where each compute on rank r costs rank_cost[r] seconds (a
    split member's window: per item, as each enters).

    As in pipeline.execute and transport.Link: a rank posts a receive when it reaches it; a message
    arrives `comm_s` after both its send and its receive are posted; a send returns at once unless more
    than `max_inflight` of the rank's sends are undelivered (None: never waits).
    """
    prog = {r: _items_as_they_enter(acts) for r, acts in prog.items()}
    clock = {r: 0.0 for r in prog}
    pc = {r: 0 for r in prog}
    posted: dict[tuple[int, int, int], float] = {}  # (src, dst, item) -> receive posted at
    avail: dict[tuple[int, int, int], float] = {}  # (src, dst, item) -> send posted at
    inflight: dict[int, deque[tuple[int, int, int]]] = {r: deque() for r in prog}
    pending = set(prog)
    while pending:
        moved = False
        for r in sorted(pending):
            acts = prog[r]
            while True:
                if max_inflight is not None and len(inflight[r]) > max_inflight:  # back-pressure
                    oldest = inflight[r][0]
                    if oldest not in posted:
                        break
                    clock[r] = max(clock[r], avail[oldest] + comm_s, posted[oldest] + comm_s)
                    inflight[r].popleft()
                    moved = True
                    continue
                if pc[r] == len(acts):
                    pending.discard(r)
                    break
                a = acts[pc[r]]
                if a.kind == "recv":
                    key = (a.peer, r, a.item)
                    posted.setdefault(key, clock[r])
                    if key not in avail:
                        break
                    clock[r] = max(clock[r], avail[key]) + comm_s
                elif a.kind == "compute":
                    clock[r] += rank_cost[r]
                elif a.kind in ("send", "fork"):
                    key = (r, a.peer, a.item)
                    avail[key] = clock[r]
                    inflight[r].append(key)
                pc[r] += 1
                moved = True
        if not moved:
            raise RuntimeError("schedule deadlocks: a rank waits for a message nobody sends")
    return max(clock.values(), default=0.0)


def groupings(stages: Sequence[str] = STAGES) -> list[list[tuple[str, ...]]]:
    """Every way to cut the stage sequence into contiguous groups (2^(S-1) of them)."""
    out = []
    for k in range(len(stages)):
        for cuts in combinations(range(1, len(stages)), k):
            bounds = [0, *cuts, len(stages)]
            out.append([tuple(stages[a:b]) for a, b in zip(bounds, bounds[1:])])
    return out


def compositions(total: int, parts: int) -> list[tuple[int, ...]]:
    """Positive replica counts for `parts` groups summing to `total` ranks."""
    return [tuple(b - a for a, b in zip((0, *cuts), (*cuts, total))) for cuts in combinations(range(1, total), parts - 1)]


def layout_entries(groups: Sequence[tuple[str, ...]], replicas: Sequence[int], split: int = 1) -> list[str]:
    """Layout entries in Topology.parse's format, e.g. ['vision+fusion', 'diffusion x3'], or with the
    last group's `replicas` ranks split into pipelines of `split`: ['vision+fusion', 'diffusion/2 x2']."""
    splits = [1] * (len(groups) - 1) + [split]
    return ["+".join(g) + (f"/{n}" if n > 1 else "") + (f" x{k // n}" if k > n else "")
            for g, k, n in zip(groups, replicas, splits)]


def candidate_layouts(world_size: int, memory: dict[str, float] | None = None,
                      capacity: float | None = None, split: int = 1) -> list[list[str]]:
    """Every valid layout for `world_size` ranks whose groups fit in `capacity` (if given); with
    `split` > 1, those whose diffusion stage, alone in the last group, is split over `split` ranks
    per pipeline (`memory["diffusion"]`: a split rank's)."""
    def fits(group: tuple[str, ...]) -> bool:
        return memory is None or capacity is None or sum(memory.get(s, 0.0) for s in group) <= capacity

    return [layout_entries(groups, reps, split)
            for groups in groupings() if all(fits(g) for g in groups) and len(groups) <= world_size
            and (split == 1 or groups[-1] == ("diffusion",))
            for reps in compositions(world_size, len(groups)) if reps[-1] % split == 0]


def every_topology(world_size: int, num_items: int | None = None) -> list[Topology]:
    """Every layout of `world_size` ranks, with CFG pairs wherever its last group allows them and
    with the DiT's blocks split over every divisor (>= 2) of a diffusion-only last group's ranks (the
    protocol verifier's sweep; `num_items` sizes the split windows as a job of that many segments)."""
    out = []
    for layout in candidate_layouts(world_size):
        out.append(Topology.parse(layout, world_size))
        stages, _, times = layout[-1].partition(" x")
        ranks = int(times or 1)
        if stages != "diffusion":
            continue
        if ranks % 2 == 0:
            out.append(Topology.parse(layout, world_size, cfg_parallel=True))
        for split in (n for n in range(2, ranks + 1) if ranks % n == 0):
            entry = f"diffusion/{split}" + (f" x{ranks // split}" if ranks > split else "")
            out.append(Topology.parse(layout[:-1] + [entry], world_size, num_items=num_items))
    return out


def choose_layout(stage_costs: dict[str, float], world_size: int, num_items: int,
                  memory: dict[str, float] | None = None, capacity: float | None = None,
                  comm_s: float = 0.0, max_inflight: int | None = 2, split: int = 1) -> list[str]:
    """The layout with the smallest predicted makespan; ties go to fewer co-located stages.

    `memory` (per stage) and `capacity` (per rank), in any one unit, rule out groups that do not fit;
    `split` > 1 considers only layouts that split the DiT over that many ranks per pipeline.
    """
    _check_costs(stage_costs)
    layouts = candidate_layouts(world_size, memory, capacity, split)
    if not layouts:
        raise FoleyError(f"no layout of {world_size} rank(s) fits: stage memory {memory} vs capacity {capacity} per rank")
    scored = [(predict_makespan(lay, stage_costs, num_items, world_size, comm_s, max_inflight), lay) for lay in layouts]
    best = min(m for m, _ in scored)
    ties = [lay for m, lay in scored if m <= best * (1 + _TIE) + 1e-12]
    return min(ties, key=lambda lay: (sum(e.split(" ")[0].count("+") for e in lay), len(lay), lay))
