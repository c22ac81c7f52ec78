"""Point-to-point messages over torch.distributed, posted in the order the job's protocol fixes.

Every op of a rank goes through its `Link`, which holds the rank's program (engine/protocol.py: the
job's ops in global key order) and posts each op when its turn comes: a send when the code has
produced it and every earlier op is posted (until then it waits in memory), a receive when the code
asks for it, or, for per-step messages whose shape the stage announced, as soon as its turn comes.
That order is what keeps NCCL from deadlocking; strict mode (engine/strict.py) enforces NCCL's
rules on gloo so the CPU tests prove it.

Stage messages are a fixed-size frame (header: segment id, metadata, tensor names, dtypes and shapes
as JSON, plus the first EAGER_BYTES of the payload), then the rest of the payload as a second
transfer of exactly its size; all tensors travel as one byte buffer, so any dtype crosses any
backend. Per-step messages (joint overlaps, CFG velocities) are exactly their fp32 values: both ends
know the shapes. Waits end after `timeout_s`, so a dead peer becomes an error instead of a hang.
This module never imports a model.
"""

from __future__ import annotations

import json
import math
import os
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from foley_dist.engine import protocol, strict
from foley_dist.engine.message import Message
from foley_dist.engine.protocol import Op
from foley_dist.errors import FoleyError

HEADER_BYTES = 8192
EAGER_BYTES = 64 << 10  # headers, small messages and per-step-sized payloads; 4 MiB cost ~2 ms per message on gloo
FRAME_BYTES = HEADER_BYTES + EAGER_BYTES
_MAGIC = b"FDM1"
_DTYPES = {str(d): d for d in (
    torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64, torch.int32,
    torch.int16, torch.int8, torch.uint8, torch.bool,
)}


class PeerTimeout(RuntimeError):
    """A peer did not deliver within the timeout: it is dead, stuck or out of step."""


@dataclass(frozen=True)
class Env:
    """Where this process runs: rank, world size, device and the matching backend."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str


def detect_env(device: str = "auto") -> Env:
    """Read torchrun's variables; pick cuda:LOCAL_RANK + nccl when CUDA is present, else cpu + gloo."""
    rank = int(os.environ.get("RANK", 0))
    world = int(os.environ.get("WORLD_SIZE", 1))
    local = int(os.environ.get("LOCAL_RANK", 0))
    if device not in ("auto", "cpu", "cuda"):
        raise FoleyError(f"hardware.device={device!r}: use auto, cpu or cuda")
    if device == "cuda" and not torch.cuda.is_available():
        raise FoleyError("hardware.device=cuda but no CUDA device is visible; use hardware=auto or hardware=cpu")
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    dev = torch.device("cuda", local) if use_cuda else torch.device("cpu")
    return Env(rank, world, local, dev, "nccl" if use_cuda else "gloo")


_STORE = None  # the rendezvous store: strict mode's contact handshakes and deadlock reports
_GROUPS: dict[str, object] = {}


def init(env: Env, timeout_s: float) -> None:
    """Join the process group (torchrun's env:// rendezvous); no-op for a single process."""
    if env.world_size == 1 or dist.is_initialized():
        return
    if env.device.type == "cuda":
        torch.cuda.set_device(env.device)
    timeout = timedelta(seconds=timeout_s)
    store, _, _ = next(dist.rendezvous("env://", timeout=timeout))
    # torchrun --max-restarts keeps one store across attempts: keys of a dead attempt must not be read
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    global _STORE
    _STORE = dist.PrefixStore(f"foley_dist/attempt{attempt}", store)
    dist.init_process_group(env.backend, store=_STORE,
                            rank=env.rank, world_size=env.world_size, timeout=timeout,
                            device_id=env.device if env.device.type == "cuda" else None)


def shutdown() -> None:
    if dist.is_initialized():
        _GROUPS.clear()
        dist.destroy_process_group()


def groups(step_messages: bool) -> dict[str, object]:
    """The process groups of the protocol: stage messages on the default group; per-step messages on
    one group per direction (to a higher rank / to a lower one), so they never queue behind stage
    frames and a swap's two halves use separate connections. Made once per process; collective, so
    every rank calls it with the same `step_messages`."""
    if step_messages and protocol.UP not in _GROUPS:
        ranks = list(range(dist.get_world_size()))
        _GROUPS[protocol.UP], _GROUPS[protocol.DOWN] = dist.new_group(ranks), dist.new_group(ranks)
    return {protocol.STAGE: dist.group.WORLD, **_GROUPS}


