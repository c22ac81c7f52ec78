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
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import nn

from foley_dist import transport
from foley_dist.message import Message
from foley_dist.metrics import RankStats, Recorder
from foley_dist.pipeline import end_of_stream, execute
from foley_dist.schedule import Action, Topology, build_schedule, peers

SAMPLE_RATE = 48_000
SEGMENT_SECONDS = 5.0

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


def build_stages(names: tuple[str, ...], costs: dict[str, float], device: torch.device = torch.device("cpu"),
                 scale: float = 1.0) -> list[SyntheticStage]:
    """Stages for one rank; `scale` > 1 makes this rank slower (e.g. one slow replica)."""
    return [SyntheticStage(n, costs[n] * scale, device) for n in names]


def work_items(num_items: int) -> list[Message]:
    """Work items shaped like runtime.work_items for one job: no tensors, segment metadata."""
    step = SEGMENT_SECONDS - 1.0  # 1 s overlap, as the default SegmentPlan
    return [Message(i, {}, {"job": 0, "video": "synthetic", "prompt": "", "seed": 0, "segment": i,
                            "start": i * step, "end": i * step + SEGMENT_SECONDS}) for i in range(num_items)]


def expected_audio_value(segment: int, num_stages: int = len(OUTPUTS)) -> float:
    return float(segment + num_stages)


@dataclass
class RecordingSink:
    """Sink that keeps, per collected message: its segment, audio value, whether the audio is intact."""

    received: list[tuple[int, float, bool]] = field(default_factory=list)

    def collect(self, msg: Message) -> None:
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


def run_rank(layout: list[str], costs: dict[str, float], num_items: int, slow: dict[int, float] | None = None,
             max_inflight: int = 2, timeout_s: float = 60.0, schedule: dict[int, list[Action]] | None = None) -> RankResult:
    """Run the synthetic pipeline on this rank (env from torchrun or tests.distributed.ranks).

    Uses pipeline.execute and Transport with the production schedule (or `schedule`, to try another
    order); only the stages are synthetic. The clock starts after a barrier, so process start-up and
    rendezvous are not measured.
    """
    env = transport.detect_env("cpu")
    topo = Topology.parse(layout, env.world_size)
    transport.init(env, timeout_s)
    names = topo.stages_of(env.rank)
    stages = build_stages(names, costs, env.device, (slow or {}).get(env.rank, 1.0))
    tr = transport.Transport(env.device, timeout_s, max_inflight) if env.world_size > 1 else None
    sink = RecordingSink() if env.rank == topo.sink else None
    if env.world_size > 1:
        dist.barrier()
    rec = Recorder(env.rank, list(names), env.device)
    start = time.time()
    execute((schedule or build_schedule(topo, num_items))[env.rank], stages, work_items(num_items), tr, rec, sink)
    if tr is not None:
        end_of_stream(tr, *peers(topo, env.rank), rec)
    end = time.time()
    transport.shutdown()
    return RankResult(env.rank, start, end, rec.finish(), sink.received if sink else None)
