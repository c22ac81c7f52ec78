"""Dead peers without closed connections (engine/liveness.py): the store heartbeat ends every rank
with exit 3 naming the dead one, and the launcher blames that rank, on the same code path as NCCL."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time

import psutil
import pytest
import torch
import torch.distributed as dist
from torch.distributed.elastic.multiprocessing.errors import ProcessFailure

from foley_dist.engine import liveness, transport
from foley_dist.errors import FoleyError, record_failure
from foley_dist.launch import root_cause
from foley_dist.media.testclip import make_clip
from tests.distributed.ranks import run_ranks
from tests.distributed.test_farm import _rank_process, _wait_for
from tests.distributed.test_launch import FAST, _last_line, _launch

DEAD = liveness.DEAD_AFTER_S


# --- the verdict, on a fake clock ---------------------------------------------------------------

def test_silence_is_death_only_after_the_bound():
    w = liveness.Watch(rank=0, peers=[1, 2], now=100.0)
    assert w.update(100.5, {1: 1, 2: 1}, {}) is None
    for t in range(1, int(DEAD) + 1):  # rank 2 keeps beating, rank 1 falls silent at 100.5
        assert w.update(100.5 + t, {1: 1, 2: 1 + t}, {}) is None
    dead, reason = w.update(100.5 + DEAD + 0.5, {1: 1, 2: 99}, {})
    assert dead == 1 and "rank 1 stopped answering" in reason and f"{DEAD:.0f} s" in reason


def test_a_peer_that_never_beats_is_dead_after_the_bound_from_the_start_of_watching():
    w = liveness.Watch(rank=1, peers=[0], now=0.0)
    assert w.update(DEAD - 0.1, {0: 0}, {}) is None
    assert w.update(DEAD + 0.1, {0: 0}, {})[0] == 0


def test_finished_or_terminated_peers_are_not_watched():
    w = liveness.Watch(rank=0, peers=[1, 2, 3], now=0.0)
    ends = {1: {"code": 0, "cause": None}, 2: {"code": 143, "cause": None}, 3: {"code": 3, "cause": None}}
    assert w.update(1.0, {1: 5, 2: 5, 3: 5}, ends) is None
    assert w.update(100.0, {}, {}) is None and not w.last


def test_a_peer_failing_with_its_own_error_is_named():
    """Even when a peer that noticed it first has ended too."""
    w = liveness.Watch(rank=0, peers=[1, 2], now=0.0)
    ends = {1: {"code": 3, "cause": 2, "reason": "rank 2 failed"}, 2: {"code": 2, "cause": None}}
    assert w.update(1.0, {1: 1, 2: 1}, ends) == (2, "rank 2 failed with exit code 2 (see its message)")


def test_a_peer_that_found_a_third_rank_dead_passes_the_blame_on():
    w = liveness.Watch(rank=2, peers=[0, 1], now=0.0)
    dead, reason = w.update(1.0, {0: 1, 1: 1}, {0: {"code": 3, "cause": 1, "reason": "rank 1 stopped answering"}})
    assert dead == 1 and reason == "rank 1 stopped answering (found by rank 0)"
    dead, reason = liveness.Watch(rank=1, peers=[0], now=0.0).update(1.0, {0: 1}, {0: {"code": 3, "cause": 1}})
    assert dead == 1 and "found this rank unresponsive" in reason


def test_store_silence_bound():
    w = liveness.Watch(rank=0, peers=[1], now=0.0)
    assert not w.store_silent(DEAD - 0.1) and w.store_silent(DEAD + 0.1)


def test_exit_codes_peers_read():
    from foley_dist.cli import Preempted

    assert liveness.exit_code(transport.PeerTimeout("x")) == 3
    assert liveness.exit_code(FoleyError("x")) == 2 and liveness.exit_code(ValueError("bug")) == 1
    assert liveness.exit_code(Preempted()) == 143 and liveness.exit_code(KeyboardInterrupt()) == 130


def test_nccl_environment_is_set_but_a_users_choice_wins(monkeypatch):
    for key in ("TORCH_NCCL_BLOCKING_WAIT", "TORCH_NCCL_ASYNC_ERROR_HANDLING", "TORCH_NCCL_HEARTBEAT_TIMEOUT_SEC"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("TORCH_NCCL_ASYNC_ERROR_HANDLING", "3")
    assert liveness.configure_nccl(600.0) == {"TORCH_NCCL_BLOCKING_WAIT": "1", "TORCH_NCCL_ASYNC_ERROR_HANDLING": "3",
                                              "TORCH_NCCL_HEARTBEAT_TIMEOUT_SEC": "660"}
    assert os.environ["TORCH_NCCL_BLOCKING_WAIT"] == "1"


# --- the launcher's blame, from real error files --------------------------------------------------

def _failure(tmp_path, rank: int, exitcode: int, record: tuple | None = None) -> ProcessFailure:
    path = tmp_path / f"error{rank}.json"
    if record is not None:
        os.environ["TORCHELASTIC_ERROR_FILE"] = str(path)
        try:
            record_failure(*record)
        finally:
            del os.environ["TORCHELASTIC_ERROR_FILE"]
    return ProcessFailure(local_rank=rank, pid=1000 + rank, exitcode=exitcode, error_file=str(path))


def test_launcher_blames_the_stopped_rank_not_the_survivor_that_noticed(tmp_path):
    """SIGSTOPped (or wedged in NCCL) rank 1: the survivors record 3 naming it; the agent then
    terminates it. The earliest record is a survivor's, yet rank 1 is blamed."""
    failures = {0: _failure(tmp_path, 0, 3, (3, "rank 0: rank 1 stopped answering", 1)),
                1: _failure(tmp_path, 1, -signal.SIGTERM),
                2: _failure(tmp_path, 2, 3, (3, "rank 2: rank 1 stopped answering (found by rank 0)", 1))}
    assert root_cause(failures) == (1, 3, "rank 0: rank 1 stopped answering")


