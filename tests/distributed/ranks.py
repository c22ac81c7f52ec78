"""Launch real gloo ranks as separate processes (torch.multiprocessing) for distributed tests."""

from __future__ import annotations

import os
import queue
import socket
import time
import traceback

import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def exit_on_call(cls: type, name: str, call: int, code: int = 9) -> None:
    """Make this process exit with `code` on the `call`-th call of cls.name (a rank dying mid-run)."""
    calls, method = [0], getattr(cls, name)

    def dying(self, *args):
        calls[0] += 1
        if calls[0] == call:
            os._exit(code)
        return method(self, *args)

    setattr(cls, name, dying)


def _entry(rank: int, world: int, port: int, fn, args, results) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    try:
        results.put((rank, "ok", fn(rank, world, *args)))
    except BaseException as e:  # report to the test instead of a silent child death
        results.put((rank, "error", f"{type(e).__name__}: {e}\n{traceback.format_exc()}"))


def run_ranks(fn, world: int, *args, timeout: float = 60.0) -> dict[int, tuple[str, object]]:
    """Run fn(rank, world, *args) on `world` processes; return {rank: (status, value)}.

    status is "ok" (value returned), "error" (exception text) or "exit" (the process died with
    that exit code before reporting)."""
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_entry, args=(r, world, port, fn, args, results)) for r in range(world)]
    for p in procs:
        p.start()
    out: dict[int, tuple[str, object]] = {}
    deadline = time.monotonic() + timeout
    try:
        while len(out) < world and time.monotonic() < deadline:
            try:
                rank, status, value = results.get(timeout=0.2)
                out[rank] = (status, value)
            except queue.Empty:
                for r, p in enumerate(procs):
                    if r not in out and p.exitcode is not None and results.empty():
                        out[r] = ("exit", p.exitcode)
    finally:
        for p in procs:
            p.join(timeout=5)
            if p.is_alive():
                p.kill()
    if len(out) < world:
        raise TimeoutError(f"ranks {sorted(set(range(world)) - set(out))} did not finish within {timeout} s")
    return out
