"""The pipeline engine: walks one rank's schedule, moving messages between transport and stages.

It knows nothing about models (stages are any modules with `.name` and forward(message) -> message)
and nothing about files (the sink is any object with `collect(message)`), so benchmarks and tests
drive it with synthetic stages.
"""

from __future__ import annotations

from typing import Protocol

import torch

from foley_dist.engine import transport
from foley_dist.engine.message import Message
from foley_dist.engine.metrics import Recorder
from foley_dist.engine.schedule import Action, Topology
from foley_dist.errors import FoleyError


class Collector(Protocol):
    def collect(self, msg: Message) -> None: ...


def execute(actions: list[Action], stages: list[torch.nn.Module], items: list[Message], tr: transport.Transport | None,
            rec: Recorder, sink: Collector | None) -> None:
    """Walk this rank's schedule. Messages wait in `held` between receive, compute and send.

    After each receive the next one is posted at once, so it lands while this rank computes."""
    held: dict[int, Message] = {}
    sources = [a.peer for a in actions if a.kind == "recv"]
    if sources:
        tr.prefetch(sources[0])
    for a in actions:
        if a.kind == "recv":
            with rec.span("recv", "comm", a.item):
                msg = tr.recv(a.peer)
            sources.pop(0)
            if sources:
                tr.prefetch(sources[0])
            if msg.segment != a.item:
                raise RuntimeError(f"expected item {a.item} from rank {a.peer}, got {msg.segment}: ranks are out of step")
            held[a.item] = msg
        elif a.kind == "compute":
            msg = held.pop(a.item) if a.item in held else items[a.item]
            for stage in stages:
                if "error" in msg.meta:  # an upstream stage failed on this item: pass the reason on
                    if getattr(stage, "relays_errors", False):  # its per-step peers still expect its messages
                        msg = stage(msg)
                    continue
                try:
                    with rec.span(stage.name, "compute", a.item):
                        msg = stage(msg)
                except FoleyError as e:
                    msg = Message(msg.segment, {}, {**msg.meta, "error": f"{stage.name}: {e}"})
            held[a.item] = msg
        elif a.kind in ("send", "fork"):
            with rec.span("send", "comm", a.item):
                tr.send(held.pop(a.item) if a.kind == "send" else held[a.item], a.peer)
        elif a.kind == "drop":
            del held[a.item]
        else:
            with rec.span("sink", "io", a.item):
                sink.collect(held.pop(a.item))


def end_of_stream(tr: transport.Transport, up: list[int], down: list[int], rec: Recorder) -> None:
    """Tell downstream peers we are done and check upstream peers are too, so every rank exits cleanly."""
    for dst in down:
        tr.send(Message.end(), dst)
    for src in up:
        with rec.span("recv", "comm", -1):
            msg = tr.recv(src)
        if not msg.is_end:
            raise RuntimeError(f"rank {src} sent item {msg.segment} after the last scheduled one: ranks are out of step")
    with rec.span("flush", "comm", -1):
        tr.flush()


def step_channel(topo: Topology, env: transport.Env, timeout_s: float, needed: bool) -> transport.StepLinks | None:
    """The diffusion ranks' per-step channel (joint overlaps, CFG-parallel velocities), made on every
    rank when the run needs one (its process group is collective); None in one process."""
    if not needed or env.world_size == 1:
        return None
    group, me = topo.groups[-1], env.rank
    branch = topo.branch_of(me)
    owner = group.partner if branch == 0 else group.owner  # each CFG branch talks to the same branch
    partner = None
    if branch is not None:  # owners[j] and partners[j] form a pair
        partner = group.partners[group.ranks.index(me)] if branch == 1 else group.ranks[group.partners.index(me)]
    return transport.StepLinks(me, owner, partner, branch, env.device, timeout_s, transport.step_groups())