def test_launcher_blames_the_killed_rank_over_survivors_nccl_aborted(tmp_path):
    """Tear-down error handling SIGABRTs survivors too; the SIGKILLed rank is still the cause."""
    failures = {0: _failure(tmp_path, 0, -signal.SIGABRT), 1: _failure(tmp_path, 1, -signal.SIGABRT),
                2: _failure(tmp_path, 2, -signal.SIGKILL)}
    assert root_cause(failures)[:2] == (2, 3) and "SIGKILL" in root_cause(failures)[2]
    failures[0] = _failure(tmp_path, 0, 3, (3, "rank 0: rank 1 stopped answering", 1))
    assert root_cause(failures)[:2] == (1, 3)  # the rank the heartbeat named, whatever its signal


def test_launcher_keeps_a_named_ranks_own_error(tmp_path):
    """Rank 2's bad input reaches its peers through the store before its own record is written."""
    failures = {0: _failure(tmp_path, 0, 3, (3, "rank 0: rank 2 failed with exit code 2", 2)),
                1: _failure(tmp_path, 1, 3, (3, "rank 1: rank 2 failed with exit code 2", 2))}
    time.sleep(0.01)
    failures[2] = _failure(tmp_path, 2, 2, (2, "foley-dist: error: bad clip"))
    assert root_cause(failures) == (2, 2, "foley-dist: error: bad clip")


# --- real processes: survivors blocked in a C++ wait still end ------------------------------------

def _blocked_ranks(rank: int, world: int, folder: str, event: str) -> str:
    """Every rank but the last blocks in a gloo receive that never completes by itself; the last one
    fails with its own error (`event` "fail"), or rank 0 takes the store down ("store") or gets SIGTERM
    while it is blocked ("term")."""
    os.environ["TORCHELASTIC_ERROR_FILE"] = os.path.join(folder, f"error{rank}.json")
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(143))  # as cli.main: a Python handler
    env = transport.detect_env("cpu")
    transport.init(env, 120.0)
    beat = liveness.Heartbeat.start(rank, world)
    if event == "store":  # rank 0 hosts the store without torch's agent
        time.sleep(1.0 if rank == 0 else 60.0)  # 1 and 2 sleep: a wait on each other would end with the first
        os.kill(os.getpid(), signal.SIGKILL)
    if event == "fail" and rank == world - 1:
        time.sleep(1.0)
        beat.stop(FoleyError("bad input found late"))
        deadline = time.monotonic() + DEAD + 5  # alive and connected: only the store tells its peers
        while time.monotonic() < deadline and not all(os.path.exists(os.path.join(folder, f"error{r}.json")) for r in (0, 1)):
            time.sleep(0.1)
        took = time.monotonic() - deadline + DEAD + 5
        time.sleep(4 * liveness.INTERVAL_S)  # rank 0, the store's host, lingers before it exits
        return f"peers ended {took:.1f} s after its failure"
    if event == "term" and rank == 0:
        threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGTERM)).start()
    peer = world - 1 if rank != world - 1 else 0
    started = time.monotonic()
    dist.recv(torch.empty(1), src=peer)
    return f"returned after {time.monotonic() - started:.1f} s"


