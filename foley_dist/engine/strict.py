"""Strict point-to-point mode (`FOLEY_DIST_STRICT_P2P=1`): gloo made to obey NCCL's worst case.

gloo connects every pair when a group is made and progresses every posted op independently; NCCL
does neither. A job whose exchange order only works on gloo would hang on GPUs, where no check of
this project can run with two ranks. In strict mode the transport's ops go through a `Stream`:
- one op at a time, in posting order, across all of the rank's groups (NCCL's ops of a communicator
  run in order on one CUDA stream, and CUDA does not promise that two streams progress independently);
- a send completes only once its receive is posted (gloo's p2p already behaves so: data moves once
  the receiver posts);
- the first op between two ranks on a group blocks the posting thread until the peer has posted its
  first op toward this rank on that group (NCCL connects a pair lazily, at that point).
Stricter than NCCL: small sends never complete eagerly (NCCL may buffer them), and the rank's groups
share one queue (NCCL gives each communicator its own stream). A violation ends as `StrictDeadlock`
within the timeout, naming every rank that is blocked and the op it is blocked on.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Callable
from datetime import timedelta

_REPORT_AFTER_S = 1.0  # an op pending this long is published to the store for deadlock reports


def enabled() -> bool:
    return os.environ.get("FOLEY_DIST_STRICT_P2P", "") == "1"


class StrictDeadlock(RuntimeError):
    """Nothing completed within the timeout in strict mode: the exchange order deadlocks under NCCL."""


class Entry:
    """One queued op: `start()` posts its gloo works; done once all of them completed."""

    def __init__(self, start: Callable[[], list], what: str):
        self.start, self.what = start, what
        self.done = threading.Event()
        self.error: BaseException | None = None


class Stream:
    """This rank's single ordered queue of point-to-point ops (see the module docstring)."""

    def __init__(self, rank: int, world_size: int, store, timeout_s: float):
        self.rank, self.world_size, self.store, self.timeout_s = rank, world_size, store, timeout_s
        self._queue: queue.Queue[Entry | None] = queue.Queue()
        self._head: tuple[str, float] | None = None  # what the stream waits on, since when
        self._cpu: tuple[str, float] | None = None  # what the rank's code waits on, since when
        self._contacted: set[tuple[str, int]] = set()
        self._published = ""
        self._closed = threading.Event()
        self._worker = threading.Thread(target=self._run, name=f"strict-p2p-{rank}", daemon=True)
        self._monitor = threading.Thread(target=self._watch, name=f"strict-p2p-watch-{rank}", daemon=True)
        self._worker.start()
        self._monitor.start()

    def submit(self, start: Callable[[], list], what: str) -> Entry:
        entry = Entry(start, what)
        self._queue.put(entry)
        return entry

    def wait(self, entry: Entry, timeout: timedelta) -> None:
        """The rank's code waits for `entry`; StrictDeadlock after `timeout` with every rank's blocked op."""
        self._cpu = (entry.what, time.monotonic())
        try:
            if not entry.done.wait(timeout.total_seconds()):
                raise StrictDeadlock(self.report(f"rank {self.rank} waited {timeout.total_seconds():g} s for {entry.what}"))
        finally:
            self._cpu = None
        if entry.error is not None:
            raise entry.error

    def contact(self, group: str, peers: list[int]) -> None:
        """Before the first ops toward `peers` on `group`: announce them, then block until each peer
        has announced its first op toward this rank there (NCCL's lazy connection)."""
        new = [p for p in peers if (group, p) not in self._contacted]
        for p in new:
            self.store.set(f"strict/contact/{group}/{self.rank}->{p}", "1")
        for p in new:
            key = f"strict/contact/{group}/{p}->{self.rank}"
            self._cpu = (f"first contact with rank {p} on group {group}", time.monotonic())
            try:
                self.store.wait([key], timedelta(seconds=self.timeout_s))
            except RuntimeError as e:
                raise StrictDeadlock(self.report(
                    f"rank {self.rank} posted its first op toward rank {p} on group {group} and rank {p} never posted "
                    f"toward it ({str(e).splitlines()[0]})")) from e
            finally:
                self._cpu = None
            self._contacted.add((group, p))

    def close(self) -> None:
        """Stop both threads (the queue is empty: the rank waited for its last op)."""
        self._closed.set()
        self._queue.put(None)
        self._worker.join()
        self._monitor.join()

    def report(self, first: str) -> str:
        """One line: what this rank waited on and what every rank's stream and code are blocked on."""
        self._publish(force=True)
        blocked = []
        for r in range(self.world_size):
            key = f"strict/blocked/{r}"
            try:
                if self.store.check([key]):
                    text = self.store.get(key).decode()
                    if text:
                        blocked.append(f"rank {r}: {text}")
            except RuntimeError:
                blocked.append(f"rank {r}: unreachable")
        return (f"strict point-to-point mode: {first}. Blocked now: {'; '.join(blocked) or 'no rank reported'}. "
                "Under NCCL (ops complete in posting order, a send waits for its receive, the first op between two "
                "ranks waits for the peer) this exchange order deadlocks: fix the order, not the timeout")

    def _run(self) -> None:
        while (entry := self._queue.get()) is not None:
            self._head = (entry.what, time.monotonic())
            try:
                for work in entry.start():
                    work.wait(timedelta(seconds=self.timeout_s))
            except BaseException as e:  # the rank's code raises it when it waits on this entry
                entry.error = e
            self._head = None
            entry.done.set()

    def _watch(self) -> None:
        while not self._closed.wait(0.25):
            self._publish()

    def _publish(self, force: bool = False) -> None:
        now, parts = time.monotonic(), []
        for label, state in (("stream at", self._head), ("code waits on", self._cpu)):
            if state is not None and (force or now - state[1] > _REPORT_AFTER_S):
                parts.append(f"{label} {state[0]} for {now - state[1]:.0f} s")
        text = ", ".join(parts)
        if text != self._published:
            try:
                self.store.set(f"strict/blocked/{self.rank}", text)
                self._published = text
            except RuntimeError:
                pass  # the store's host is gone: the rank's own wait reports the failure
