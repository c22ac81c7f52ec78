"""Joint sampling of one long video's segments on a shared latent timeline (`seam=joint`), and
CFG-parallel branch splitting. Model-free: shared by the diffusion stage and the synthetic stages.

Joint mode, defined so that every layout computes the same bits:
- The initial noise is one signal over the job's latent timeline, drawn in fixed blocks of BLOCK
  frames seeded by (seed, block), so a segment's noise is the slice at its latent offset whatever the
  segmenting: overlapping segments start from the same noise in their overlap.
- At every sampling step s (sigma_s, before the velocity evaluation, and once more at sigma 0), a
  segment first sets its head (the frames it shares with the previous segment) from the previous
  segment's latents at sigma_s, then hands its tail (the frames shared with the next segment) on.
  The tail at sigma_s exists once the previous segment finished step s - 1, so segment i+1 runs at
  most one step behind segment i (a wavefront) and never waits for it to finish.
- At sigma 0 the shared frames of neighbouring segments are equal, bit for bit.

The exchange goes through a `StepChannel`, an engine-side object injected into the stage: a
`LocalChannel` when the neighbour runs on the same rank (the single-process path keeps one
segment's per-step tails until the next segment takes them: bounded memory), the transport's
`StepLinks` across ranks. The stage never sees a rank.

CFG-parallel: a pair of ranks evaluates the unconditional (branch 0) and conditional (branch 1)
halves of each step and swaps the predictions; both then take the same Euler step. With
`split=True` a single rank evaluates the two branches the same way (two batch-1 calls), so the
parallel and serial outputs are bit-identical; the batch-2 call differs from it by float rounding.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Protocol

import numpy as np
import torch
from torch import Tensor

BLOCK = 64  # latent frames per independently seeded noise block of the timeline
_JOINT = 0x4A4F494E  # "JOIN": keeps timeline noise apart from the per-segment noise streams


class StepChannel(Protocol):
    """Per-step messages of one diffusion rank. `branch`: the CFG branch this rank evaluates (None = both)."""

    branch: int | None

    def open(self, item: int, steps: int, head: tuple[int, ...] | None, swap: tuple[int, ...] | None) -> None:
        """Before item's first step: post the receives (head overlap of each step, partner's velocity)."""

    def take(self, item: int, step: int) -> Tensor:
        """The previous item's tail at this step."""

    def give(self, item: int, step: int, tail: Tensor) -> None:
        """Hand this item's tail at this step to the next item."""

    def swap(self, item: int, step: int, velocity: Tensor) -> Tensor:
        """Send this rank's branch velocity to the partner; return the partner's."""

    def preload(self, item: int, tails: Tensor) -> None:
        """Resume: the previous item's tails at every step [steps + 1, B, C, frames], saved by an earlier run."""


class LocalChannel:
    """Neighbours on the same rank: tails wait in memory until the next item takes them."""

    branch = None

    def __init__(self) -> None:
        self._tails: dict[tuple[int, int], Tensor] = {}

    def open(self, item: int, steps: int, head: tuple[int, ...] | None, swap: tuple[int, ...] | None) -> None:
        if swap is not None:
            raise RuntimeError("CFG-parallel needs a partner rank; a local channel has none")

    def preload(self, item: int, tails: Tensor) -> None:
        self._tails.update({(item, step): t for step, t in enumerate(tails)})

    def take(self, item: int, step: int) -> Tensor:
        return self._tails.pop((item, step))

    def give(self, item: int, step: int, tail: Tensor) -> None:
        self._tails[(item + 1, step)] = tail.clone()

    def swap(self, item: int, step: int, velocity: Tensor) -> Tensor:
        raise RuntimeError("CFG-parallel needs a partner rank; a local channel has none")

    @property
    def held(self) -> int:
        return len(self._tails)


def _block(seed: int, block: int, channels: int) -> Tensor:
    mixed = int(np.random.SeedSequence([seed, _JOINT, block]).generate_state(1, dtype=np.uint64)[0] >> 1)
    return torch.randn((channels, BLOCK), generator=torch.Generator().manual_seed(mixed))


