"""Dead-peer detection that does not depend on the data backend: a heartbeat through the c10d store.

gloo tells a rank at once that its peer died (the connection closes); NCCL does not. A killed NCCL
peer leaves its partners blocked in a wait until the process-group timeout, and a SIGSTOPped or
wedged peer looks the same under either backend. So every rank of a multi-rank run runs a daemon
thread that, every INTERVAL_S, bumps its own counter in the job's TCP store (its own client
connection to MASTER_ADDR:MASTER_PORT, never the NCCL or gloo data path) and reads every peer's:

- a peer whose counter has not moved for DEAD_AFTER_S is dead (SIGKILL, OOM killer, hung, host gone);
- a peer that ended with its own error (exit 2 bad input, 1 a bug) ends this rank too, naming it;
- a peer that gave up because of a third rank names that rank, so every survivor blames the same one;
- a peer that finished (0) or was terminated (143, 130) is no longer watched;
- a store that stops answering for DEAD_AFTER_S means its host is gone (node 0's launcher, or rank 0
  when ranks were started without torch's agent).

On a verdict the thread prints one line naming the dead rank, records it (with `cause`, which the
launcher uses to blame that rank), lets the sink drop its temporary output (finished segments stay on
disk), and ends the process with exit 3 through os._exit: the main thread may be blocked in a C++
wait that no Python exception or signal handler can interrupt. For the same reason the thread also
watches for SIGTERM/SIGINT (through signal.set_wakeup_fd): if the main thread has not ended
TERM_GRACE_S after one arrived, the thread exits with 143/130 for it, so torch's agent need not wait
out its 30 s before SIGKILL, which the launcher would read as a crash.

DEAD_AFTER_S = 6 keeps a SIGKILL-to-job-exit time under 10 s (6 s of silence, up to one interval to
see it, about a second to exit and for the launcher to stop the rest) while tolerating a rank starved
of CPU for seconds: the thread needs only the GIL for a few microseconds per beat (torch kernels
release it) and the store is served by its own C++ thread.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Callable

import torch.distributed as dist

from foley_dist.engine.transport import PeerTimeout
from foley_dist.errors import record_failure

INTERVAL_S = 0.5
DEAD_AFTER_S = 6.0
STORE_TIMEOUT_S = 2.0  # one store operation; a store silent past DEAD_AFTER_S is dead
TERM_GRACE_S = 2.0  # a main thread blocked in a C++ wait ignores SIGTERM; after this the heartbeat exits for it
PEER_FAILED = 3
PASSIVE = (0, 130, 143)  # a peer that finished or was stopped by a signal: its silence is no failure
# set in every rank, and by `foley-dist launch` before torch's agent (which would set ASYNC_ERROR_HANDLING=1)
NCCL_ENV = {"TORCH_NCCL_BLOCKING_WAIT": "1", "TORCH_NCCL_ASYNC_ERROR_HANDLING": "2"}


def configure_nccl(timeout_s: float) -> dict[str, str]:
    """Set NCCL's failure behaviour before the process group exists (os.environ.setdefault: a user's
    own setting wins). Returns what is in effect. See README.md, Render farms.

    - TORCH_NCCL_BLOCKING_WAIT=1: a wait blocks the calling thread until the transfer is done or
      hardware.timeout_s has passed, then raises in Python (transport's PeerTimeout, exit 3). Without
      it torch 2.4 ignores wait(timeout) on the host, and later versions block only when a timeout is
      passed. In every version of the supported range it also keeps the watchdog from tearing the
      process down (2.4 forces NoHandling, later versions start no watchdog thread).
    - TORCH_NCCL_ASYNC_ERROR_HANDLING=2 (CleanUpOnly): should a user turn blocking waits off, a timed
      out communicator is aborted and the error raised in the waiting thread instead of SIGABRT
      (1 and torch's default 3 kill the process, which the launcher cannot tell from a crash).
    - TORCH_NCCL_HEARTBEAT_TIMEOUT_SEC: NCCL's monitor kills a process whose watchdog thread is stuck
      this long; kept past the process-group timeout so it never fires before our own error.
    """
    wanted = {**NCCL_ENV, "TORCH_NCCL_HEARTBEAT_TIMEOUT_SEC": str(int(timeout_s) + 60)}
    return {k: os.environ.setdefault(k, v) for k, v in wanted.items()}


def exit_code(error: BaseException) -> int:
    """The exit code the command line gives `error` (cli.main): what peers read from this rank's end."""
    if isinstance(error, PeerTimeout):
        return PEER_FAILED
    if isinstance(error, KeyboardInterrupt):
        return 130
    return int(getattr(error, "exit_code", 1))


@dataclass
class Watch:
    """What this rank knows of its peers; `update` turns one round of store reads into a verdict.

    Pure logic (no store, no clock): the heartbeat thread feeds it, tests feed it a fake clock."""

    rank: int
    peers: list[int]
    now: float
    dead_after: float = DEAD_AFTER_S
    last: dict[int, tuple[int, float]] = field(default_factory=dict)  # peer -> (counter, when it last moved)
    store_ok: float = 0.0

    def __post_init__(self) -> None:
        self.last = {p: (0, self.now) for p in self.peers}  # 0: never beat; silence counts from now
        self.store_ok = self.now

    def update(self, now: float, counts: dict[int, int], ends: dict[int, dict]) -> tuple[int, str] | None:
        """(dead rank, reason) once a peer is dead or failed, else None. `ends` holds the peers that
        stopped: {"code": exit code, "cause": the rank it found dead or None, "reason": why}."""
        self.store_ok = now
        ended = {p: ends[p] for p in self.last if p in ends}
        for p, end in ended.items():  # a peer's own failure first: peers that noticed it follow from it
            if end["code"] not in PASSIVE and end["code"] != PEER_FAILED:
                return p, f"rank {p} failed with exit code {end['code']} (see its message)"
        for p, end in ended.items():
            cause = end.get("cause")
            if end["code"] == PEER_FAILED and cause == self.rank:
                return cause, f"rank {p} found this rank unresponsive (stopped, starved or hung)"
            if end["code"] == PEER_FAILED and cause is not None and cause != p:
                return cause, f"{end.get('reason') or f'rank {cause} failed'} (found by rank {p})"
            del self.last[p]  # finished, terminated, or failed because of a peer it could not name
        for p, (count, since) in list(self.last.items()):
            if counts[p] != count:
                self.last[p] = (counts[p], now)
            elif now - since > self.dead_after:
                return p, f"rank {p} stopped answering (no heartbeat for {now - since:.0f} s: killed, hung or its host is gone)"
        return None

    def store_silent(self, now: float) -> bool:
        return now - self.store_ok > self.dead_after


def store_host_rank() -> int | None:
    """Which rank hosts the store: rank 0 without torch's agent; None when the agent does (node 0)."""
    return None if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True" else 0


class Heartbeat:
    """One rank's beat and watch (module docstring). `cleanup` runs before a verdict's exit."""

    _runs = 0  # every rank starts the same number of runs, so the n-th run's keys match across ranks

    def __init__(self, rank: int, world_size: int, store: dist.Store, prefix: str):
        self.rank, self.world_size, self.store, self.prefix = rank, world_size, store, prefix
        self.cleanup: Callable[[], None] | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()  # a verdict and a normal stop never interleave
        self._thread = threading.Thread(target=self._loop, name="foley-dist-heartbeat", daemon=True)
        self._signals: int | None = None  # read end of the signal wake-up pipe, when this rank owns it

    @classmethod
    def start(cls, rank: int, world_size: int) -> "Heartbeat | None":
        """Start beating and watching; None for a single process (nothing to watch)."""
        if world_size == 1:
            return None
        cls._runs += 1
        store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), None, False,
                              timedelta(seconds=STORE_TIMEOUT_S), wait_for_workers=False)
        attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")  # keys of a dead attempt are not read
        beat = cls(rank, world_size, store, f"foley_dist/attempt{attempt}/liveness{cls._runs}/")
        store.add(beat._key("beat", rank), 1)
        beat._watch_signals()
        beat._thread.start()
        return beat

    def _watch_signals(self) -> None:
        """Have Python write each signal it catches to a pipe this thread reads; only from the main
        thread, and only if nothing else (an asyncio loop) uses the wake-up fd."""
        read, write = os.pipe()
        os.set_blocking(read, False)
        os.set_blocking(write, False)
        try:
            previous = signal.set_wakeup_fd(write, warn_on_full_buffer=False)
        except ValueError:  # not the main thread
            previous = None
        if previous == -1:
            self._signals = read
            return
        if previous is not None:
            signal.set_wakeup_fd(previous)
        os.close(read)
        os.close(write)

    def _caught(self) -> int | None:
        """SIGTERM or SIGINT, if Python caught one since the last look."""
        try:
            got = os.read(self._signals, 64) if self._signals is not None else b""
        except BlockingIOError:
            got = b""
        return next((s for s in (signal.SIGTERM, signal.SIGINT) if s in got), None)

    def stop(self, error: BaseException | None = None) -> None:
        """Leave the watch: peers read this rank's exit code (0 when `error` is None) and stop
        watching it, or end themselves if it was this rank's own failure."""
        with self._lock:
            self._stop.set()
            self._end(0 if error is None else exit_code(error), None)
        self._thread.join(timeout=STORE_TIMEOUT_S + INTERVAL_S)
        if self._signals is not None:
            try:
                os.close(signal.set_wakeup_fd(-1))
            except ValueError:  # stopped from another thread: leave the pipe to the process's end
                pass
        if error is not None:
            self._linger()

    def _linger(self) -> None:
        """Without torch's agent this rank may host the store: let the peers read its end first."""
        if store_host_rank() == self.rank:
            time.sleep(3 * INTERVAL_S)

    def _key(self, kind: str, rank: int) -> str:
        return f"{self.prefix}{kind}{rank}"

    def _end(self, code: int, cause: int | None, reason: str = "") -> None:
        try:
            self.store.set(self._key("end", self.rank), json.dumps({"code": code, "cause": cause, "reason": reason}))
        except RuntimeError:
            pass  # the store is gone: peers see the silence instead

    def _read(self, peers: list[int]) -> tuple[dict[int, int], dict[int, dict]]:
        self.store.add(self._key("beat", self.rank), 1)
        counts, ends = {}, {}
        for p in peers:
            counts[p] = self.store.add(self._key("beat", p), 0)
            if self.store.check([self._key("end", p)]):
                ends[p] = json.loads(self.store.get(self._key("end", p)))
        return counts, ends

    def _loop(self) -> None:
        watch = Watch(self.rank, [p for p in range(self.world_size) if p != self.rank], time.monotonic())
        failed = None  # the store's first error: a TCPStore client does not recover from one, so no retries
        signalled: tuple[int, float] | None = None
        while not self._stop.wait(INTERVAL_S):
            caught = self._caught()
            if signalled is None and caught is not None:
                signalled = (caught, time.monotonic())
            if signalled is not None and time.monotonic() - signalled[1] > TERM_GRACE_S:
                name = signal.Signals(signalled[0]).name
                self._exit(128 + signalled[0], f"foley-dist: rank {self.rank}: terminated ({name}) while blocked in a "
                                               "wait; finished segments are kept, re-run to resume")
            verdict = None
            if failed is None:
                try:
                    verdict = watch.update(time.monotonic(), *self._read(list(watch.last)))
                except RuntimeError as e:  # a closed connection or the store's own timeout
                    failed = str(e).splitlines()[0]
            if failed is not None and watch.store_silent(time.monotonic()):  # the run may still end normally
                host = store_host_rank()
                where = f"rank {host}" if host is not None else "node 0's launcher"
                verdict = (host, f"the job's store ({where}) stopped answering for "
                                 f"{time.monotonic() - watch.store_ok:.0f} s ({failed})")
            if verdict is not None:
                dead, reason = verdict
                self._exit(PEER_FAILED, f"foley-dist: rank {self.rank}: {reason}; finished segments are kept, "
                                        "re-run the same command to resume", dead, reason)

    def _exit(self, code: int, line: str, dead: int | None = None, reason: str = "") -> None:
        """Record, tell the peers, let the sink clean up and end the process, unless the run ended first."""
        with self._lock:
            if self._stop.is_set():
                return  # the run ended normally meanwhile
            record_failure(code, line, cause=dead)
            self._end(code, dead, reason)
            if self.cleanup is not None:
                try:
                    self.cleanup()
                except Exception:  # the main thread may be using the same files; exit regardless
                    pass
            sys.stdout.flush()
            self._linger()
            os._exit(code)


def stop(beat: Heartbeat | None, error: BaseException | None = None) -> None:
    if beat is not None:
        beat.stop(error)
