"""Feature cache: cheap file-identity keys, XDG_CACHE_HOME, exact round trip, damaged entries are misses and get replaced,
LRU eviction under the size bound, and two processes writing one key at once."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from foley_dist.media import cache
from foley_dist.media.cache import FeatureCache, cache_root, feature_key, file_identity

KEY = "ab" * 32
SETTINGS = {"model": "tiny:0", "tiling": None}


def _tensors(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"clip_feat": torch.randn(1, 40, 768, generator=g), "sync_feat": torch.randn(1, 120, 768, generator=g)}


@pytest.fixture
def video(tmp_path: Path) -> Path:
    path = tmp_path / "a.mp4"
    path.write_bytes(os.urandom(3 << 20))  # spans several hash chunks
    return path


def test_identity_follows_content_and_mtime_not_path(video: Path, tmp_path: Path):
    copy = tmp_path / "renamed.mov"
    shutil.copy2(video, copy)  # same bytes, same mtime, another name
    assert file_identity(video) == file_identity(copy)
    st = copy.stat()
    for offset in (0, (3 << 20) // 2, (3 << 20) - 1):  # first, a middle and the last byte: inside the slices
        data = bytearray(video.read_bytes())
        data[offset] ^= 1
        copy.write_bytes(bytes(data))
        os.utime(copy, ns=(st.st_atime_ns, st.st_mtime_ns))  # even with the mtime put back
        cache._identity.cache_clear()  # (memoised per path, size and mtime: a new run starts empty)
        assert file_identity(copy) != file_identity(video)
    shutil.copy2(video, copy)
    os.utime(copy, ns=(0, 10**9))  # an edit in place outside the slices still changes the mtime
    assert file_identity(copy) != file_identity(video)


def test_identity_reads_a_few_slices_not_the_file(tmp_path: Path, monkeypatch):
    big = tmp_path / "big.mp4"
    with open(big, "wb") as f:
        f.truncate(1 << 30)  # 1 GiB sparse
    reads = []
    real_open = open
    monkeypatch.setattr("builtins.open", lambda *a, **k: _Counting(real_open(*a, **k), reads))
    file_identity(big)
    assert sum(reads) <= 4 << 20


class _Counting:
    def __init__(self, f, reads):
        self.f, self.reads = f, reads

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()

    def seek(self, offset):
        self.f.seek(offset)

    def read(self, n):
        data = self.f.read(n)
        self.reads.append(len(data))
        return data


def test_cache_root_honours_xdg_cache_home(monkeypatch, tmp_path: Path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cache_root("auto") == tmp_path / "foley_dist" / "features"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/dir")  # not absolute: ignored, as the spec says
    assert cache_root("auto") == Path.home() / ".cache" / "foley_dist" / "features"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache_root("auto") == Path.home() / ".cache" / "foley_dist" / "features"
    assert cache_root(str(tmp_path / "c")) == tmp_path / "c"


def test_key_changes_with_segment_and_settings(video: Path):
    ident = file_identity(video)
    base = feature_key(ident, 0.0, 5.0, SETTINGS)
    assert feature_key(ident, 4.0, 9.0, SETTINGS) != base
    assert feature_key(ident, 0.0, 5.0, {**SETTINGS, "model": "tiny:1"}) != base
    assert feature_key(ident, 0.0, 5.0, {**SETTINGS, "tiling": {"tile_size": 224}}) != base
    assert feature_key(ident, 0.0, 5.0, dict(reversed(SETTINGS.items()))) == base  # order does not matter


def test_identity_is_memoised_until_the_file_changes(video: Path):
    cache._identity.cache_clear()
    first = file_identity(video)
    assert file_identity(video) == first and cache._identity.cache_info().hits == 1
    os.utime(video, ns=(0, 10**9))
    assert file_identity(video) != first and cache._identity.cache_info().misses == 2


def test_round_trip_is_exact(tmp_path: Path):
    store = FeatureCache(tmp_path, 1 << 30)
    assert store.get(KEY) is None
    store.put(KEY, _tensors(), {"sync_frames_saved": "0.4"})
    tensors, meta = store.get(KEY)
    assert meta == {"sync_frames_saved": "0.4"}
    assert all(torch.equal(tensors[k], v) for k, v in _tensors().items()) and tensors.keys() == _tensors().keys()
    assert not list(tmp_path.rglob("*.tmp"))


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage", "empty"])
def test_damaged_entry_is_a_miss_and_is_replaced(tmp_path: Path, damage: str):
    store = FeatureCache(tmp_path, 1 << 30)
    store.put(KEY, _tensors(), {})
    path = store.path(KEY)
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "flip":
        data[-100] ^= 0x10  # inside the tensor bytes: caught by the checksum
    elif damage == "garbage":
        data = bytearray(os.urandom(len(data)))
    else:
        data = bytearray()
    path.write_bytes(bytes(data))
    assert store.get(KEY) is None and not path.exists()
    store.put(KEY, _tensors(), {})
    assert store.get(KEY) is not None


def _size(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*.safetensors"))


def test_eviction_keeps_the_size_bound_and_the_recently_used(tmp_path: Path):
    entry = FeatureCache(tmp_path / "probe", 1 << 30)
    entry.put(KEY, _tensors(), {})
    one = _size(tmp_path / "probe")
    store = FeatureCache(tmp_path / "c", int(4.5 * one))
    keys = [f"{i:02x}" * 32 for i in range(6)]
    for i, key in enumerate(keys):
        store.put(key, _tensors(i), {})
        os.utime(store.path(key), (1000 + i, 1000 + i))  # distinct, increasing last use
        if i == 2:
            assert store.get(keys[0]) is not None  # a hit makes keys[0] the most recently used
            os.utime(store.path(keys[0]), (1002.5, 1002.5))
    assert _size(tmp_path / "c") <= store.max_bytes
    alive = [k for k in keys if store.path(k).exists()]
    assert alive == [keys[0], keys[3], keys[4], keys[5]]  # keys[1], keys[2]: least recently used


def test_stale_temp_files_are_swept(tmp_path: Path):
    store = FeatureCache(tmp_path, 1 << 30)
    store.put(KEY, _tensors(), {})
    stale, fresh = store.path(KEY).with_name(".x.1.a.tmp"), store.path(KEY).with_name(".x.2.b.tmp")
    stale.write_bytes(b"x")
    fresh.write_bytes(b"x")
    os.utime(stale, (0, 0))
    store.evict()
    assert not stale.exists() and fresh.exists()


def test_concurrent_writers_of_one_key(tmp_path: Path):
    """Two processes write (and read) the same key 50 times each, starting together: every read is
    whole and exact."""
    script = textwrap.dedent(f"""
        import os, sys, time, torch
        from pathlib import Path
        from foley_dist.media.cache import FeatureCache
        store = FeatureCache(sys.argv[1], 1 << 30)
        Path(sys.argv[2], str(os.getpid())).touch()
        while len(os.listdir(sys.argv[2])) < 2:  # start barrier: both processes have imported torch
            time.sleep(0.01)
        g = torch.Generator().manual_seed(0)
        tensors = {{"clip_feat": torch.randn(1, 40, 768, generator=g),
                   "sync_feat": torch.randn(1, 120, 768, generator=g)}}
        for _ in range(50):
            store.put("{KEY}", tensors, {{}})
            hit = store.get("{KEY}")
            assert hit is not None and all(torch.equal(hit[0][k], v) for k, v in tensors.items()), "bad read"
    """)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    (tmp_path / "ready").mkdir()
    procs = [subprocess.Popen([sys.executable, "-c", script, str(tmp_path / "c"), str(tmp_path / "ready")], env=env,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    tensors, _ = FeatureCache(tmp_path / "c", 1 << 30).get(KEY)
    assert all(torch.equal(tensors[k], v) for k, v in _tensors().items())
    assert not list(tmp_path.rglob("*.tmp"))
