"""Output-path safety: no run ever writes over an input or over a file it did not make.

Every file foley-dist writes carries a mark (`MARK`): the software tag of WAV/FLAC files, the comment
tag of a muxed video, a `generator` key in JSON reports and traces; a parts folder holds only segment
files (and, for seam=joint, the newest segment's per-step tails). An existing output with the mark is the result of an earlier run of this tool and may be
replaced (re-running a job); anything else at an output path is someone's file and the run is refused
before any work. So are outputs that resolve to an input (the video or the manifest, through any
symlink or hard link), two outputs that resolve to one file, an unsupported extension, a folder that
cannot be written, and a disk without room for roughly the outputs' size.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import av
import soundfile as sf

from foley_dist.audio.output import AUDIO_FORMATS, MARK, VIDEO_CONTAINERS
from foley_dist.errors import FoleyError

SAMPLE_BYTES = {".wav": 4, ".flac": 3}  # per mono sample: float32 WAV, 24-bit FLAC (an upper bound)
SAMPLE_RATE = 48_000  # every model here decodes 48 kHz audio
AAC_BYTES_PER_S = 192_000 // 8


@dataclass(frozen=True)
class Output:
    """One path the run will write: `kind` is audio, video, json, jsonl or parts; `bytes` its rough size."""

    kind: str
    path: Path
    setting: str  # how the user names it (output=, mux_output=, report=, ...), for the error message
    bytes: int = 0


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)


def _ours(out: Output) -> bool:
    """Whether the existing file at `out.path` carries this tool's mark."""
    p = out.path
    try:
        if out.kind == "parts":
            return p.is_dir() and all(e.name.startswith(("seg", "tails")) or e.name.endswith(".tmp")
                                    for e in os.scandir(p))
        if not p.is_file():
            return False
        if out.kind == "audio":
            with sf.SoundFile(p) as f:
                return (f.software or "").startswith(MARK)
        if out.kind == "video":
            with av.open(str(p)) as c:
                return any(k.lower() == "comment" and v == MARK for k, v in c.metadata.items())
        if out.kind == "jsonl":
            first = p.read_text().splitlines()[:1]
            return not first or (isinstance(row := json.loads(first[0]), dict) and "status" in row)
        obj = json.loads(p.read_text())
        return isinstance(obj, dict) and MARK in (obj.get("generator"), obj.get("otherData", {}).get("generator"))
    except (OSError, ValueError, sf.LibsndfileError, av.FFmpegError):
        return False


def _existing_folder(path: Path) -> Path:
    """The nearest existing ancestor of `path`'s folder (the run creates the rest)."""
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


@functools.lru_cache(maxsize=1024)  # a batch puts many outputs in one folder: probe it once per process
def _writable(folder: Path) -> bool:
    """Create and delete a file there: unlike os.access, this also sees read-only mounts, ACLs and quotas."""
    try:
        with tempfile.TemporaryFile(dir=folder, prefix=".foley_dist-probe-"):
            return True
    except OSError:
        return False


def check_extension(path: str | os.PathLike, allowed: dict, setting: str) -> None:
    suffix = Path(path).suffix.lower()
    if suffix not in allowed:
        raise FoleyError(f"{setting}={path}: unsupported extension {Path(path).suffix or '(none)'!r}; "
                         f"use one of {', '.join(allowed)}")


def check_outputs(outputs: list[Output], inputs: list[str | os.PathLike]) -> None:
    """Refuse, with one line naming the path and the fix, anything that could destroy a file or fail late."""
    for i, out in enumerate(outputs):
        for src in inputs:
            if _same_file(out.path, Path(src)):
                raise FoleyError(f"{out.setting}={out.path} is an input of this run ({src}); refusing to overwrite it, "
                                 f"pick another {out.setting}")
        if out.kind == "audio":
            check_extension(out.path, AUDIO_FORMATS, out.setting)
        if out.kind == "video":
            check_extension(out.path, VIDEO_CONTAINERS, out.setting)
        for other in outputs[:i]:
            if _same_file(out.path, other.path):
                raise FoleyError(f"{out.setting}={out.path} and {other.setting}={other.path} are the same file; "
                                 "give each output its own path")
        if (out.path.exists() or out.path.is_symlink()) and not _ours(out):
            raise FoleyError(f"{out.setting}={out.path} exists and was not written by foley-dist; refusing to "
                             f"overwrite it: move it away or pick another {out.setting}")
        folder = _existing_folder(out.path)
        if not _writable(folder):
            raise FoleyError(f"{out.setting}={out.path}: cannot create files in {folder}; pick a writable folder")
    check_free_space(outputs)


def check_free_space(outputs: list[Output]) -> None:
    """Roughly the outputs' size must fit on each file system they land on (existing marked files are
    replaced, so they do not count twice)."""
    need: dict[int, tuple[Path, int]] = {}
    for out in outputs:
        folder = _existing_folder(out.path)
        dev = folder.stat().st_dev
        need[dev] = (folder, need.get(dev, (folder, 0))[1] + out.bytes)
    for folder, size in need.values():
        free = shutil.disk_usage(folder).free
        if size > free:
            raise FoleyError(f"not enough free disk space in {folder}: {free / 2**20:.0f} MiB free, the outputs need "
                             f"about {size / 2**20:.0f} MiB; free some space or write elsewhere")


def default_mux_output(output: str | os.PathLike, video: str | os.PathLike) -> str:
    """OUTPUT_STEM.muxed.EXT, EXT the input's container when it is one we write, else .mp4."""
    out = Path(output)
    ext = Path(video).suffix.lower()
    return str(out.with_name(f"{out.stem}.muxed{ext if ext in VIDEO_CONTAINERS else '.mp4'}"))


def parts_path(output: str | os.PathLike, key: str) -> Path:
    """Hidden folder beside the output holding a job's finished segments (the resume state)."""
    out = Path(output)
    return out.parent / f".{out.name}.parts-{key}"


def job_outputs(video: str, output: str, mux_output: str | None, key: str, seconds: float,
                segment_seconds: float) -> list[Output]:
    """What one job writes, with rough sizes: the audio, its resume folder and the muxed video."""
    outs = [Output("audio", Path(output), "output", int(seconds * SAMPLE_RATE * SAMPLE_BYTES.get(Path(output).suffix.lower(), 4))),
            Output("parts", parts_path(output, key), "output (its resume folder)", int(segment_seconds * SAMPLE_RATE * 4))]
    if mux_output:
        outs.append(Output("video", Path(mux_output), "mux_output", os.path.getsize(video) + int(seconds * AAC_BYTES_PER_S)))
    return outs
