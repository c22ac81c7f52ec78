"""Synthetic stages: fixed per-segment cost, real tensors of realistic size, no model.

Benchmarks and scheduling tests need stages whose cost is known exactly (so a measured makespan can
be compared with the scheduling model) while the transport still moves what a real run moves. Each
`SyntheticStage` emits the tensors its real counterpart emits for a 5 s segment of the HunyuanVideo-
Foley XXL model (see foley_dist/stages.py for the boundaries) and then sleeps until `seconds` have
passed since it started, so tensor work is part of the cost instead of added to it. Sleeping leaves
the CPU free: many ranks fit on a two-core machine without disturbing each other's timing.

Output tensors are constant and encode their input: every stage fills its outputs with
(input value + 1), where the first stage's input value is the segment index. The audio of segment n
is therefore n + (number of stages): a sink can tell which segment it got and whether it went
through every stage.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from foley_dist.engine import transport
from foley_dist.engine.message import Message
from foley_dist.engine.metrics import RankStats, Recorder
from foley_dist.engine.pipeline import execute, open_link, step_channel
from foley_dist.engine.protocol import ItemPlan, window_order
from foley_dist.engine.schedule import Topology, build_schedule
from foley_dist.models.flow import euler_step, flow_schedule, guided, sample
from foley_dist.models.split import SplitRole, pack, packed_numel, run_window, unpack
from foley_dist.models.joint import (
    LocalChannel,
    StepChannel,
    joined_items,
    link_neighbours,
    overlap_exchange,
    split_velocity,
    timeline_noise,
)

SAMPLE_RATE = 48_000
SEGMENT_SECONDS = 5.0
LATENT_RATE, LATENT_DIM = 50, 128  # DAC-VAE latents: 128 channels at 50 frames per second
GUIDANCE = 4.5

# Tensors each stage emits for one 5 s segment: SigLIP2 at 8 fps and Synchformer features (768-d),
# the DiT's [uncond; cond] projections (hidden 1536), 48 kHz mono audio.
OUTPUTS: dict[str, dict[str, tuple[int, ...]]] = {
    "vision": {"clip_feat": (1, 40, 768), "sync_feat": (1, 120, 768)},
    "fusion": {"text": (2, 77, 1536), "visual": (2, 40, 1536), "sync": (2, 120, 1536)},
    "diffusion": {"audio": (int(SEGMENT_SECONDS * SAMPLE_RATE),)},
}


def _value(msg: Message) -> float:
    """The value a message's tensors encode (the segment index for a fresh work item)."""
    if not msg.tensors:
        return float(msg.segment)
    return float(msg.tensors[sorted(msg.tensors)[0]].reshape(-1)[0])


class SyntheticStage(nn.Module):
    """A stage that costs `seconds` of wall time per segment and emits `outputs` (default OUTPUTS[name])."""

    def __init__(self, name: str, seconds: float, device: torch.device = torch.device("cpu"),
                 outputs: dict[str, tuple[int, ...]] | None = None):
        super().__init__()
        self.name, self.seconds, self.device = name, seconds, device
        self.outputs = outputs or OUTPUTS[name]

    def forward(self, msg: Message) -> Message:
        deadline = time.perf_counter() + self.seconds
        value = _value(msg) + 1
        out = {k: torch.full(shape, value, dtype=torch.float32, device=self.device) for k, shape in self.outputs.items()}
        time.sleep(max(0.0, deadline - time.perf_counter()))
        return Message(msg.segment, out, msg.meta)


