"""The pipeline engine: walks one rank's schedule, moving messages between transport and stages.

It knows nothing about models (stages are any modules with `.name` and forward(message) -> message)
and nothing about files (the sink is any object with `collect(message)`), so benchmarks and tests
drive it with synthetic stages.
"""

from __future__ import annotations

import functools
from typing import Protocol

import torch

from foley_dist.engine import protocol, transport
from foley_dist.engine.message import Message
from foley_dist.engine.metrics import Recorder
from foley_dist.engine.schedule import Action, Topology
from foley_dist.errors import FoleyError


class Collector(Protocol):
    def collect(self, msg: Message) -> None: ...


def execute(actions: list[Action], stages: list[torch.nn.Module], items: list[Message], link: transport.Link | None,
            rec: Recorder, sink: Collector | None) -> None:
    """Walk this rank's schedule. Messages wait in `held` between receive, compute and send; the link
    posts each op in the order of the job's protocol (a send may wait in memory for its turn). A split
    pipeline's member (its diffusion stage is `windowed`) hands a window's receives to the stage, which
    takes each item's message when the item enters the window (models/split.py)."""
    held: dict[int, Message] = {}
    windowed = next((s for s in stages if getattr(s, "windowed", False)), None)  # a split pipeline's member
    for a in actions:
        if a.kind == "recv":
            with rec.span("recv", "comm", a.item):
                held[a.item] = link.recv_message(a.item, a.peer)
        elif a.kind == "compute" and a.window:
            take = [functools.partial(link.recv_message, i, src) for i, src in zip(a.window, a.sources)]
            with rec.span(windowed.name, "compute", a.item):
                held.update(zip(a.items, windowed.forward_window([items[i] for i in a.items], take)))
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
                link.send_message(held.pop(a.item) if a.kind == "send" else held[a.item], a.peer)
        elif a.kind == "drop":
            del held[a.item]
        else:
            with rec.span("sink", "io", a.item):
                sink.collect(held.pop(a.item))


def step_channel(topo: Topology, link: transport.Link, rank: int) -> transport.StepLinks | None:
    """A diffusion rank's per-step channel (joint overlaps, CFG-parallel velocities) over its link."""
    if "diffusion" not in topo.stages_of(rank):
        return None
    group, me = topo.groups[-1], rank
    branch = topo.branch_of(me)
    partner = None
    if branch is not None:  # owners[j] and partners[j] form a pair
        partner = group.partners[group.ranks.index(me)] if branch == 1 else group.ranks[group.partners.index(me)]
    ring = protocol.split_peers(topo, me) if topo.split_role(me) is not None else None
    return transport.StepLinks(link, protocol.chain_owner(topo, me), partner, branch, ring)


def open_link(topo: Topology, plans: list[protocol.ItemPlan], costs: dict[str, float], env: transport.Env,
              timeout_s: float, max_inflight: int) -> transport.Link | None:
    """Verify the job's protocol (a job whose order would deadlock under NCCL is refused, exit 2, before
    any work), then connect this rank to every peer it will use; None in one process."""
    programs = protocol.check_job(topo, plans, costs)
    if env.world_size == 1:
        return None
    step_messages = any(op.group != protocol.STAGE for ops in programs.values() for op in ops)
    link = transport.Link(env.rank, programs[env.rank], env.device, timeout_s, max_inflight, step_messages)
    link.connect()
    return link
