"""File digests for the index fingerprint: right whichever thread computes them, and read errors surface."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path
from typing import Any

import pytest

import osctl.data._fast.slices as slices
import osctl.data.annotations as annotations
from osctl.data.annotations import read_annotation, read_annotations
from osctl.data.checksum import BLOCK, BytesDigest, FileDigest, hash_in_background
from osctl.data.datatxt import DataSource
from tests.unit.data.data_helpers import write_annotations


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _pending_digest(path: Path, content: bytes) -> FileDigest:
    """A :class:`FileDigest` of ``path`` written with ``content`` (the digest keeps its own descriptor)."""
    path.write_bytes(content)
    fd = os.open(path, os.O_RDONLY)
    try:
        return FileDigest(fd)
    finally:
        os.close(fd)


def test_file_digest_in_the_caller_or_in_the_background(tmp_path: Path) -> None:
    path = tmp_path / "blob.bin"
    path.write_bytes(os.urandom(3 * BLOCK + 17))
    fd = os.open(path, os.O_RDONLY)
    try:
        inline, background = FileDigest(fd), FileDigest(fd)
    finally:
        os.close(fd)  # each digest reads through its own descriptor
    hash_in_background([background])
    assert inline.hexdigest() == background.hexdigest() == _sha(path)
    assert inline.hexdigest() == _sha(path)  # computed once, asked twice
    assert BytesDigest(path.read_bytes()).hexdigest() == _sha(path)


def test_file_digest_computed_once_when_asked_from_several_threads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "blob.bin"
    digest = _pending_digest(path, os.urandom(BLOCK + 5))
    reads: list[int] = []
    real = os.preadv

    def counting(*args: Any) -> int:
        reads.append(1)
        return real(*args)

    monkeypatch.setattr(os, "preadv", counting)
    results: list[str] = []
    threads = [threading.Thread(target=lambda: results.append(digest.hexdigest())) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [_sha(path)] * 4
    assert len(reads) == 3  # one pass over the file: two blocks and the end


def test_a_read_error_is_raised_where_the_digest_is_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    digest = _pending_digest(tmp_path / "blob.bin", b"x" * 10)

    def broken(*_args: Any) -> int:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "preadv", broken)
    with pytest.raises(OSError, match="Input/output"):
        digest.hexdigest()


def _source(path: Path, file_id: int = 0) -> DataSource:
    return DataSource(file_id, file_id + 1, "/root", path, "json")


def _records(n: int) -> list[Any]:
    return [{"path": f"v/{i}.mp4", "cap": f"c{i}", "resolution": {"height": 720, "width": 1280}, "num_frames": 90,
             "fps": 30} for i in range(n)]


def test_every_file_of_a_data_txt_gets_its_own_digest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Files decoded in slices are hashed after every file is read; small and broken ones at once."""
    monkeypatch.setattr(slices, "CHUNK_BYTES", 600)
    monkeypatch.setattr(slices, "PARALLEL_MIN_BYTES", 0)
    big1 = write_annotations(tmp_path, _records(200), "big1.json")
    big2 = write_annotations(tmp_path, _records(150), "big2.json")
    small = write_annotations(tmp_path, _records(1), "small.json")
    nan = tmp_path / "nan.json"
    nan.write_text('[{"path": "a.jpg", "aesthetic": NaN}' + ', {"path": "b.jpg"}' * 100 + "]")
    paths = [big1, small, nan, big2]
    for workers in (1, 2):
        loaded = read_annotations([_source(p, i) for i, p in enumerate(paths)], workers=workers)
        assert [item.sha256 for item in loaded] == [_sha(p) for p in paths]
        assert [item.n for item in loaded] == [200, 1, 101, 150]
        unhashed = read_annotations([_source(p) for p in paths], workers=workers, checksum=False)
        assert [item.sha256 for item in unhashed] == [None] * 4
    assert read_annotation(_source(big1), workers=2).sha256 == _sha(big1)


def test_many_files_do_not_keep_many_descriptors_open(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(slices, "CHUNK_BYTES", 300)
    monkeypatch.setattr(annotations, "MAX_PENDING_DIGESTS", 2)
    monkeypatch.setattr(annotations, "hash_in_background", lambda digests: None)  # pending ones wait for use
    paths = [write_annotations(tmp_path, _records(20 + i), f"f{i}.json") for i in range(5)]
    before = len(os.listdir("/proc/self/fd"))
    loaded = read_annotations([_source(p, i) for i, p in enumerate(paths)])
    assert len(os.listdir("/proc/self/fd")) == before + 1  # only the last file's digest is pending
    assert [item.sha256 for item in loaded] == [_sha(p) for p in paths]


def test_a_settled_digest_is_not_computed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    digest = _pending_digest(tmp_path / "blob.bin", os.urandom(2 * BLOCK))
    before = len(os.listdir("/proc/self/fd"))
    reads: list[int] = []
    monkeypatch.setattr(os, "preadv", lambda *_args: reads.append(1) or 0)
    digest.settle("ab" * 32)
    assert digest.hexdigest() == "ab" * 32 and reads == []
    assert len(os.listdir("/proc/self/fd")) == before - 1  # its descriptor is closed
    digest.settle("cd" * 32)  # once settled or computed, the result stays
    assert digest.hexdigest() == "ab" * 32


def test_settling_stops_a_hashing_in_progress(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    digest = _pending_digest(tmp_path / "blob.bin", os.urandom(5 * BLOCK))
    reads: list[int] = []
    real = os.preadv

    def read_then_settle(*args: Any) -> int:
        reads.append(1)
        if len(reads) == 2:
            digest.settle("ef" * 32)  # as the main thread does while the background thread hashes
        return real(*args)

    monkeypatch.setattr(os, "preadv", read_then_settle)
    assert digest.hexdigest() == "ef" * 32
    assert len(reads) == 2  # stopped after the block being read, not at the end of the file
