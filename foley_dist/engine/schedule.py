"""Rank/stage topology and the static schedule every rank executes.

A layout is data: one entry per rank naming the stages it hosts (`vision+fusion`), with `x k` to
replicate an entry over k ranks (`diffusion x3`). `diffusion/n` splits the DiT's blocks over n ranks
(one split pipeline; `diffusion/n xk`: k of them). Consecutive ranks hosting the same stages form a
replica group; segment n is handled by replica n % k of each group (a split group's pipelines
take windows of segments dealt round-robin, which they sample interleaved), so every rank can
derive the whole schedule — who sends what to whom, in which order — without talking to the
others. The sink (stitching and writing) lives on the last rank. Everything here is plain data, testable without a
process group, and printable as a rank-by-step grid.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Sequence

from foley_dist.errors import FoleyError

STAGES = ("vision", "fusion", "diffusion")
_ENTRY = re.compile(r"([a-z]+(?:\+[a-z]+)*)(?:/(\d+))?(?:x(\d+))?")


@dataclass(frozen=True)
class Group:
    """A set of consecutive pipeline stages and the ranks (replicas) that run them."""

    stages: tuple[str, ...]
    ranks: tuple[int, ...]
    partners: tuple[int, ...] = ()  # CFG-parallel: partners[j] evaluates the other branch for ranks[j]
    split: int = 1  # layer split: each run of `split` consecutive ranks is one pipeline over the DiT's blocks
    window_size: int = 1  # segments a split pipeline samples together (split_window)

    @property
    def pipelines(self) -> int:
        return len(self.ranks) // self.split

    def members(self, item: int) -> tuple[int, ...]:
        """The ranks that compute `item`: its owner, or its split pipeline (the owner first)."""
        first = item % self.pipelines * self.split
        return self.ranks[first : first + self.split]

    def owner(self, item: int) -> int:
        """Receives the item, sends its result on (a split pipeline's first rank)."""
        return self.members(item)[0]

    def window(self, item: int, num_items: int) -> tuple[int, ...]:
        """The items a split pipeline samples together with `item` (interleaved step by step): items
        are dealt to the pipelines round-robin, `window_size` per pipeline and round, so the K
        pipelines' windows of a round hold neighbouring segments side by side and the joint
        wavefront runs through all of them at once."""
        per_round = self.window_size * self.pipelines
        start = item - item % per_round + item % self.pipelines
        return tuple(range(start, min(start - start % per_round + per_round, num_items), self.pipelines))

    def partner(self, item: int) -> int | None:
        return self.partners[item % len(self.ranks)] if self.partners else None


@dataclass(frozen=True)
class Topology:
    groups: tuple[Group, ...]
    world_size: int

    @classmethod
    def parse(cls, layout: Sequence[str], world_size: int, cfg_parallel: bool = False,
              num_items: int | None = None) -> "Topology":
        """Validate `layout` against the pipeline's stage order and WORLD_SIZE.

        `cfg_parallel` pairs the diffusion ranks: of 2K, the first K evaluate the unconditional branch
        for the last K (the segment owners, which receive, decode and send as without pairing).
        `num_items` (the job's segments) sizes a split group's windows (split_window); without it a
        window is one segment per block range."""
        entries, splits = expand_layout(layout), split_sizes(layout)
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
            split = splits.get(stages, 1)
            window = split if num_items is None or split == 1 else split_window(split, k // split, num_items)
            groups.append(Group(stages, tuple(range(rank, rank + k)), split=split, window_size=window))
            rank += k
        if cfg_parallel and groups[-1].split > 1:
            raise FoleyError(f"diffusion.cfg_parallel=true pairs whole diffusion ranks and layout {list(layout)} splits "
                             "the DiT's blocks; use one of them: 'diffusion x2K' with cfg_parallel, or 'diffusion/n' without")
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
                         + (f" (blocks split over {g.split} ranks per pipeline)" if g.split > 1 else "")
                         for g in self.groups)

    def split_role(self, rank: int) -> tuple[int, int] | None:
        """(position, count) of `rank` in its split pipeline; None when its group is not split."""
        group = next(g for g in self.groups if rank in g.ranks + g.partners)
        return None if group.split == 1 else (group.ranks.index(rank) % group.split, group.split)


def split_window(split: int, pipelines: int, num_items: int) -> int:
    """Segments a split pipeline samples together: at least `split` (so every block range has work
    at every moment), up to twice that (slack for the per-step messages' latency), sized so that the
    job's windows spread evenly over the pipelines."""
    rounds = max(1, math.ceil(num_items / (pipelines * 2 * split)))
    return max(split, math.ceil(num_items / (pipelines * rounds)))


def _entry(raw: str) -> tuple[tuple[str, ...], int, int]:
    """(stages, split, replicas) of one layout entry, syntax-checked."""
    match = _ENTRY.fullmatch(str(raw).replace(" ", ""))
    stages = tuple(match.group(1).split("+")) if match else ()
    unknown = [s for s in stages if s not in STAGES]
    if not match or unknown:
        raise FoleyError(
            f"layout entry {raw!r} is not 'stage[+stage...][ xK]' or 'diffusion/N[ xK]' with stages {', '.join(STAGES)}, "
            "e.g. 'diffusion x3' or 'diffusion/2'"
        )
    split, times = match.group(2), match.group(3)
    if times is not None and int(times) < 1:
        raise FoleyError(f"layout entry {raw!r}: replica count after 'x' must be a positive integer")
    if split is not None and (stages != ("diffusion",) or int(split) < 2):
        raise FoleyError(f"layout entry {raw!r}: '/N' splits the DiT's blocks over N >= 2 ranks and applies to "
                         "diffusion alone, e.g. [vision+fusion, 'diffusion/2']")
    return stages, int(split or 1), int(times or 1)


def split_sizes(layout: Sequence[str]) -> dict[tuple[str, ...], int]:
    """The layer split of each split entry's stages (only 'diffusion' can be split)."""
    out: dict[tuple[str, ...], int] = {}
    for raw in layout:
        stages, split, _ = _entry(raw)
        if out.setdefault(stages, split) != split:
            raise FoleyError(f"layout {list(layout)} gives {'+'.join(stages)} two different splits; use one, "
                             "e.g. 'diffusion/2 x2' for two pipelines of 2 ranks")
    return out


def expand_layout(layout: Sequence[str]) -> list[tuple[str, ...]]:
    """One tuple of stage names per rank; checks entry syntax and that the stages appear once, in order."""
    entries: list[tuple[str, ...]] = []
    for raw in layout:
        stages, split, times = _entry(raw)
        entries += [stages] * (split * times)
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
    window: tuple[int, ...] = ()  # compute: these items together (a split pipeline's window), `item` first
    sources: tuple[int, ...] = ()  # window: the rank each item's message comes from, taken as the item enters

    @property
    def items(self) -> tuple[int, ...]:
        return self.window or (self.item,)

    def __str__(self) -> str:
        sym = {"recv": "<", "send": ">", "compute": "C", "collect": "+", "fork": "^", "drop": "x"}[self.kind]
        if self.window:  # C0@1,2@1: compute items 0 and 2 together, each received from rank 1 as it enters
            return sym + ",".join(f"{i}@{src}" for i, src in zip(self.window, self.sources))
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
            if group.split > 1:
                pending = _split_window(prog, topo, g, n, num_items, pending)
                continue
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
        if topo.groups[last].owner(n) != topo.sink and topo.groups[last].split == 1:
            pending += [Action("recv", n, topo.groups[last].owner(n)), Action("collect", n)]
    prog[topo.sink] += pending
    return prog


def _split_window(prog: dict[int, list[Action]], topo: Topology, g: int, n: int, num_items: int,
                  pending: list[Action]) -> list[Action]:
    """Item n's actions in a split group (the last group; Topology keeps it off the first): upstream
    forks the item to every member besides the owner; at the end of n's window every member computes
    the window's items together, receiving each as it enters the window (models/split.py: a window
    starts with its first segment, not its last), and the owner sends each result to the sink (never
    a split owner) while the others drop theirs. The sink, the last member of the last pipeline, then
    collects every item up to the end of its window (so an owner never holds a window of results
    for long). Returns what stays pending for the sink."""
    group, up = topo.groups[g], topo.groups[g - 1].owner(n)
    members = group.members(n)
    for m in members[1:]:
        prog[up].insert(len(prog[up]) - 1, Action("fork", n, m))  # before its send to the owner
    pending = pending + [Action("recv", n, members[0]), Action("collect", n)]
    window = group.window(n, num_items)
    if n != window[-1]:
        return pending
    sources = tuple(topo.groups[g - 1].owner(i) for i in window)
    for m in members:
        prog[m].append(Action("compute", window[0], window=window, sources=sources))
        prog[m] += [Action("send", i, topo.sink) if m == members[0] else Action("drop", i) for i in window]
    if topo.sink in members:  # its window's results come in as the owner decodes them: take them at once
        prog[topo.sink] += pending
        pending = []
    return pending


def format_grid(prog: dict[int, list[Action]]) -> str:
    """Rank-by-step grid: `<3@0` receive item 3 from rank 0, `C3` compute, `>3@2` send, `+3` collect,
    `^3@1` fork to a CFG partner, `x3` drop; `C0@1,2@1` a split member's window (items 0 and 2, each
    received from rank 1 as it enters)."""
    width = max((len(str(a)) for acts in prog.values() for a in acts), default=2) + 1
    lines = []
    for rank, acts in sorted(prog.items()):
        lines.append(f"rank {rank}: " + "".join(str(a).ljust(width) for a in acts))
    return "\n".join(lines)
