"""Layer split of the diffusion stage (layout entry `diffusion/N`): N ranks each hold a contiguous
range of the DiT's blocks and together sample a window of segments, interleaved step by step.

Per sampling step of one segment: the first member sets the latents' joint overlap (as
`flow.sample`'s exchange does), embeds them and runs its blocks; each member hands the hidden state
on to the next; the last runs its blocks, the final layer, classifier-free guidance and the Euler
update, and returns the new latents to the first. That is `HunyuanDiT.velocity` + `flow.sample`
op for op, so the output is bit-identical to one rank's.

A member works through its window in engine.protocol's `window_order`: item k runs one step behind item
k - 1 (the joint wavefront), so with at least as many items as block ranges every range has work at
every moment. Hidden states cross as fp32 values (exact for fp32, bf16 and fp16) in one flat buffer;
the receiver casts each tensor back to the dtype the sender had, which every member reads once per
run from the leading dtype codes (one host read, not one per step).

Model-free at its core (`run_window` and the `ItemWork` protocol): the real DiT's work is `DiTWork`,
the benchmarks' timed one lives in foley_dist/synthetic.py.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import Tensor

from foley_dist.models.flow import euler_step, flow_schedule, guided
from foley_dist.models.hunyuan_dit import BlockContext, BlockState, HunyuanDiT

WIRE_DTYPES = (torch.float32, torch.bfloat16, torch.float16)  # what a hidden state may hold


class SplitChannel(Protocol):
    """A member's per-step messages to the next member and from the previous one (a ring)."""

    def expect_split(self, item: int, step: int, numel: int) -> None: ...

    def recv_split(self, item: int, step: int) -> Tensor: ...

    def send_split(self, item: int, step: int, flat: Tensor) -> None: ...  # takes `flat` over: not touched again


class ItemWork(Protocol):
    """One window item's work on one member."""

    steps: int
    numel_in: int  # size of the flat message this member receives per step

    def start(self) -> Tensor: ...  # first member: the initial latents

    def exchange(self, step: int, x: Tensor) -> Tensor: ...  # first member: joint overlap exchange

    def head(self, step: int, x: Tensor) -> Tensor: ...  # first member: latents -> flat hidden state

    def middle(self, step: int, flat: Tensor) -> Tensor: ...  # hidden state -> hidden state

    def tail(self, step: int, flat: Tensor) -> Tensor: ...  # last member: hidden state -> next latents

    def latents(self, flat: Tensor) -> Tensor: ...  # first member: the returned flat latents -> x

    def finish(self, x: Tensor) -> Any: ...  # first member: the final latents -> the item's result


@dataclass(frozen=True)
class SplitRole:
    """This rank's place in its split pipeline: position of `count`, blocks [start, stop)."""

    position: int
    count: int
    start: int
    stop: int

    @property
    def first(self) -> bool:
        return self.position == 0

    @property
    def last(self) -> bool:
        return self.position == self.count - 1


def run_window(start: Callable[[int], ItemWork], items: Sequence[int], order: Sequence[tuple[int, int]],
               role: SplitRole, channel: SplitChannel) -> list:
    """Run this member's part of a window in `order` (engine.protocol.window_order: the order the
    job's protocol was built from); returns each item's result on the first member (None on the
    others). `start(k)` makes item k's work when it enters the window (taking its message then, so a
    window starts with its first segment, not its last); every per-step receive is announced a step
    ahead, so it lands while the member computes."""
    results: list = [None] * len(items)
    works: dict[int, ItemWork] = {}
    for k, step in order:
        n = items[k]
        if step == 0:
            works[k] = start(k)
            if not role.first:
                channel.expect_split(n, 0, works[k].numel_in)
        work = works[k]
        if role.first:
            x = work.start() if step == 0 else work.latents(channel.recv_split(n, step - 1))
            x = work.exchange(step, x)
            if step == work.steps:
                results[k] = work.finish(x)
                del works[k]  # its conditioning and buffers go now, not at the window's end
                continue
            channel.expect_split(n, step, work.numel_in)  # this step's latents, coming back from the last
            channel.send_split(n, step, work.head(step, x))
            continue
        flat = channel.recv_split(n, step)
        if step + 1 < work.steps:
            channel.expect_split(n, step + 1, work.numel_in)
        else:
            del works[k]
        channel.send_split(n, step, work.tail(step, flat) if role.last else work.middle(step, flat))
    return results


# ---------------------------------------------------------------------------------------------------
# The wire format of a hidden state


def pack(tensors: Sequence[Tensor]) -> Tensor:
    """Flat fp32: one dtype code per tensor, then the values."""
    codes = torch.empty(len(tensors), dtype=torch.float32, device=tensors[0].device)
    for i, t in enumerate(tensors):
        codes[i] = WIRE_DTYPES.index(t.dtype)
    return torch.cat([codes] + [t.reshape(-1).float() for t in tensors])


def unpack(flat: Tensor, shapes: Sequence[tuple[int, ...]], dtypes: Sequence[torch.dtype]) -> list[Tensor]:
    """`pack`'s tensors, cast back to `dtypes` (read once with `wire_dtypes`)."""
    out, offset = [], len(shapes)
    for shape, dtype in zip(shapes, dtypes):
        size = math.prod(shape)
        out.append(flat[offset : offset + size].view(shape).to(dtype))
        offset += size
    return out


