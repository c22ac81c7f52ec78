"""Acceptance test of issue 10: the release's own pipeline, reproduced end to end through the CLI.

The exact invocation, on the tiny release folder and clip of tests/data/reference/official_pipeline,
in one process and on 3 torchrun ranks (gloo): each segment's dump equals the release's tensors
(timestamps exactly, everything else to a relative error < 1e-4) and the two dumps are identical.
About a minute per run: the real-size Synchformer encodes 6 windows on one CPU thread.
"""

from __future__ import annotations

import shutil

import pytest
import soundfile as sf
import torch
from safetensors.torch import load_file

from tests.conftest import run_cli
from tests.reference import OFFICIAL, relative_error

KEYS = ("siglip_times", "sync_times", "clip_feat", "sync_feat", "text_feat", "uncond_text_feat", "noise", "latents", "audio")


def _generate(release, noise, out, nproc=None) -> dict[str, torch.Tensor]:
    args = ["generate", f"video={OFFICIAL / 'clip.mp4'}", "prompt=footsteps on gravel", "model=hunyuan_xxl",
            f"model.path={release}", f"model.config={release / 'config.yaml'}", "model.steps=6",
            "model.guidance_scale=4.5", f"noise={noise}", f"dump={out / 'dump'}", "hardware.precision=fp32",
            "vision.cache=off", f"output={out / 'out.wav'}"]
    r = run_cli(args, nproc=nproc, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert sorted(p.name for p in (out / "dump").iterdir()) == ["seg000.safetensors"]  # a 2.4 s clip: one pass
    return load_file(out / "dump" / "seg000.safetensors")


@pytest.fixture(scope="module")
def noise_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("noise")
    shutil.copy(OFFICIAL / "noise.safetensors", folder / "seg000.safetensors")
    return folder


@pytest.fixture(scope="module")
def serial(release_dir, noise_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("serial")
    return _generate(release_dir, noise_dir, out), out


def _check_against_release(dump: dict[str, torch.Tensor]) -> None:
    expected = load_file(OFFICIAL / "expected.safetensors")
    expected["noise"] = load_file(OFFICIAL / "noise.safetensors")["noise"]
    assert set(dump) == set(KEYS)
    for key in KEYS:
        got, want = dump[key], expected[key]
        assert got.shape == want.shape and got.dtype == want.dtype, (key, got.shape, want.shape)
        if key.endswith("_times") or key == "noise":  # pts x time_base, exactly rounded; noise is our input
            assert torch.equal(got, want), key
        else:
            err = relative_error(got, want)
            assert err < 1e-4, (key, err)


def test_single_process_reproduces_the_release(serial):
    dump, out = serial
    _check_against_release(dump)
    audio, sr = sf.read(out / "out.wav", dtype="float32")
    assert sr == 48000 and len(audio) == 113280  # the release's length: 118 latents x 960, not the 2.4 s header
    assert torch.equal(torch.from_numpy(audio), dump["audio"][0])


def test_three_ranks_dump_identical_to_single_process(serial, release_dir, noise_dir, tmp_path):
    dump = _generate(release_dir, noise_dir, tmp_path, nproc=3)
    _check_against_release(dump)
    for key in KEYS:
        assert torch.equal(dump[key], serial[0][key]), key


def test_bad_release_file_is_one_line(release_dir, noise_dir, tmp_path):
    broken = tmp_path / "release"
    shutil.copytree(release_dir, broken, ignore=shutil.ignore_patterns("synchformer_state_dict.pth"))
    (broken / "synchformer_state_dict.pth").write_bytes(b"not a checkpoint")
    args = ["generate", f"video={OFFICIAL / 'clip.mp4'}", "model=hunyuan_xxl", f"model.path={broken}",
            f"model.config={broken / 'config.yaml'}", "vision.cache=off", f"output={tmp_path / 'o.wav'}"]
    r = run_cli(args, timeout=300)
    assert r.returncode == 2
    lines = [line for line in r.stderr.splitlines() if "synchformer_state_dict.pth" in line]
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr[-2000:]
