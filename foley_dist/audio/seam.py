"""Seam metric: is a segment boundary audible, compared with how the same audio changes elsewhere?

Generated Foley audio is not stationary, so an absolute "jump" threshold would flag every footstep.
Instead each boundary is compared with the audio's own background of change: the same statistics
between adjacent windows at all non-boundary positions of the same output.

At a point t we compare the window [t - w, t) with [t, t + w) (Hann-weighted for the spectrum) via
- `rms_jump_db`: |difference of RMS level| in dB (levels floored at -100 dBFS so silence is finite),
- `centroid_jump_hz`: |difference of spectral centroid|,
- `flux`: L2 distance of the two unit-norm magnitude spectra (0 = same shape, sqrt(2) = disjoint),
  independent of loudness so it catches timbre changes a level match would hide.

Background points tile the whole signal with hop w, skipping those within 2 w of any boundary.
Rule: a boundary is flagged when its `rms_jump_db` > max(3 dB, p99 of the background rms jumps):
3 dB is about the smallest level step listeners reliably notice, and p99 keeps naturally busy audio
(impacts, onsets) from flagging every seam.
"""

from __future__ import annotations

import numpy as np

MIN_JUMP_DB = 3.0
FLOOR_DB = -100.0
_BATCH = 1024  # frames per FFT batch: bounds memory on long outputs


def _window_stats(frames: np.ndarray, sample_rate: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per frame (rows): RMS level in dB, spectral centroid in Hz, unit-norm magnitude spectrum."""
    rms = np.sqrt(np.mean(np.square(frames, dtype=np.float64), axis=1))
    level = 20 * np.log10(np.maximum(rms, 10 ** (FLOOR_DB / 20)))
    mag = np.abs(np.fft.rfft(frames * np.hanning(frames.shape[1]), axis=1))
    freqs = np.fft.rfftfreq(frames.shape[1], 1 / sample_rate)
    total = mag.sum(axis=1)
    centroid = np.divide(mag @ freqs, total, out=np.zeros_like(total), where=total > 0)
    norm = np.linalg.norm(mag, axis=1, keepdims=True)
    unit = np.divide(mag, norm, out=np.zeros_like(mag), where=norm > 0)
    return level, centroid, unit


KEYS = ("rms_jump_db", "centroid_jump_hz", "flux")


def _pair_jumps(before: np.ndarray, after: np.ndarray, sample_rate: int) -> dict[str, np.ndarray]:
    """Change of each statistic from frame before[i] to frame after[i]."""
    level_b, centroid_b, unit_b = _window_stats(before, sample_rate)
    level_a, centroid_a, unit_a = _window_stats(after, sample_rate)
    return {
        "rms_jump_db": np.abs(level_a - level_b),
        "centroid_jump_hz": np.abs(centroid_a - centroid_b),
        "flux": np.linalg.norm(unit_a - unit_b, axis=1),
    }


def _jumps_at(mono: np.ndarray, points: np.ndarray, w: int, sample_rate: int) -> dict[str, np.ndarray]:
    """Jumps from window [p - w, p) to [p, p + w) for every point p, in batches to bound memory."""
    if not len(points):  # also covers audio shorter than one window, which has no windows to view
        return {key: np.zeros(0) for key in KEYS}
    windows = np.lib.stride_tricks.sliding_window_view(mono, w)  # a view: no copy of the audio
    parts = [
        _pair_jumps(windows[batch - w], windows[batch], sample_rate)
        for batch in (points[i : i + _BATCH] for i in range(0, len(points), _BATCH))
    ]
    return {key: np.concatenate([part[key] for part in parts]) for key in KEYS}


def _summary(values: np.ndarray) -> dict[str, float] | None:
    if not len(values):
        return None
    median, p95, p99 = np.percentile(values, [50, 95, 99])
    return {"median": float(median), "p95": float(p95), "p99": float(p99)}


def seam_report(audio: np.ndarray, sample_rate: int, boundaries_s: list[float], window_s: float = 0.05) -> dict:
    """Per-boundary jumps, the background distribution, and the boundaries flagged as audible seams.

    `audio` is (samples,) or (samples, channels); channels are averaged. Boundaries too close to either
    end for a full window on both sides are listed under `skipped`.
    """
    mono = np.asarray(audio, dtype=np.float32)
    mono = mono.mean(axis=1) if mono.ndim == 2 else mono
    w = max(1, round(window_s * sample_rate))
    points = {t: round(t * sample_rate) for t in boundaries_s}
    measured = {t: p for t, p in points.items() if w <= p <= len(mono) - w}

    grid = np.arange(w, len(mono) - w + 1, w)
    near = np.zeros(len(grid), bool)
    for p in points.values():
        near |= np.abs(grid - p) < 2 * w
    background = _jumps_at(mono, grid[~near], w, sample_rate)
    summaries = {key: _summary(background[key]) for key in KEYS}
    loudness = summaries["rms_jump_db"]
    threshold = max(MIN_JUMP_DB, loudness["p99"]) if loudness else MIN_JUMP_DB

    at_seams = _jumps_at(mono, np.array(list(measured.values()), dtype=int), w, sample_rate)
    rows = [{"time_s": t, **{key: float(at_seams[key][i]) for key in KEYS}} for i, t in enumerate(measured)]
    for row in rows:
        row["flagged"] = row["rms_jump_db"] > threshold
    return {
        "sample_rate": sample_rate,
        "window_s": w / sample_rate,
        "rule": f"rms_jump_db > max({MIN_JUMP_DB} dB, p99 of background)",
        "threshold_db": threshold,
        "boundaries": rows,
        "background": {"count": int((~near).sum()), **summaries},
        "flagged": [row["time_s"] for row in rows if row["flagged"]],
        "skipped": [t for t in boundaries_s if t not in measured],
    }
