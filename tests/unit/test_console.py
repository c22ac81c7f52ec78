"""Rank lines are whole: one os.write per line (or per block up to PIPE_BUF), newline included."""

from __future__ import annotations

import os
import subprocess
import sys

from foley_dist import console
from tests.conftest import ROOT


def test_each_call_is_one_write_that_ends_with_its_newline(monkeypatch, tmp_path):
    writes: list[bytes] = []
    monkeypatch.setattr(console.os, "write", lambda fd, data: writes.append(bytes(data)) or len(data))
    with open(tmp_path / "err", "w") as stream:
        console.say("[rank 2] diffusion on cpu", stream)
        console.say("wrote out/a.wav\nsegments: 3\n", stream)
        assert writes == [b"[rank 2] diffusion on cpu\n", b"wrote out/a.wav\nsegments: 3\n"]
        writes.clear()
        long = [f"line {i} " + "x" * 100 for i in range(60)]  # a block over PIPE_BUF: one write per line
        console.say("\n".join(long), stream)
        assert writes == [f"{line}\n".encode() for line in long]


def test_short_writes_are_completed(monkeypatch, tmp_path):
    out = tmp_path / "err"
    real = os.write
    monkeypatch.setattr(console.os, "write", lambda fd, data: real(fd, bytes(data)[:3]))  # a pipe may take less
    with open(out, "w") as stream:
        console.say("[rank 0] vision", stream)
    assert out.read_text() == "[rank 0] vision\n"


def test_python_buffered_text_goes_first_and_captured_streams_work(tmp_path, capsys):
    with open(tmp_path / "err", "w") as stream:
        stream.write("before ")
        console.say("after", stream)
    assert (tmp_path / "err").read_text() == "before after\n"
    console.say("[rank 1] fusion")  # pytest's capsys stream has no file descriptor
    assert capsys.readouterr().err == "[rank 1] fusion\n"


def test_processes_sharing_a_pipe_never_mix_lines():
    """Four writers, unbuffered (as under a launcher), 300 lines each on one pipe: every line whole."""
    code = ("import sys; from foley_dist.console import say\n"
            "r = sys.argv[1]\n"
            "for i in range(300): say(f'[rank {r}] line {i} ' + 'x' * 80)\n")
    read, write = os.pipe()
    procs = [subprocess.Popen([sys.executable, "-u", "-c", code, str(r)], cwd=ROOT, stderr=write) for r in range(4)]
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        lines = pipe.read().decode().splitlines()
    assert [p.wait(timeout=60) for p in procs] == [0] * 4
    assert len(lines) == 1200
    for r in range(4):
        assert [line for line in lines if line.startswith(f"[rank {r}] ")] == \
            [f"[rank {r}] line {i} " + "x" * 80 for i in range(300)]