def timeline_noise(seed: int, offset: int, length: int, channels: int) -> Tensor:
    """[1, channels, length]: frames [offset, offset + length) of the job's noise timeline."""
    first, last = offset // BLOCK, (offset + length - 1) // BLOCK
    noise = torch.cat([_block(seed, b, channels) for b in range(first, last + 1)], dim=-1)
    start = offset - first * BLOCK
    return noise[None, :, start : start + length].contiguous()


def shared_frames(span: tuple[int, int], other: tuple[int, int]) -> int:
    """Latent frames two (offset, length) spans have in common."""
    return max(0, min(span[0] + span[1], other[0] + other[1]) - max(span[0], other[0]))


def joined_items(metas: list[dict], latent_rate: int) -> list[bool]:
    """Per item: whether it takes overlap frames from the item just before it at every step (joint
    neighbours that share frames; a resumed segment's head is preloaded instead, see `preloaded`)."""
    def span(start: float, end: float) -> tuple[int, int]:
        return round(start * latent_rate), round((end - start) * latent_rate)

    out = [False] * len(metas)
    for n in range(1, len(metas)):
        a, b = metas[n - 1], metas[n]
        if b.get("joint_prev") and a.get("joint_next"):
            out[n] = shared_frames(span(b["start"], b["end"]), span(*b["joint_prev"])) > 0
    return out


def link_neighbours(metas: list[dict]) -> None:
    """Mark consecutive segments of the same job as joint neighbours: meta gains `joint_prev` /
    `joint_next` = [start, end] of the neighbour, read by the stage to size its head and tail."""
    for a, b in zip(metas, metas[1:]):
        if a["job"] == b["job"] and b["segment"] == a["segment"] + 1:
            a["joint_next"], b["joint_prev"] = [b["start"], b["end"]], [a["start"], a["end"]]


def overlap_exchange(channel: StepChannel, item: int, span: tuple[int, int], prev: tuple[int, int] | None,
                     nxt: tuple[int, int] | None, kept: list[Tensor] | None = None
                     ) -> tuple[Callable[[int, Tensor], Tensor], int, int]:
    """`exchange(step, x)` for flow.sample, plus (head, tail) frame counts; latent spans are (offset, length).
    Tails handed on are also appended to `kept` (the resume state of the next segment)."""
    length = span[1]
    head = shared_frames(span, prev) if prev is not None else 0
    tail = shared_frames(span, nxt) if nxt is not None else 0

    def exchange(step: int, x: Tensor) -> Tensor:
        if head:
            x = x.clone()
            x[..., :head] = channel.take(item, step)
        if tail:
            channel.give(item, step, x[..., length - tail :])
            if kept is not None:
                kept.append(x[..., length - tail :].clone())
        return x

    return exchange, head, tail


BranchFn = Callable[[Tensor, Tensor, int], Tensor]  # (x [B, ...], t [B], branch) -> velocity of that branch


def split_velocity(branch_fn: BranchFn, channel: StepChannel | None, item: int) -> Callable[[Tensor, Tensor], Tensor]:
    """velocity_fn for flow.sample's [uncond; cond] batch, evaluated branch by branch (batch 1 each).

    With a channel whose `branch` is set, this rank evaluates only its branch and swaps with its
    partner at every step; otherwise both branches run here, in the same way, so the bits agree."""
    steps = itertools.count()

    def velocity(x2: Tensor, t2: Tensor) -> Tensor:
        half = x2.shape[0] // 2
        x, t = x2[:half], t2[:half]
        branch = channel.branch if channel is not None else None
        if branch is None:
            return torch.cat([branch_fn(x, t, 0), branch_fn(x, t, 1)])
        mine = branch_fn(x, t, branch)
        other = channel.swap(item, next(steps), mine)
        return torch.cat([other, mine] if branch == 1 else [mine, other])

    return velocity