def wire_dtypes(flat: Tensor, count: int) -> list[torch.dtype]:
    """The dtypes `pack` recorded (a host read: done once per run and kept)."""
    return [WIRE_DTYPES[int(c)] for c in flat[:count].tolist()]


# ---------------------------------------------------------------------------------------------------
# The real DiT


@dataclass
class DiTWork:
    """One segment on one member of a split HunyuanDiT (see the module docstring). `cond` is the
    segment's conditioning as the unsplit stage passes it to `velocity` (batch 2 with guidance);
    `exchange` and `finish` are the stage's (joint overlaps; decoding)."""

    dit: HunyuanDiT
    role: SplitRole
    cond: dict[str, Tensor]
    noise: Tensor
    steps: int
    guidance_scale: float
    autocast: Callable[[], Any]  # the stage's autocast context
    exchange: Callable[[int, Tensor], Tensor]
    finish: Callable[[Tensor], Any]
    dtypes: list[torch.dtype] = field(default_factory=list)  # shared by a run's items: read once
    ctx: BlockContext = field(init=False)

    def __post_init__(self) -> None:
        self.timesteps, self.sigmas = (v.to(self.noise.device) for v in flow_schedule(self.steps))
        self.batch = 2 if self.guidance_scale > 1 else 1
        with self.autocast():
            self.ctx = self.dit.context(self.cond, self.noise.shape[2])
        self.visual_in = self.role.start < self.dit.config.depth_triple_blocks  # the visual stream still flows
        self.numel_in = self.noise.numel() if self.role.first else packed_numel(self._shapes())

    def _shapes(self) -> list[tuple[int, ...]]:
        """Shapes of the state entering this member's blocks, then the latents."""
        b, la, c = self.batch, self.noise.shape[2], self.dit.config.hidden_size
        visual = [(b, self.ctx.visual.shape[1], c)] if self.visual_in else []
        return [(b, la, c), *visual, (b, c), tuple(self.noise.shape)]

    def start(self) -> Tensor:
        return self.noise.float()

    def latents(self, flat: Tensor) -> Tensor:
        return flat.view(self.noise.shape)

    def head(self, step: int, x: Tensor) -> Tensor:
        x_in = torch.cat([x, x]) if self.batch == 2 else x
        with self.autocast():
            state = self.dit.embed(x_in, self.timesteps[step].repeat(x_in.shape[0]), self.ctx)
            state = self.dit.run_blocks(state, self.ctx, self.role.start, self.role.stop)
        return self._pack(state, x)

    def middle(self, step: int, flat: Tensor) -> Tensor:
        state, x = self._unpack(flat)
        with self.autocast():
            state = self.dit.run_blocks(state, self.ctx, self.role.start, self.role.stop)
        return self._pack(state, x)

    def tail(self, step: int, flat: Tensor) -> Tensor:
        state, x = self._unpack(flat)
        with self.autocast():
            state = self.dit.run_blocks(state, self.ctx, self.role.start, self.role.stop)
            v = self.dit.finish(state).float()
        v = guided(v, self.guidance_scale) if self.batch == 2 else v.float()
        return euler_step(x, v, self.sigmas[step], self.sigmas[step + 1]).reshape(-1)

    def _pack(self, state: BlockState, x: Tensor) -> Tensor:
        visual = [state.visual] if state.visual is not None else []
        return pack([state.audio, *visual, state.vec, x])

    def _unpack(self, flat: Tensor) -> tuple[BlockState, Tensor]:
        shapes = self._shapes()
        if not self.dtypes:
            self.dtypes.extend(wire_dtypes(flat, len(shapes)))
        audio, *rest = unpack(flat, shapes, self.dtypes)
        visual = rest.pop(0) if self.visual_in else None
        vec, x = rest
        return BlockState(audio, visual, vec), x.float()


def packed_numel(shapes: Sequence[tuple[int, ...]]) -> int:
    """Length of `pack`'s flat buffer for tensors of `shapes`: the dtype codes, then the values."""
    return len(shapes) + sum(math.prod(shape) for shape in shapes)


@dataclass
class RelayWork:
    """An item that failed upstream (its job has failed): every message of the protocol still flows,
    as one-value placeholders between members, and the first member still makes the joint overlap
    exchange with the noise (so the neighbouring items' owners get their tails); the result is the
    message itself."""

    steps: int
    noise: Tensor
    exchange: Callable[[int, Tensor], Tensor]
    msg: Any
    numel_in: int = 1

    def start(self) -> Tensor:
        return self.noise

    def latents(self, flat: Tensor) -> Tensor:
        return self.noise

    def head(self, step: int, x: Tensor) -> Tensor:
        return torch.zeros(1, device=self.noise.device)

    def middle(self, step: int, flat: Tensor) -> Tensor:
        return flat

    def tail(self, step: int, flat: Tensor) -> Tensor:
        return flat

    def finish(self, x: Tensor) -> Any:
        return self.msg
