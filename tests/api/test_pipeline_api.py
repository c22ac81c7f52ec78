"""FoleyPipeline, the Python API under the CLI: in-memory results, models kept between calls, batch
calls, and the same script under torchrun (real gloo ranks) giving the single-process bits."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import soundfile as sf

from foley_dist import FoleyPipeline, FoleyResult
from foley_dist.errors import FoleyError
from tests.conftest import ROOT, run_cli

SETTINGS = {"vision.cache": "off", "seam_metric": False, "progress": False, "hardware.threads": 1}


@pytest.fixture(scope="module")
def pipe() -> FoleyPipeline:
    return FoleyPipeline.from_pretrained("tiny", **SETTINGS)


def test_call_returns_audio_in_memory(pipe, clip12):
    result = pipe(clip12, "rain on a tin roof", num_inference_steps=2, seed=3)
    assert isinstance(result, FoleyResult) and result.path is None
    assert result.audio.dtype == np.float32 and result.audio.ndim == 1 and result.sample_rate == 48000
    assert abs(result.duration - 12.0) < 0.2
    assert [(s.index, s.start) for s in result.segments][:2] == [(0, 0.0), (1, 4.0)]
    assert result.report["world_size"] == 1 and np.isfinite(result.audio).all() and result.audio.std() > 0


def test_models_stay_loaded_and_calls_are_deterministic(pipe, clip12):
    first = pipe(clip12, "rain", num_inference_steps=2, seed=5).audio
    parts = dict(pipe._parts)
    again = pipe(clip12, "rain", num_inference_steps=2, seed=5).audio
    assert parts and all(pipe._parts[k] is v for k, v in parts.items()), "a second call rebuilt model parts"
    assert np.array_equal(first, again)
    assert not np.array_equal(first, pipe(clip12, "rain", num_inference_steps=2, seed=6).audio)


def test_api_equals_cli(pipe, clip12, tmp_path):
    out = tmp_path / "cli.wav"
    run = run_cli(["generate", f"video={clip12}", "prompt=rain", f"output={out}", "model.steps=2", "seed=4",
                   "vision.cache=off", "seam_metric=false", "progress=false"])
    assert run.returncode == 0, run.stderr
    cli_audio, _ = sf.read(out, dtype="float32")
    assert np.array_equal(cli_audio, pipe(clip12, "rain", num_inference_steps=2, seed=4).audio)


def test_batch_call_and_save(pipe, clip12, tmp_path):
    results = pipe([clip12, clip12], ["rain", "wind"], num_inference_steps=1)
    assert len(results) == 2 and not np.array_equal(results[0].audio, results[1].audio)
    saved = results[0].save(tmp_path / "a.flac")
    audio, rate = sf.read(saved, dtype="float32")
    assert rate == 48000 and np.abs(audio - results[0].audio).max() < 1e-6 + 2 ** -23
    with pytest.raises(FoleyError, match="is an input of this run"):
        results[0].save(clip12)
    theirs = tmp_path / "theirs.wav"
    theirs.write_bytes(b"someone's recording")
    with pytest.raises(FoleyError, match="not written by foley-dist"):
        results[0].save(theirs)
    assert theirs.read_bytes() == b"someone's recording"


def test_bad_arguments_are_one_line_errors(pipe, clip12, tmp_path):
    with pytest.raises(FoleyError, match="not found|no such|does not exist"):
        pipe(tmp_path / "missing.mp4", "x")
    with pytest.raises(FoleyError, match="prompts"):
        pipe([clip12, clip12], ["only one"])
    with pytest.raises(FoleyError, match="release folder"):
        FoleyPipeline.from_pretrained("tiny", model="hunyuan_xxl")


SCRIPT = """
import sys
import numpy as np
from foley_dist import FoleyPipeline
pipe = FoleyPipeline.from_pretrained("tiny", layout=sys.argv[2].split(";"), **{settings})
result = pipe(sys.argv[1], "rain", num_inference_steps=2, seed=4)
again = pipe(sys.argv[1], "rain", num_inference_steps=2, seed=4)  # a second call on the same process group
if result is not None:
    assert np.array_equal(result.audio, again.audio)
    np.save(sys.argv[3], result.audio)
    print("world", result.report["world_size"])
else:
    assert again is None
"""


@pytest.mark.slow
def test_same_script_under_torchrun(pipe, clip12, tmp_path):
    script = tmp_path / "gen.py"
    script.write_text(textwrap.dedent(SCRIPT.replace("{settings}", repr(SETTINGS))))
    out = tmp_path / "dist.npy"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=3", str(script), str(clip12),
           "vision;fusion;diffusion", str(out)]
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env={**__import__("os").environ,
                                                                                         "OMP_NUM_THREADS": "1"})
    assert p.returncode == 0, p.stderr[-3000:]
    assert "world 3" in p.stdout
    assert np.array_equal(np.load(out), pipe(clip12, "rain", num_inference_steps=2, seed=4).audio)
