"""A rank preparing frames on threads (vision.workers=2) leaves nothing behind when it is stopped: it
never has child processes (the workers are threads), SIGTERM ends it with 143 within seconds (no
decoder or worker thread keeps it alive), and after SIGKILL no process of its session survives."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from foley_dist.media.testclip import make_clip
from tests.conftest import ROOT
from tests.distributed.test_farm import _wait_for

FAST = ["progress=false", "vision.cache=off", "seam_metric=false", "vision.workers=2"]


@pytest.fixture(scope="module")
def long_clip(media_dir):
    return make_clip(media_dir / "signals.mp4", 40, 640, 360, 25, seed=5)  # 10 segments: still decoding when stopped


def _start(clip, tmp_path) -> tuple[subprocess.Popen, object]:
    log = open(tmp_path / "stderr.txt", "w+")
    cmd = [sys.executable, "-m", "foley_dist", "generate", f"video={clip}", f"output={tmp_path / 'out.wav'}", *FAST]
    p = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log, text=True, start_new_session=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    _wait_for(lambda: "[rank 0]" in (tmp_path / "stderr.txt").read_text() or p.poll() is not None, timeout=120)
    assert p.poll() is None, (tmp_path / "stderr.txt").read_text()[-2000:]
    time.sleep(2.0)  # the vision stage is preparing segments now
    return p, log


def _session(sid: int) -> list[int]:
    alive = []
    for proc in psutil.process_iter():
        try:
            if os.getsid(proc.pid) == sid and proc.status() != psutil.STATUS_ZOMBIE:
                alive.append(proc.pid)
        except (psutil.Error, ProcessLookupError):
            continue
    return alive


@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 143), (signal.SIGKILL, -signal.SIGKILL)], ids=["TERM", "KILL"])
def test_stopped_rank_leaves_no_worker_behind(long_clip, tmp_path, sig, code):
    p, log = _start(long_clip, tmp_path)
    rank = psutil.Process(p.pid)
    assert rank.children(recursive=True) == []  # frame preparation runs on threads
    assert rank.num_threads() >= 3
    p.send_signal(sig)
    assert p.wait(timeout=30) == code, (tmp_path / "stderr.txt").read_text()[-2000:]
    log.close()
    assert _session(p.pid) == []  # start_new_session: the session id is the rank's pid