def test_peers_blocked_in_a_wait_exit_3_naming_a_rank_that_failed_with_its_own_error(tmp_path):
    out = run_ranks(_blocked_ranks, 3, str(tmp_path), "fail", timeout=60)
    assert out[0] == ("exit", 3) and out[1] == ("exit", 3), out
    for r in (0, 1):
        info = json.loads((tmp_path / f"error{r}.json").read_text())["foley_dist"]
        assert info["exit_code"] == 3 and info["cause"] == 2 and "rank 2 failed with exit code 2" in info["message"]
    assert out[2][0] == "ok" and float(out[2][1].split()[2]) < 3, out[2]  # within a few beats, not DEAD_AFTER_S


def test_sigterm_ends_a_rank_blocked_in_a_wait_with_143(tmp_path):
    """The Python handler cannot run while the main thread waits in C++ (NCCL, or gloo with the peer
    alive); the heartbeat thread exits for it after TERM_GRACE_S."""
    start = time.monotonic()
    out = run_ranks(_blocked_ranks, 3, str(tmp_path), "term", timeout=60)
    assert out[0] == ("exit", 143), out
    info = json.loads((tmp_path / "error0.json").read_text())["foley_dist"]
    assert info["exit_code"] == 143 and "terminated (SIGTERM) while blocked" in info["message"]
    assert time.monotonic() - start < 40


def test_a_dead_store_host_ends_the_others_naming_it(tmp_path):
    out = run_ranks(_blocked_ranks, 3, str(tmp_path), "store", timeout=60)
    assert out == {0: ("exit", -signal.SIGKILL), 1: ("exit", 3), 2: ("exit", 3)}, out
    for r in (1, 2):
        info = json.loads((tmp_path / f"error{r}.json").read_text())["foley_dist"]
        assert info["cause"] == 0 and "the job's store (rank 0) stopped answering" in info["message"]


# --- the whole job through `foley-dist launch` ------------------------------------------------------

def _ends(procs: dict[int, psutil.Process], since: float, until: float, stopped: int | None = None) -> dict[int, float]:
    """Seconds from `since` at which each rank process ended (a zombie has ended), up to `until`."""
    ends: dict[int, float] = {}
    while len(ends) < len(procs) - (stopped is not None) and time.monotonic() < until:
        for r, p in procs.items():
            try:
                gone = p.status() == psutil.STATUS_ZOMBIE
            except psutil.NoSuchProcess:
                gone = True
            if r not in ends and r != stopped and gone:
                ends[r] = round(time.monotonic() - since, 2)
        time.sleep(0.05)
    return ends


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGSTOP])
def test_dead_or_stopped_rank_ends_the_job_with_3_within_10_s_blaming_it(media_dir, tmp_path, sig):
    """SIGKILL: the agent sees the death. SIGSTOP: nothing closes, as with a dead NCCL peer; only the
    heartbeat ends the survivors. Either way: exit 3, rank 1 blamed, under 10 s."""
    clip = make_clip(media_dir / "liveness.mp4", 24, 96, 64, 24, seed=8)
    p = _launch(["generate", f"video={clip}", f"output={tmp_path / 'o.wav'}", "model.steps=30",
                 *FAST[:-1], "hardware.timeout_s=120"], 3)  # the heartbeat, not the timeout, must end it
    try:
        _wait_for(lambda: list(tmp_path.glob(".o.wav.parts-*/seg*.npy")) or p.poll() is not None)
        assert p.poll() is None, "run finished before the signal; make it longer"
        procs = {r: _rank_process(p, r) for r in range(3)}
        sent = time.monotonic()
        procs[1].send_signal(sig)
        ends = _ends(procs, sent, sent + 30, stopped=1 if sig == signal.SIGSTOP else None)
        if sig == signal.SIGSTOP:
            procs[1].send_signal(signal.SIGCONT)  # it then takes the agent's SIGTERM
        _, err = p.communicate(timeout=60)
        job_s = time.monotonic() - sent
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    print(f"{sig.name}: survivors ended after {ends} s, job after {job_s:.1f} s")
    assert all(ends.get(r, 99) < 10 for r in (0, 2)), (ends, err[-2000:])
    assert p.returncode == 3, err[-2000:]
    assert _last_line(err).startswith("foley-dist launch: exit 3 (rank 1): ") and "rank 1 " in _last_line(err)
    if sig == signal.SIGKILL:
        assert job_s < 10, err[-2000:]
    else:
        assert "rank 1 stopped answering (no heartbeat for" in _last_line(err)
    assert not (tmp_path / "o.wav").exists() and list(tmp_path.glob(".o.wav.parts-*/seg*.npy"))
