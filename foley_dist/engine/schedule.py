"""Rank/stage topology and the static schedule every rank executes.

A layout is data: one entry per rank naming the stages it hosts (`vision+fusion`), with `x k` to
replicate an entry over k ranks (`diffusion x3`). Consecutive ranks hosting the same stages form a
replica group; segment n is handled by replica n % k of each group, so every rank can derive the
whole schedule — who sends what to whom, in which order — without talking to the others. The sink
(stitching and writing) lives on the last rank. Everything here is plain data, testable without a
process group, and printable as a rank-by-step grid.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

from foley_dist.errors import FoleyError

STAGES = ("vision", "fusion", "diffusion")
_ENTRY = re.compile(r"([a-z]+(?:\+[a-z]+)*)(?:x(\d+))?")


@dataclass(frozen=True)
class Group:
    """A set of consecutive pipeline stages and the ranks (replicas) that run them."""

    stages: tuple[str, ...]
    ranks: tuple[int, ...]
    partners: tuple[int, ...] = ()  # CFG-parallel: partners[j] evaluates the other branch for ranks[j]

    def owner(self, item: int) -> int:
        return self.ranks[item % len(self.ranks)]

    def partner(self, item: int) -> int | None:
        return self.partners[item % len(self.ranks)] if self.partners else None


@dataclass(frozen=True)
class Topology:
    groups: tuple[Group, ...]
    world_size: int

    @classmethod
    def parse(cls, layout: Sequence[str], world_size: int, cfg_parallel: bool = False) -> "Topology":
        """Validate `layout` against the pipeline's stage order and WORLD_SIZE.

        `cfg_parallel` pairs the diffusion ranks: of 2K, the first K evaluate the unconditional branch
        for the last K (the segment owners, which receive, decode and send as without pairing)."""
        entries = expand_layout(layout)
        if len(entries) != world_size:
            raise FoleyError(
                f"layout {list(layout)} needs {len(entries)} rank(s) but WORLD_SIZE is {world_size}; "
                f"run torchrun --nproc_per_node={len(entries)} or change layout="
            )
        groups, rank = [], 0
        for stages in _dedupe_consecutive(entries):
            k = 0
            while rank + k < len(entries) and entries[rank + k] == stages:
                k += 1
            groups.append(Group(stages, tuple(range(rank, rank + k))))
            rank += k
        if cfg_parallel:
            last = groups[-1]
            if last.stages != ("diffusion",) or len(last.ranks) % 2:
                raise FoleyError(
                    f"diffusion.cfg_parallel=true pairs diffusion ranks, so the layout's last entry must be "
                    f"'diffusion x2K' on its own (got {list(layout)}), e.g. [vision+fusion,'diffusion x4']"
                )
            half = len(last.ranks) // 2
            groups[-1] = Group(last.stages, last.ranks[half:], last.ranks[:half])
        return cls(tuple(groups), world_size)

    @property
    def sink(self) -> int:
        return self.world_size - 1

    def stages_of(self, rank: int) -> tuple[str, ...]:
        return next(g.stages for g in self.groups if rank in g.ranks + g.partners)

    def branch_of(self, rank: int) -> int | None:
        """CFG branch a paired diffusion rank evaluates: 1 (conditional) for owners, 0 for partners."""
        last = self.groups[-1]
        return None if not last.partners or rank not in last.ranks + last.partners else int(rank in last.ranks)

    def describe(self) -> str:
        return ", ".join(f"{'+'.join(g.stages)} on rank{'s' if len(g.ranks) > 1 else ''} {','.join(map(str, g.ranks))}"
                         + (f" (CFG partners {','.join(map(str, g.partners))})" if g.partners else "")
                         for g in self.groups)


def expand_layout(layout: Sequence[str]) -> list[tuple[str, ...]]:
    """One tuple of stage names per rank; checks entry syntax and that the stages appear once, in order."""
    entries: list[tuple[str, ...]] = []
    for raw in layout:
        match = _ENTRY.fullmatch(str(raw).replace(" ", ""))
        stages = tuple(match.group(1).split("+")) if match else ()
        unknown = [s for s in stages if s not in STAGES]
        if not match or unknown:
            raise FoleyError(
                f"layout entry {raw!r} is not 'stage[+stage...][ xK]' with stages {', '.join(STAGES)}, e.g. 'diffusion x3'"
            )
        times = match.group(2)
        if times is not None and int(times) < 1:
            raise FoleyError(f"layout entry {raw!r}: replica count after 'x' must be a positive integer")
        entries += [stages] * int(times or 1)
    flat = [s for e in _dedupe_consecutive(entries) for s in e]
    if flat != list(STAGES):
        raise FoleyError(
            f"layout {list(layout)} must cover each stage exactly once, in the order {' -> '.join(STAGES)} "
            "(replicas of one entry must be adjacent), e.g. [vision,fusion,diffusion] or [vision+fusion,'diffusion x3']"
        )
    return entries


def _dedupe_consecutive(entries: list[tuple[str, ...]]) -> list[tuple[str, ...]]:
    return [e for i, e in enumerate(entries) if i == 0 or entries[i - 1] != e]


@dataclass(frozen=True)
class Action:
    """One step of a rank's program. kind: recv | compute | send | collect (sink takes a result) |
    fork (send a copy, keep the item: upstream owner -> CFG partner) | drop (forget the item: the partner's result)."""

    kind: str
    item: int
    peer: int | None = None

    def __str__(self) -> str:
        sym = {"recv": "<", "send": ">", "compute": "C", "collect": "+", "fork": "^", "drop": "x"}[self.kind]
        return f"{sym}{self.item}" + (f"@{self.peer}" if self.peer is not None else "")


def build_schedule(topo: Topology, num_items: int) -> dict[int, list[Action]]:
    """Each rank's ordered actions for `num_items` work items (segments).

    Group g's owner of item n receives it from group g-1's owner, computes its stages, and sends
    the result to group g+1's owner; the last group's owner hands the result to the sink (the last
    rank, itself a replica of the last group). Every rank walks the items in increasing order, which
    makes the schedule deadlock-free: each wait is for an item every upstream rank handles no later.
    The sink's one exception: it computes its own next item *before* collecting the other replicas'
    earlier ones (collects stay in item order), otherwise it would start each of its items a whole
    stage late behind its peers; it lags at most one item per replica, which the bounded in-flight
    sends absorb.
    """
    prog: dict[int, list[Action]] = {r: [] for r in range(topo.world_size)}
    last = len(topo.groups) - 1
    pending: list[Action] = []  # the sink's receives + collects of items owned by other replicas
    for n in range(num_items):
        for g, group in enumerate(topo.groups):
            me = group.owner(n)
            work = [Action("recv", n, topo.groups[g - 1].owner(n))] if g > 0 else []
            partner = group.partner(n)
            if partner is not None:  # CFG-parallel: the partner samples the other branch alongside
                # fed by upstream (Topology keeps pairs out of the first group), so both branches start together
                up = topo.groups[g - 1].owner(n)
                prog[up].insert(len(prog[up]) - 1, Action("fork", n, partner))  # before its send to `me`
                prog[partner] += [Action("recv", n, up), Action("compute", n), Action("drop", n)]
            work.append(Action("compute", n))
            if g < last:
                work.append(Action("send", n, topo.groups[g + 1].owner(n)))
            elif me != topo.sink:
                work.append(Action("send", n, topo.sink))
            if g == last and me == topo.sink:
                prog[me] += work + pending + [Action("collect", n)]
                pending = []
            else:
                prog[me] += work
        if topo.groups[last].owner(n) != topo.sink:
            pending += [Action("recv", n, topo.groups[last].owner(n)), Action("collect", n)]
    prog[topo.sink] += pending
    return prog


def format_grid(prog: dict[int, list[Action]]) -> str:
    """Rank-by-step grid: `<3@0` receive item 3 from rank 0, `C3` compute, `>3@2` send, `+3` collect,
    `^3@1` fork to a CFG partner, `x3` drop."""
    width = max((len(str(a)) for acts in prog.values() for a in acts), default=2) + 1
    lines = []
    for rank, acts in sorted(prog.items()):
        lines.append(f"rank {rank}: " + "".join(str(a).ljust(width) for a in acts))
    return "\n".join(lines)