class SyntheticSampler(nn.Module):
    """Diffusion at a fixed cost per sampling step that runs the real sampler loop on real-size latents
    ([1, 128, 50 per second]), so joint overlaps and CFG-parallel velocities cross ranks exactly as in a
    real run. Each CFG branch costs `step_seconds / 2` (the two branches of a step cost the same); the
    velocity is -x, so the latents stay finite and depend on every exchanged value. With `split` set
    (layout 'diffusion/N') each member costs step_seconds / N per step and hands on an XXL-size hidden
    state (`hidden`, fp32; default HIDDEN), so the latents equal the unsplit run's."""

    name = "diffusion"

    def __init__(self, steps: int, step_seconds: float, seam: str, cfg_split: bool, device: torch.device,
                 hidden: tuple[int, ...] | None = None):
        super().__init__()
        self.steps, self.branch_seconds, self.seam, self.cfg_split, self.device = steps, step_seconds / 2, seam, cfg_split, device
        self.hidden = hidden or HIDDEN
        self.channel: StepChannel = LocalChannel()
        self.split: SplitRole | None = None

    @property
    def windowed(self) -> bool:
        return self.split is not None

    def forward_window(self, items: list[Message], take: list[Callable[[], Message]]) -> list[Message]:
        msgs: list[Message | None] = [None] * len(items)

        def start(k: int) -> SyntheticSplitWork:
            msg = msgs[k] = take[k]()
            span, noise, exchange, head = self._start(msg)
            if self.split.first:
                self.channel.open(msg.segment, self.steps, (1, LATENT_DIM, head) if head else None, None)
            return SyntheticSplitWork(self.steps, noise, exchange or (lambda step, x: x), lambda x: self._result(msg, x),
                                      self.split, 2 * self.branch_seconds / self.split.count, self.hidden)

        order = window_order([self.steps] * len(items), self.split.first)
        results = run_window(start, [m.segment for m in items], order, self.split, self.channel)
        return [m if r is None else r for r, m in zip(results, msgs)]

    def _start(self, msg: Message):
        """(latent span, noise, joint exchange or None, head frames) of the item."""
        span = (round(msg.meta["start"] * LATENT_RATE), round((msg.meta["end"] - msg.meta["start"]) * LATENT_RATE))
        noise = timeline_noise(msg.meta["seed"], *span, LATENT_DIM).to(self.device)
        if self.seam != "joint":
            return span, noise, None, 0
        latent = lambda se: (round(se[0] * LATENT_RATE), round((se[1] - se[0]) * LATENT_RATE)) if se else None
        exchange, head, _ = overlap_exchange(self.channel, msg.segment, span, latent(msg.meta.get("joint_prev")),
                                             latent(msg.meta.get("joint_next")))
        return span, noise, exchange, head

    def _result(self, msg: Message, latents: torch.Tensor) -> Message:
        audio = torch.full(OUTPUTS["diffusion"]["audio"], _value(msg) + 1, dtype=torch.float32, device=self.device)
        return Message(msg.segment, {"audio": audio, "latents": latents[0]}, msg.meta)

    def _branch(self, x: torch.Tensor, t: torch.Tensor, branch: int | None = None) -> torch.Tensor:
        deadline = time.perf_counter() + self.branch_seconds * (2 if branch is None else 1)
        v = -x
        time.sleep(max(0.0, deadline - time.perf_counter()))
        return v

    def forward(self, msg: Message) -> Message:
        if self.split is not None:
            return self.forward_window([msg], [lambda: msg])[0]
        span, noise, exchange, head = self._start(msg)
        parallel = self.channel.branch is not None
        self.channel.open(msg.segment, self.steps, (1, LATENT_DIM, head) if head else None,
                          (1, LATENT_DIM, span[1]) if parallel else None)
        velocity = self._branch
        if self.cfg_split or parallel:
            velocity = split_velocity(self._branch, self.channel if parallel else None, msg.segment)
        latents = sample(velocity, noise, self.steps, GUIDANCE, exchange=exchange)
        if parallel and self.channel.branch == 0:
            return Message(msg.segment, {}, msg.meta)
        return self._result(msg, latents)


HIDDEN = (2, 250, 1536)  # the XXL DiT's audio stream for a 5 s segment with CFG: what a layer split hands on


@dataclass
class SyntheticSplitWork:
    """A synthetic item on a split pipeline's member (models/split.py's ItemWork): each step of a
    member costs `seconds`; the latents ride along with an XXL-size hidden state and the last member
    takes the Euler step with velocity -x (guidance of equal branches is the identity), as the
    unsplit SyntheticSampler does, so the final latents are the same bits."""

    steps: int
    noise: torch.Tensor
    exchange: Callable[[int, torch.Tensor], torch.Tensor]
    finish: Callable[[torch.Tensor], Message]
    role: SplitRole
    seconds: float
    hidden_shape: tuple[int, ...] = HIDDEN

    def __post_init__(self) -> None:
        self.sigmas = flow_schedule(self.steps)[1].to(self.noise.device)
        self.hidden = torch.zeros(self.hidden_shape, device=self.noise.device)
        self.numel_in = self.noise.numel() if self.role.first else packed_numel(self._shapes())

    def _shapes(self) -> list[tuple[int, ...]]:
        return [self.hidden_shape, tuple(self.noise.shape)]

    def _timed(self, fn: Callable[[], torch.Tensor]) -> torch.Tensor:
        deadline = time.perf_counter() + self.seconds
        out = fn()
        time.sleep(max(0.0, deadline - time.perf_counter()))
        return out

    def start(self) -> torch.Tensor:
        return self.noise.float()

    def latents(self, flat: torch.Tensor) -> torch.Tensor:
        return flat.view(self.noise.shape)

    def head(self, step: int, x: torch.Tensor) -> torch.Tensor:
        return self._timed(lambda: pack([self.hidden, x]))

    def middle(self, step: int, flat: torch.Tensor) -> torch.Tensor:
        return self._timed(lambda: flat)

    def tail(self, step: int, flat: torch.Tensor) -> torch.Tensor:
        x = unpack(flat, self._shapes(), [torch.float32, torch.float32])[1]
        v = guided(torch.cat([-x, -x]), GUIDANCE)
        return self._timed(lambda: euler_step(x, v, self.sigmas[step], self.sigmas[step + 1]).reshape(-1))


