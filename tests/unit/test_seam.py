"""Seam metric: a level step at a boundary is flagged, smooth audio is not."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import soundfile as sf

from foley_dist.audio.seam import seam_report

SR = 16000
ROOT = Path(__file__).resolve().parents[2]


def _noise(seconds: float, seed: int = 0) -> np.ndarray:
    return (0.1 * np.random.default_rng(seed).standard_normal(round(seconds * SR))).astype(np.float32)


def test_12_db_step_is_flagged():
    audio = _noise(10.0)
    audio[round(4.5 * SR) :] *= 10 ** (12 / 20)
    report = seam_report(audio, SR, [4.5, 8.5])
    step, steady = report["boundaries"]
    assert abs(step["rms_jump_db"] - 12.0) < 1.0 and step["flagged"]
    assert not steady["flagged"]
    assert report["flagged"] == [4.5]
    assert report["background"]["rms_jump_db"]["p99"] < 3.0 and report["threshold_db"] == 3.0


def test_smooth_audio_is_not_flagged():
    t = np.arange(12 * SR) / SR
    envelope = 0.5 + 0.4 * np.sin(2 * np.pi * 0.2 * t)  # slow swell, no steps
    audio = np.stack([envelope * np.sin(2 * np.pi * 330 * t), _noise(12.0, 1) * envelope], axis=1)
    report = seam_report(audio.astype(np.float32), SR, [4.0, 8.0, 11.99])
    assert report["flagged"] == [] and report["skipped"] == [11.99]
    assert all(row["rms_jump_db"] < 1.0 and row["flux"] < 0.2 for row in report["boundaries"])
    assert report["background"]["count"] > 200


def test_timbre_change_shows_in_centroid_and_flux():
    t = np.arange(6 * SR) / SR
    audio = np.where(t < 3.0, np.sin(2 * np.pi * 200 * t), np.sin(2 * np.pi * 3000 * t)).astype(np.float32)
    (row,) = seam_report(audio, SR, [3.0])["boundaries"]
    assert row["centroid_jump_hz"] > 2000 and row["flux"] > 1.0 and not row["flagged"]


def test_cli_prints_table_and_writes_json(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("seam_metric", ROOT / "scripts" / "seam_metric.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    audio = _noise(6.0)
    audio[3 * SR :] *= 4.0
    sf.write(tmp_path / "a.wav", audio, SR)
    out = tmp_path / "r.json"
    script.main([str(tmp_path / "a.wav"), "--boundaries", "3,1.5", "--json", str(out)])
    printed = capsys.readouterr().out
    assert "YES" in printed and "rms_jump_db" in printed
    assert json.loads(out.read_text())["flagged"] == [3.0]