def encode_header(msg: Message) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Header bytes (uint8, HEADER_BYTES) and the tensors in payload order."""
    names = sorted(msg.tensors)
    tensors = [msg.tensors[n] for n in names]
    spec = {
        "segment": msg.segment,
        "meta": msg.meta,
        "tensors": [[n, str(t.dtype), list(t.shape)] for n, t in zip(names, tensors)],
    }
    body = json.dumps(spec, separators=(",", ":")).encode()
    if len(body) > HEADER_BYTES - 8:
        raise ValueError(f"message header is {len(body)} bytes, over the {HEADER_BYTES - 8} limit: keep meta small")
    raw = _MAGIC + len(body).to_bytes(4, "little") + body
    header = torch.zeros(HEADER_BYTES, dtype=torch.uint8)
    header[: len(raw)] = torch.frombuffer(bytearray(raw), dtype=torch.uint8)
    return header, tensors


def decode_header(header: torch.Tensor) -> dict:
    raw = bytes(header.cpu().numpy().tobytes())
    if raw[:4] != _MAGIC:
        raise RuntimeError("received bytes that are not a foley_dist message header: ranks are out of step")
    size = int.from_bytes(raw[4:8], "little")
    return json.loads(raw[8 : 8 + size])


_ALIGN = 16  # every tensor starts at a multiple of this, so byte views can be re-viewed as any dtype


def _layout(specs: list[tuple[torch.dtype, list[int]]]) -> tuple[list[tuple[int, int]], int]:
    """(offset, nbytes) of each tensor inside the packed buffer, and the buffer's size."""
    spans, offset = [], 0
    for dtype, shape in specs:
        nbytes = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
        spans.append((offset, nbytes))
        offset += -(-nbytes // _ALIGN) * _ALIGN
    return spans, offset


def pack(tensors: list[torch.Tensor], device: torch.device) -> torch.Tensor:
    """All tensors as one flat byte buffer on `device` (byte views, so every dtype travels)."""
    spans, total = _layout([(t.dtype, list(t.shape)) for t in tensors])
    buf = torch.zeros(total, dtype=torch.uint8, device=device)
    for t, (offset, nbytes) in zip(tensors, spans):
        buf[offset : offset + nbytes] = t.detach().to(device).contiguous().reshape(-1).view(torch.uint8)
    return buf


def _specs(spec: dict) -> list[tuple[torch.dtype, list[int]]]:
    return [(_DTYPES[d], shape) for _, d, shape in spec["tensors"]]


def payload_bytes(spec: dict) -> int:
    return _layout(_specs(spec))[1]


def unpack(spec: dict, payload: torch.Tensor) -> dict[str, torch.Tensor]:
    spans, _ = _layout(_specs(spec))
    return {
        name: payload[offset : offset + nbytes].view(dtype).reshape(shape)
        for (name, _, shape), (dtype, _), (offset, nbytes) in zip(spec["tensors"], _specs(spec), spans)
    }


class ProtocolError(RuntimeError):
    """The code asked for an op its program does not hold, or in another order: a foley_dist bug,
    reported at once instead of a hang."""


class Link:
    """This rank's point-to-point endpoint: posts every op in the order of `program` (see the module
    docstring). `step_messages`: whether the job has per-step messages (the same on every rank)."""

    def __init__(self, rank: int, program: list[Op], device: torch.device, timeout_s: float,
                 max_inflight: int = 2, step_messages: bool = True, step_window: int = 256):
        self.rank, self.program, self.device = rank, program, device
        self.timeout = timedelta(seconds=timeout_s)
        self.max_inflight, self.step_window = max_inflight, step_window
        self._groups = groups(step_messages)
        self._where = {(op.kind, op.tag, op.peer): i for i, op in enumerate(program)}
        self._head = 0  # ops before it are posted, in program order
        self._ready: dict[int, Callable[[], list]] = {}  # produced, waiting for their turn
        self._posted: dict[int, object] = {}  # position -> gloo/NCCL works, or the strict stream's entry
        self._unwaited: deque[int] = deque()  # posted sends, oldest first (gloo frees them only in wait)
        self._received: dict[int, torch.Tensor] = {}
        self._stream = strict.Stream(rank, dist.get_world_size(), _STORE, timeout_s) if strict.enabled() else None

    # -- stage messages ------------------------------------------------------------------------------
    def send_message(self, msg: Message, dst: int) -> None:
        """Queue the message; it is posted when its turn in the program comes (at once, usually)."""
        pos = self._find("send", ("msg", msg.segment), dst)
        header, tensors = encode_header(msg)
        payload = pack(tensors, self.device)
        frame = torch.empty(FRAME_BYTES, dtype=torch.uint8, device=self.device)  # bytes past the payload are never read
        frame[:HEADER_BYTES] = header.to(self.device)
        eager = min(payload.numel(), EAGER_BYTES)
        frame[HEADER_BYTES : HEADER_BYTES + eager] = payload[:eager]
        group = self._groups[protocol.STAGE]

        def start() -> list:
            works = [dist.isend(frame, dst, group=group)]
            if payload.numel() > EAGER_BYTES:
                works.append(dist.isend(payload[EAGER_BYTES:], dst, group=group))
            return works

        self._ready[pos] = start
        self._advance()
        self._bound()

    def recv_message(self, item: int, src: int) -> Message:
        """Receive item's message from `src`: the frame, then (posted right after, before any other op,
        as the sender's second transfer follows its frame) the rest of a large payload."""
        pos = self._find("recv", ("msg", item), src)
        self._advance()
        self._check_turn(pos, now=True)
        group = self._groups[protocol.STAGE]
        frame = torch.empty(FRAME_BYTES, dtype=torch.uint8, device=self.device)
        self._post(pos, lambda: [dist.irecv(frame, src, group=group)])
        self._head = pos + 1
        self._wait(pos)
        spec = decode_header(frame[:HEADER_BYTES])
        if spec["segment"] != item:
            raise ProtocolError(f"expected item {item} from rank {src}, got {spec['segment']}: ranks are out of step")
        total = payload_bytes(spec)
        payload = torch.empty(total, dtype=torch.uint8, device=self.device)
        eager = min(total, EAGER_BYTES)
        payload[:eager] = frame[HEADER_BYTES : HEADER_BYTES + eager]
        if total > EAGER_BYTES:
            self._post(pos, lambda: [dist.irecv(payload[EAGER_BYTES:], src, group=group)])
            self._wait(pos)
        self._advance()
        return Message(spec["segment"], unpack(spec, payload), spec["meta"])

    # -- per-step messages ---------------------------------------------------------------------------
    def expect(self, tag: tuple, src: int, shape: tuple[int, ...]) -> None:
        """Announce a per-step receive: it is posted as soon as its turn comes, before the code waits."""
        pos = self._find("recv", tag, src)
        buf = torch.empty(shape, dtype=torch.float32, device=self.device)
        group = self._groups[protocol.step_group(src, self.rank)]
        self._received[pos] = buf
        self._ready[pos] = lambda: [dist.irecv(buf, src, group=group)]
        self._advance()

    def recv_step(self, tag: tuple, src: int) -> torch.Tensor:
        pos = self._find("recv", tag, src)
        if pos not in self._received:
            raise ProtocolError(f"rank {self.rank}: {tag} from rank {src} was not announced with expect()")
        self._advance()
        self._check_turn(pos)
        self._wait(pos)
        return self._received.pop(pos)

    def send_step(self, tag: tuple, tensor: torch.Tensor, dst: int, owned: bool = False) -> None:
        """`owned`: the caller hands the tensor over (never touches it again), so it is sent without a copy
        if it is already a contiguous fp32 tensor on the device (a layer split's multi-MB hidden states)."""
        pos = self._find("send", tag, dst)
        buf = tensor.detach().to(self.device, torch.float32, copy=not owned).contiguous()
        group = self._groups[protocol.step_group(self.rank, dst)]
        self._ready[pos] = lambda: [dist.isend(buf, dst, group=group)]
        self._advance()
        self._bound()

    def swap(self, tag: tuple, tensor: torch.Tensor, peer: int) -> torch.Tensor:
        """Send this rank's tensor to `peer` and receive the peer's, posted together (NCCL's grouped
        send/recv): neither half can wait for the other."""
        pos = self._find("swap", tag, peer)
        mine = tensor.detach().to(self.device, torch.float32, copy=True).contiguous()
        theirs = torch.empty_like(mine)
        out, back = self._groups[protocol.step_group(self.rank, peer)], self._groups[protocol.step_group(peer, self.rank)]
        self._ready[pos] = lambda: [dist.isend(mine, peer, group=out), dist.irecv(theirs, peer, group=back)]
        self._advance()
        self._check_turn(pos)
        self._wait(pos)
        return theirs

    # -- start-up and end ----------------------------------------------------------------------------
    def connect(self) -> None:
        """Connect every pair the job uses, one batched exchange per group, before any work: NCCL's
        first op between two ranks blocks until the peer posts toward it, so no op of the run may be
        a first contact. Collective: every rank calls it."""
        peers = protocol.connections(self.program)
        for name in (protocol.STAGE, protocol.UP, protocol.DOWN):
            if name not in self._groups:
                continue
            group = self._groups[name]
            dist.barrier(group=group)  # the communicator exists on every rank before its p2p
            mine = peers.get(name, [])
            if not mine:
                continue
            if self._stream is not None:
                self._stream.contact(name, mine)
            out = [torch.ones(1, device=self.device) for _ in mine]
            back = [torch.empty(1, device=self.device) for _ in mine]
            ops = [dist.P2POp(dist.isend, t, p, group) for t, p in zip(out, mine)]
            ops += [dist.P2POp(dist.irecv, t, p, group) for t, p in zip(back, mine)]
            self._sync(lambda: dist.batch_isend_irecv(ops), mine[0], f"the start-up connection on group {name}")

    def finish(self) -> None:
        """Every op of the program must have been posted; wait for the last sends."""
        if self._head < len(self.program) or self._received:
            left = self.program[self._head] if self._head < len(self.program) else "an announced receive"
            raise ProtocolError(f"rank {self.rank} ended with ops of its program left (next: {left}); this is a bug in "
                                "foley_dist")
        while self._unwaited:
            self._wait(self._unwaited.popleft())
        if self._stream is not None:
            self._stream.close()

    @property
    def held(self) -> int:
        """Send buffers kept: produced but not yet posted, or posted and not yet confirmed."""
        return len(self._unwaited) + sum(self.program[p].kind == "send" for p in self._ready)

    # -- internals -----------------------------------------------------------------------------------
    def _find(self, kind: str, tag: tuple, peer: int) -> int:
        pos = self._where.get((kind, tag, peer))
        if pos is None:
            raise ProtocolError(f"rank {self.rank}: {kind} {tag} with rank {peer} is not in this job's program; this is "
                                "a bug in foley_dist")
        return pos

    def _check_turn(self, pos: int, now: bool = False) -> None:
        """`pos` must be posted (or, with `now`, be the next op): else an earlier op was never produced."""
        if pos != self._head if now else pos >= self._head:
            first = self.program[min(self._head, pos)]
            raise ProtocolError(
                f"rank {self.rank} needs {self.program[pos]} but its program first expects {first}, which this rank's "
                "code has not produced: the code and the protocol disagree (a bug in foley_dist)")

    def _advance(self) -> None:
        """Post every op whose turn has come and that the code has produced or asked for."""
        while self._head in self._ready:
            pos = self._head
            self._head += 1
            self._post(pos, self._ready.pop(pos))
            if self.program[pos].kind == "send":
                self._unwaited.append(pos)

    def _post(self, pos: int, start: Callable[[], list]) -> None:
        op = self.program[pos]
        if self._stream is not None:
            try:
                for name in ((protocol.UP, protocol.DOWN) if op.kind == "swap" else (op.group,)):
                    self._stream.contact(name, [op.peer])
            except strict.StrictDeadlock as e:
                raise PeerTimeout(str(e)) from e
        self._posted[pos] = self._start(start, op.peer, f"{op} (key {op.key})")

    def _wait(self, pos: int) -> None:
        op = self.program[pos]
        self._complete(self._posted.pop(pos), op.peer, str(op))
        if op.kind != "send":  # sends before a completed receive were taken (so under NCCL's order): free them
            while self._unwaited and self._unwaited[0] < pos:
                self._wait(self._unwaited.popleft())

    def _sync(self, start: Callable[[], list], peer: int, what: str) -> None:
        self._complete(self._start(start, peer, what), peer, what)

    def _start(self, start: Callable[[], list], peer: int, what: str) -> object:
        """Post `start`'s works now, or queue them on the strict stream; returns what `_complete` waits on."""
        if self._stream is not None:
            return self._stream.submit(start, what)
        try:
            return start()
        except RuntimeError as e:  # a connection the peer already closed
            raise PeerTimeout(f"rank {peer} failed during {what}: {str(e).splitlines()[0]}") from e

    def _complete(self, handle, peer: int, what: str) -> None:
        """Wait for posted works (or a strict stream entry); a dead, silent or deadlocked peer is PeerTimeout."""
        if self._stream is None:
            for work in handle:
                wait_for(work, peer, what, self.timeout)
            return
        try:
            self._stream.wait(handle, self.timeout)
        except strict.StrictDeadlock as e:
            raise PeerTimeout(str(e)) from e
        except RuntimeError as e:
            raise PeerTimeout(f"rank {peer} failed during {what}: {str(e).splitlines()[0]}") from e

    def _bound(self) -> None:
        """Back-pressure: at most `max_inflight` stage sends and `step_window` per-step sends posted
        but unconfirmed; waiting on a posted op cannot deadlock (every op before it is posted too)."""
        for limit, stage in ((self.max_inflight, True), (self.step_window, False)):
            mine = [p for p in self._unwaited if (self.program[p].group == protocol.STAGE) == stage]
            for pos in mine[: max(0, len(mine) - limit)]:
                self._unwaited.remove(pos)
                self._wait(pos)


class StepLinks:
    """The diffusion stage's per-step channel across ranks (joint overlaps, CFG-parallel velocities,
    a layer split's hidden states), over the rank's Link. `owner(item)` is the rank sampling `item` in
    this rank's CFG branch; `partner` the rank evaluating the other branch, if any; `ring` the
    (previous, next) member of this rank's split pipeline, if any."""

    def __init__(self, link: Link, owner, partner: int | None, branch: int | None,
                 ring: tuple[int, int] | None = None):
        self.link, self.rank, self.owner, self.partner, self.branch = link, link.rank, owner, partner, branch
        self.ring = ring
        self._local: dict[tuple[int, int], torch.Tensor] = {}  # (item, step) -> tail from this rank or a resume

    def preload(self, item: int, tails: torch.Tensor) -> None:
        self._local.update({(item, step): t.to(self.link.device) for step, t in enumerate(tails)})

    def open(self, item: int, steps: int, head: tuple[int, ...] | None, swap: tuple[int, ...] | None) -> None:
        if swap is not None and self.partner is None:
            raise RuntimeError("CFG-parallel velocity swap on a rank without a partner")
        if head is not None and self.owner(item - 1) != self.rank and (item, 0) not in self._local:
            for step in range(steps + 1):
                self.link.expect(("tail", item, step), self.owner(item - 1), head)

    def take(self, item: int, step: int) -> torch.Tensor:
        if (item, step) in self._local:  # from this rank's own previous item, or preloaded
            return self._local.pop((item, step))
        return self.link.recv_step(("tail", item, step), self.owner(item - 1))

    def give(self, item: int, step: int, tail: torch.Tensor) -> None:
        if self.owner(item + 1) == self.rank:
            self._local[(item + 1, step)] = tail.clone()
        else:
            self.link.send_step(("tail", item + 1, step), tail, self.owner(item + 1))

    def swap(self, item: int, step: int, velocity: torch.Tensor) -> torch.Tensor:
        return self.link.swap(("swap", item, step), velocity, self.partner)

    def expect_split(self, item: int, step: int, numel: int) -> None:
        self.link.expect(("split", item, step), self.ring[0], (numel,))

    def recv_split(self, item: int, step: int) -> torch.Tensor:
        return self.link.recv_step(("split", item, step), self.ring[0])

    def send_split(self, item: int, step: int, flat: torch.Tensor) -> None:
        self.link.send_step(("split", item, step), flat, self.ring[1], owned=True)

    @property
    def held(self) -> int:
        return len(self._local) + self.link.held


def wait_for(work, peer: int, what: str, timeout: timedelta) -> None:
    """Wait for a send or receive; a peer that fails or stays silent past `timeout` raises PeerTimeout."""
    try:
        ok = work.wait(timeout)
    except RuntimeError as e:
        if "timed out" in str(e).lower():
            ok = False
        else:
            raise PeerTimeout(f"rank {peer} failed during {what}: {str(e).splitlines()[0]}") from e
    if ok is False:
        raise PeerTimeout(
            f"rank {peer} delivered nothing for {timeout.total_seconds():g} s ({what}); it is dead or stuck "
            "(raise hardware.timeout_s if a stage legitimately takes longer)"
        )


def gather_objects(obj, dst: int, world_size: int) -> list | None:
    """Collect one picklable object per rank on `dst` (run reports); None elsewhere."""
    if world_size == 1:
        return [obj]
    out = [None] * world_size if dist.get_rank() == dst else None
    dist.gather_object(obj, out, dst=dst)
    return out


def broadcast_object(obj, src: int, world_size: int):
    """`obj` from rank `src` on every rank (start-up state such as finished segments)."""
    if world_size == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


