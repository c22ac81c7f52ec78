"""Point-to-point messages over torch.distributed: a fixed-size frame (header + eager payload), then the rest.

The header (segment id, metadata, tensor names, dtypes and shapes as JSON) lets a receiver allocate
exactly what arrives without guessing shapes. All tensors of a message travel as one byte buffer,
so any dtype (bool, bf16, ...) crosses any backend. The first EAGER_BYTES of that buffer ride in the
same fixed-size frame as the header, so a receiver can post the receive for its *next* message
before it knows that message's size (`prefetch`); a larger payload follows as a second transfer of
exactly its size. The frame is small because every message pays for all of it (gloo and NCCL match
sizes exactly), on the sender's thread when the receive is already posted; the second transfer is
written by the backend once the receiver posts it, off the sender's compute. Sends are non-blocking
with a bounded number in flight (back-pressure); receives wait at most `timeout_s`, so a dead peer
becomes an error instead of a hang. This module never imports a model.
"""

from __future__ import annotations

import json
import math
import os
from collections import deque
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from foley_dist.engine.message import Message
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
    dist.init_process_group(env.backend, store=dist.PrefixStore(f"foley_dist/attempt{attempt}", store),
                            rank=env.rank, world_size=env.world_size, timeout=timeout,
                            device_id=env.device if env.device.type == "cuda" else None)


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


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


class Transport:
    """Sends and receives `Message`s between ranks; the only place that calls torch.distributed p2p."""

    def __init__(self, device: torch.device, timeout_s: float, max_inflight: int = 2):
        self.device = device
        self.timeout = timedelta(seconds=timeout_s)
        self.max_inflight = max_inflight
        self._inflight: deque[tuple[int, list]] = deque()  # (dst, [works, buffers kept alive until done])
        self._posted: dict[int, tuple[object, torch.Tensor]] = {}  # src -> (irecv work, frame buffer)

    def send(self, msg: Message, dst: int) -> None:
        """Post the message without waiting for it, unless `max_inflight` sends are outstanding."""
        header, tensors = encode_header(msg)
        payload = pack(tensors, self.device)
        frame = torch.empty(FRAME_BYTES, dtype=torch.uint8, device=self.device)  # bytes past the payload are never read
        frame[:HEADER_BYTES] = header.to(self.device)
        eager = min(payload.numel(), EAGER_BYTES)
        frame[HEADER_BYTES : HEADER_BYTES + eager] = payload[:eager]
        works = [dist.isend(frame, dst)]
        if payload.numel() > EAGER_BYTES:
            works.append(dist.isend(payload[EAGER_BYTES:], dst))
        self._inflight.append((dst, [works, frame, payload]))
        while len(self._inflight) > self.max_inflight:
            self._wait_oldest()

    def prefetch(self, src: int) -> None:
        """Post the receive of the next frame from `src` now, so it arrives while this rank computes."""
        if src not in self._posted:
            frame = torch.empty(FRAME_BYTES, dtype=torch.uint8, device=self.device)
            self._posted[src] = (dist.irecv(frame, src), frame)

    def recv(self, src: int) -> Message:
        self.prefetch(src)
        work, frame = self._posted.pop(src)
        self._wait(work, src, "message")
        spec = decode_header(frame[:HEADER_BYTES])
        total = payload_bytes(spec)
        payload = torch.empty(total, dtype=torch.uint8, device=self.device)
        eager = min(total, EAGER_BYTES)
        payload[:eager] = frame[HEADER_BYTES : HEADER_BYTES + eager]
        if total > EAGER_BYTES:  # finish this message before any later frame from src is posted
            self._wait(dist.irecv(payload[EAGER_BYTES:], src), src, f"payload of segment {spec['segment']}")
        return Message(spec["segment"], unpack(spec, payload), spec["meta"])

    def flush(self) -> None:
        """Wait until every posted send has been delivered."""
        while self._inflight:
            self._wait_oldest()

    @property
    def inflight(self) -> int:
        return len(self._inflight)

    def _wait_oldest(self) -> None:
        dst, (works, *_buffers) = self._inflight.popleft()
        for w in works:
            self._wait(w, dst, "send")

    def _wait(self, work, peer: int, what: str) -> None:
        wait_for(work, peer, what, self.timeout)


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


def _posting(post, peer: int, what: str):
    """Post an isend/irecv; a connection the peer already closed is reported like a failed wait."""
    try:
        return post()
    except RuntimeError as e:
        raise PeerTimeout(f"rank {peer} failed during {what}: {str(e).splitlines()[0]}") from e


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