def build_stages(names: tuple[str, ...], costs: dict[str, float], device: torch.device = torch.device("cpu"),
                 scale: float = 1.0, steps: int = 0, seam: str = "crossfade", cfg_split: bool = False,
                 split: SplitRole | None = None, hidden: tuple[int, ...] | None = None) -> list[nn.Module]:
    """Stages for one rank; `scale` > 1 makes this rank slower (e.g. one slow replica). With `steps`,
    diffusion is a SyntheticSampler and costs["diffusion"] is its cost per step (both CFG branches);
    `split`: its place in a layer split, handing on `hidden`-shaped states."""
    stages = [SyntheticSampler(steps, costs[n] * scale, seam, cfg_split, device, hidden) if n == "diffusion" and steps
              else SyntheticStage(n, costs[n] * scale, device) for n in names]
    if split is not None:
        stages[names.index("diffusion")].split = split
    return stages


def work_items(num_items: int, joint: bool = False) -> list[Message]:
    """Work items shaped like runtime.work_items for one job: no tensors, segment metadata."""
    step = SEGMENT_SECONDS - 1.0  # 1 s overlap, as the default SegmentPlan
    items = [Message(i, {}, {"job": 0, "video": "synthetic", "prompt": "", "seed": 0, "segment": i,
                             "start": i * step, "end": i * step + SEGMENT_SECONDS}) for i in range(num_items)]
    if joint:
        link_neighbours([m.meta for m in items])
    return items


def item_plans(items: list[Message], topo: Topology, steps: int, seam: str) -> list[ItemPlan]:
    """The synthetic job's per-item protocol needs (as runtime.item_plans for a real job)."""
    joined = joined_items([m.meta for m in items], LATENT_RATE) if seam == "joint" else [False] * len(items)
    return [ItemPlan(steps, j, bool(topo.groups[-1].partners)) for j in joined]


def expected_audio_value(segment: int, num_stages: int = len(OUTPUTS)) -> float:
    return float(segment + num_stages)


@dataclass
class RecordingSink:
    """Sink that keeps, per collected message: its segment, audio value, whether the audio is intact."""

    received: list[tuple[int, float, bool]] = field(default_factory=list)
    latents: dict[int, torch.Tensor] = field(default_factory=dict)

    def collect(self, msg: Message) -> None:
        if "latents" in msg.tensors:
            self.latents[msg.segment] = msg.tensors["latents"].clone()
        audio = msg.tensors["audio"]
        first = float(audio[0])
        intact = audio.shape == OUTPUTS["diffusion"]["audio"] and bool((audio == first).all())
        self.received.append((msg.segment, first, intact))


@dataclass
class RankResult:
    """What one rank of `run_rank` reports: its wall-clock window, spans and (sink) collected items."""

    rank: int
    start_unix: float
    end_unix: float
    stats: RankStats
    received: list[tuple[int, float, bool]] | None = None
    latents: dict[int, np.ndarray] | None = None  # sink: final latents per item (synthetic samplers)


def run_rank(layout: list[str], costs: dict[str, float], num_items: int, slow: dict[int, float] | None = None,
             max_inflight: int = 2, timeout_s: float = 60.0, steps: int = 0, seam: str = "crossfade", cfg_parallel: bool = False,
             hidden: tuple[int, ...] | None = None) -> RankResult:
    """Run the synthetic pipeline on this rank (env from torchrun or tests.distributed.ranks).

    Uses pipeline.execute and the Link with the production schedule and protocol; only the stages are
    synthetic. With `steps`, diffusion samples step by step (see
    SyntheticSampler); `seam=joint` and `cfg_parallel` exchange per-step messages through the real
    StepLinks. The clock starts after a barrier, so process start-up and rendezvous are not measured.
    """
    env = transport.detect_env("cpu")
    topo = Topology.parse(layout, env.world_size, cfg_parallel and env.world_size > 1, num_items)
    transport.init(env, timeout_s)
    names = topo.stages_of(env.rank)
    role = topo.split_role(env.rank)
    if role is not None and not steps:
        raise ValueError("a synthetic layer split samples step by step: pass steps")
    stages = build_stages(names, costs, env.device, (slow or {}).get(env.rank, 1.0), steps, seam, cfg_parallel,
                          SplitRole(*role, 0, 0) if role is not None else None, hidden)
    items = work_items(num_items, joint=seam == "joint")
    per_segment = {**costs, "diffusion": costs["diffusion"] * steps} if steps else costs  # the protocol's cost model
    link = open_link(topo, item_plans(items, topo, steps, seam), per_segment, env, timeout_s, max_inflight)
    links = step_channel(topo, link, env.rank) if link is not None and steps else None
    if links is not None:
        stages[names.index("diffusion")].channel = links
    sink = RecordingSink() if env.rank == topo.sink else None
    if env.world_size > 1:
        dist.barrier()
    rec = Recorder(env.rank, list(names), env.device)
    start = time.time()
    execute(build_schedule(topo, num_items)[env.rank], stages, items, link, rec, sink)
    if link is not None:
        link.finish()
    end = time.time()
    transport.shutdown()
    return RankResult(env.rank, start, end, rec.finish(), sink.received if sink else None,
                      {k: v.numpy() for k, v in sink.latents.items()} if sink else None)
