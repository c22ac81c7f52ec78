"""Render-farm operation on real torchrun ranks: batch manifests, kill/resume, SIGTERM, multi-node, mux."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import av
import numpy as np
import psutil
import pytest
import soundfile as sf

from foley_dist.media.testclip import make_audio_only, make_clip, make_corrupt, make_empty
from tests.conftest import ROOT, run_cli
from tests.distributed.ranks import free_port

FAST = ["model.steps=4", "progress=false", "vision.cache=off"]


def _torchrun(args: list[str], nproc: int, restarts: int = 0) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           f"--max-restarts={restarts}", "-m", "foley_dist", *args]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, start_new_session=True)


def _rank_process(launcher: subprocess.Popen, rank: int) -> psutil.Process:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for child in psutil.Process(launcher.pid).children(recursive=True):
            try:
                if child.environ().get("RANK") == str(rank) and "foley_dist" in " ".join(child.cmdline()):
                    return child
            except psutil.Error:
                continue
        time.sleep(0.2)
    raise AssertionError(f"rank {rank} process not found")


def _wait_for(pred, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.1)


@pytest.fixture(scope="module")
def manifest(media_dir):
    make_clip(media_dir / "good1.mp4", 6, 96, 64, 24, seed=3)
    make_clip(media_dir / "good2.mp4", 4, 96, 64, 24, seed=4)
    make_corrupt(media_dir / "corrupt.mp4")
    make_empty(media_dir / "empty.mp4")
    make_audio_only(media_dir / "audio_only.m4a", 2)
    rows = [
        {"video": "good1.mp4", "prompt": "rain", "output": "good1.wav"},
        {"video": "corrupt.mp4", "prompt": "x", "output": "corrupt.wav"},
        {"video": "missing.mp4", "prompt": "x", "output": "missing.wav"},
        {"video": "good2.mp4", "prompt": "wind", "output": "nested/good2.flac", "seed": 9, "overrides": {"model.steps": 3}},
        {"video": "audio_only.m4a", "prompt": "x", "output": "audio_only.wav"},
        {"video": "empty.mp4", "prompt": "x", "output": "empty.wav"},
        {"video": "good1.mp4", "prompt": "x", "output": "../../escaped.wav"},
    ]
    path = media_dir / "jobs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_batch_reports_bad_items_and_finishes_good_ones(manifest, tmp_path):
    start = time.monotonic()
    r = run_cli(["batch", f"manifest={manifest}", f"output_root={tmp_path}", *FAST], nproc=3, timeout=240)
    assert time.monotonic() - start < 240
    assert r.returncode != 0  # not every item succeeded
    rows = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    by_output = {Path(row["output"]).name: row for row in rows}
    assert by_output["good1.wav"]["status"] == "done" and by_output["good2.flac"]["status"] == "done"
    assert "not found" in by_output["missing.wav"]["reason"]
    assert "corrupt" in by_output["corrupt.wav"]["reason"]
    assert "no video stream" in by_output["audio_only.wav"]["reason"]
    assert "empty" in by_output["empty.wav"]["reason"]
    assert "outside output_root" in by_output["escaped.wav"]["reason"]
    assert not (tmp_path.parent.parent / "escaped.wav").exists()
    audio, sr = sf.read(tmp_path / "good1.wav", dtype="float32")
    assert 6 * sr - 2 * sr // 25 <= len(audio) <= 6 * sr  # ends with the last segment's audio (release length rule)
    assert 4 * 48000 - 2 * 1920 <= sf.info(tmp_path / "nested" / "good2.flac").frames <= 4 * 48000
    # a re-run skips both finished items and runs nothing
    again = run_cli(["batch", f"manifest={manifest}", f"output_root={tmp_path}", *FAST], timeout=120)
    assert "2 by earlier runs" in again.stdout, again.stdout + again.stderr


def test_sigkill_one_rank_then_resume_equals_uninterrupted(media_dir, tmp_path):
    clip = make_clip(media_dir / "long.mp4", 24, 96, 64, 24, seed=5)
    args = ["generate", f"video={clip}", "prompt=steps", "model.steps=30", "progress=false", "hardware.timeout_s=20", "vision.cache=off"]
    reference = tmp_path / "ref.wav"
    assert run_cli([*args, f"output={reference}"], timeout=300).returncode == 0

    out = tmp_path / "resumed.wav"
    launcher = _torchrun([*args, f"output={out}"], nproc=3)
    parts = lambda: list(tmp_path.glob(".resumed.wav.parts-*/seg*.npy"))  # noqa: E731
    _wait_for(lambda: len(parts()) >= 2 or launcher.poll() is not None)
    assert launcher.poll() is None, "run finished before the kill; make it longer"
    killed_at = time.monotonic()
    _rank_process(launcher, 1).send_signal(signal.SIGKILL)
    _, stderr = launcher.communicate(timeout=90)
    assert launcher.returncode != 0
    assert time.monotonic() - killed_at < 60, "ranks must not hang after a peer dies"
    assert not out.exists() and 2 <= len(parts()) < 6  # finished segments kept, no partial output

    r = run_cli([*args, f"output={out}"], nproc=3, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["segments_resumed"] >= 2
    assert np.array_equal(sf.read(out, dtype="float32")[0], sf.read(reference, dtype="float32")[0])
    assert not parts()  # resume state cleaned up once the output is complete


def test_elastic_restart_resumes_and_finishes(media_dir, tmp_path):
    """torchrun --max-restarts=1: a killed rank restarts the whole group, which resumes and finishes."""
    clip = make_clip(media_dir / "elastic.mp4", 24, 96, 64, 24, seed=6)
    args = ["generate", f"video={clip}", "prompt=steps", "model.steps=30", "progress=false", "hardware.timeout_s=20",
            "vision.cache=off"]
    reference = tmp_path / "ref.wav"
    assert run_cli([*args, f"output={reference}"], timeout=300).returncode == 0
    out = tmp_path / "elastic.wav"
    launcher = _torchrun([*args, f"output={out}"], nproc=3, restarts=1)
    _wait_for(lambda: len(list(tmp_path.glob(".elastic.wav.parts-*/seg*.npy"))) >= 2 or launcher.poll() is not None)
    assert launcher.poll() is None, "run finished before the kill; make it longer"
    _rank_process(launcher, 1).send_signal(signal.SIGKILL)
    _, stderr = launcher.communicate(timeout=300)
    assert launcher.returncode == 0, stderr[-2000:]
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["segments_resumed"] >= 2  # the restarted group skipped what the first attempt finished
    assert np.array_equal(sf.read(out, dtype="float32")[0], sf.read(reference, dtype="float32")[0])


def test_sigterm_keeps_finished_items_and_rerun_skips_them(media_dir, tmp_path):
    rows = [{"video": str(make_clip(media_dir / f"t{i}.mp4", 5, 96, 64, 24, seed=10 + i)), "prompt": "p", "output": f"t{i}.wav"}
            for i in range(4)]
    manifest = tmp_path / "jobs.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    root = tmp_path / "out"
    args = ["batch", f"manifest={manifest}", f"output_root={root}", "model.steps=40", "progress=false", "vision.cache=off"]
    launcher = _torchrun(args, nproc=3)
    journal = root / ".finished.jsonl"  # an item is finished once journalled (its output is renamed into place first)
    _wait_for(lambda: (journal.is_file() and journal.read_text().strip()) or launcher.poll() is not None)
    assert launcher.poll() is None
    os.killpg(launcher.pid, signal.SIGTERM)  # what Slurm sends the job step on pre-emption
    launcher.communicate(timeout=60)
    assert launcher.returncode != 0
    finished = sorted(Path(json.loads(line)["output"]).name for line in journal.read_text().splitlines())
    assert "t0.wav" in finished and len(finished) < 4
    before = {name: (root / name).read_bytes() for name in finished}
    assert not list(root.glob(".*.tmp"))  # no half-written outputs left behind

    r = run_cli(args, nproc=3, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"{len(finished)} by earlier runs" in r.stdout
    assert all((root / name).read_bytes() == data for name, data in before.items())
    assert sorted(p.name for p in root.glob("t*.wav")) == ["t0.wav", "t1.wav", "t2.wav", "t3.wav"]


def test_two_node_rendezvous_on_loopback_matches_single_node(clip12, tmp_path):
    """launch/multi_node.sh twice (two "nodes", c10d rendezvous on loopback), 2 ranks each, replicated layout
    (seam=joint by default: overlap latents cross between the nodes at every sampling step)."""
    single = tmp_path / "single.wav"
    assert run_cli(["generate", f"video={clip12}", f"output={single}", *FAST]).returncode == 0
    out = tmp_path / "two_nodes.wav"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NNODES": "2", "NPROC": "2", "RDZV_ID": f"test{free_port()}",
           "RDZV_ENDPOINT": f"127.0.0.1:{free_port()}", "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    args = ["generate", f"video={clip12}", f"output={out}", "layout.ranks=[vision+fusion,diffusion x3]", *FAST]
    nodes = [subprocess.Popen(["bash", "launch/multi_node.sh", *args], cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env) for _ in range(2)]
    for p in nodes:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-2000:]
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["world_size"] == 4
    assert np.array_equal(sf.read(out, dtype="float32")[0], sf.read(single, dtype="float32")[0])


def test_mux_keeps_video_stream_and_adds_audio(clip12, tmp_path):
    out = tmp_path / "scored.wav"
    r = run_cli(["generate", f"video={clip12}", f"output={out}", "mux=true", *FAST])
    assert r.returncode == 0, r.stderr[-2000:]
    muxed = out.with_name("scored.muxed.mp4")  # OUTPUT_STEM.muxed.EXT: never the input's own name
    with av.open(str(clip12)) as src, av.open(str(muxed)) as dst:
        src_packets = [bytes(p) for p in src.demux(src.streams.video[0]) if p.size]
        dst_packets = [bytes(p) for p in dst.demux(dst.streams.video[0]) if p.size]
        assert src_packets == dst_packets  # stream copy: not re-encoded
    with av.open(str(muxed)) as dst:
        audio = dst.streams.audio[0]
        seconds = float(audio.duration * audio.time_base)
        assert abs(seconds - 12.0) < 0.1 and audio.sample_rate == 48000