def step_groups() -> tuple:
    """Process groups for per-step messages: one for messages to a higher rank, one for messages to a
    lower rank. Their own groups keep them from queueing behind stage frames between the same two ranks
    (NCCL matches point-to-point messages per communicator in posting order); one group per direction
    keeps a swap's two simultaneous messages on separate connections, so neither end's send contends
    with its receive. Collective: every rank calls it, in the same order."""
    ranks = list(range(dist.get_world_size()))
    return dist.new_group(ranks), dist.new_group(ranks)


class StepLinks:
    """Per-step messages between diffusion ranks (joint overlaps, CFG-parallel velocities): sized by
    what they carry, no header; receives posted when an item opens, sends never block the sampler.

    Both ends derive every shape from the schedule and the segments, so a message is exactly its
    fp32 values plus an (item, step) stamp the receiver checks. `owner(item)` is the rank sampling
    `item` in this rank's branch; `partner` is the rank evaluating the other CFG branch, if any;
    `groups` are `step_groups()`.
    """

    def __init__(self, rank: int, owner, partner: int | None, branch: int | None, device: torch.device,
                 timeout_s: float, groups: tuple):
        self.rank, self.owner, self.partner, self.branch = rank, owner, partner, branch
        self.device, self.timeout, self.groups = device, timedelta(seconds=timeout_s), groups
        self._local: dict[tuple[str, int, int], torch.Tensor] = {}
        self._posted: dict[tuple[str, int, int], tuple] = {}  # (kind, item, step) -> (irecv, buffer, src, shape)
        self._sends: deque[tuple[object, torch.Tensor, int]] = deque()

    def preload(self, item: int, tails: torch.Tensor) -> None:
        self._local.update({("take", item, step): t.to(self.device) for step, t in enumerate(tails)})

    def open(self, item: int, steps: int, head: tuple[int, ...] | None, swap: tuple[int, ...] | None) -> None:
        # Sends of this rank's earlier items went to items that opened long ago (each waits only on a lower
        # item, so this cannot deadlock): waiting frees their buffers, which gloo holds until waited on.
        self.flush()
        resumed = ("take", item, 0) in self._local
        if head is not None and self.owner(item - 1) != self.rank and not resumed:
            for step in range(steps + 1):
                self._post("take", item, step, head, self.owner(item - 1))
        if swap is not None:
            if self.partner is None:
                raise RuntimeError("CFG-parallel velocity swap on a rank without a partner")
            for step in range(steps):
                self._post("swap", item, step, swap, self.partner)

    def take(self, item: int, step: int) -> torch.Tensor:
        if ("take", item, step) in self._local:  # from this rank's own previous item, or preloaded
            return self._local.pop(("take", item, step))
        return self._receive("take", item, step)

    def give(self, item: int, step: int, tail: torch.Tensor) -> None:
        if self.owner(item + 1) == self.rank:
            self._local[("take", item + 1, step)] = tail.clone()
        else:
            self._send(tail, item + 1, step, self.owner(item + 1))

    def swap(self, item: int, step: int, velocity: torch.Tensor) -> torch.Tensor:
        self._send(velocity, item, step, self.partner)
        return self._receive("swap", item, step)

    def flush(self) -> None:
        while self._sends:
            work, _, peer = self._sends.popleft()
            wait_for(work, peer, "per-step send", self.timeout)

    @property
    def held(self) -> int:
        """Send buffers kept until their delivery is confirmed (at most about one item's steps)."""
        return len(self._sends)

    def _post(self, kind: str, item: int, step: int, shape: tuple[int, ...], src: int) -> None:
        buf = torch.empty(math.prod(shape) + 2, dtype=torch.float32, device=self.device)
        group = self.groups[src > self.rank]  # messages travel on the group of their direction
        work = _posting(lambda: dist.irecv(buf, src, group=group), src, f"step {step} of item {item} ({kind})")
        self._posted[(kind, item, step)] = (work, buf, src, shape)

    def _receive(self, kind: str, item: int, step: int) -> torch.Tensor:
        work, buf, src, shape = self._posted.pop((kind, item, step))
        wait_for(work, src, f"step {step} of item {item} ({kind})", self.timeout)
        stamp = buf[-2:].tolist()
        if stamp != [float(item), float(step)]:
            raise RuntimeError(f"rank {src} sent step {stamp[1]:g} of item {stamp[0]:g}, expected step {step} of item "
                               f"{item}: ranks are out of step")
        return buf[:-2].view(shape)

    def _send(self, tensor: torch.Tensor, item: int, step: int, dst: int) -> None:
        stamp = torch.tensor([item, step], dtype=torch.float32, device=self.device)
        buf = torch.cat([tensor.detach().to(self.device, torch.float32).reshape(-1), stamp])
        group = self.groups[self.rank > dst]
        work = _posting(lambda: dist.isend(buf, dst, group=group), dst, f"step {step} of item {item}")
        self._sends.append((work, buf, dst))
