"""The sample index: atomic write, zero-copy reading, per-sample access and staleness checks."""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from osctl.data.annotations import read_annotations
from osctl.data.bucket import BucketSettings, build_buckets
from osctl.data.datatxt import load_data_txt
from osctl.data.index import SampleIndex, StaleIndexError, open_index, read_meta, write_index
from osctl.data.records import KIND_IMAGE, KIND_VIDEO
from osctl.data.rules import FrameRules, ResolutionRules
from osctl.errors import DataError
from tests.geometry_helpers import V13

SETTINGS = BucketSettings(
    frames=FrameRules(num_frames=29, train_fps=16, drop_short_ratio=0.0),
    resolution=ResolutionRules(mode="area", max_hxw=262144, min_hxw=65536, hw_stride=32),
    min_bucket_batches=1,
    geometry=V13,
)


def _records() -> list[dict[str, Any]]:
    return [
        {"path": "v/a.mp4", "cap": "a video", "resolution": {"height": 720, "width": 1280}, "num_frames": 120,
         "fps": 30, "cut": [10, 130], "crop": [0, 1280, 40, 680], "aesthetic": 6.0},
        {"path": "i/b.jpg", "cap": ["first", "second"], "resolution": {"height": 512, "width": 512}, "aes": 4.1},
        {"path": "i/dropped.jpg", "resolution": {"height": 512, "width": 512}},
        {"path": "/abs/c.mp4", "cap": "absolute", "resolution": {"height": 480, "width": 640}, "num_frames": 40, "fps": 16},
    ]


def _build(make_data: Any, tmp_path: Path, settings: BucketSettings = SETTINGS) -> tuple[Path, Path]:
    data_txt = make_data({"a.json": _records()})
    result = build_buckets(read_annotations(load_data_txt(data_txt)), settings)
    return data_txt, write_index(result, data_txt, tmp_path / "out")


def test_round_trip_and_per_sample_access(make_data: Any, tmp_path: Path) -> None:
    data_txt, path = _build(make_data, tmp_path)
    assert path == (tmp_path / "out" / "samples.arrow").resolve() or path == tmp_path / "out" / "samples.arrow"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["index.json", "samples.arrow"]
    index = open_index(tmp_path / "out", data_txt=data_txt, settings=SETTINGS)
    assert len(index) == 3
    assert index.numpy("position").tolist() == [0, 1, 3]
    assert index.numpy("kind").tolist() == [KIND_VIDEO, KIND_IMAGE, KIND_VIDEO]
    first = index.sample(0)
    media = tmp_path / "media"
    assert first.path == f"{media}/v/a.mp4" and first.captions == ["a video"]
    assert (first.start_frame, first.span_frames, first.fps, first.aesthetic) == (10, 120, 30.0, 6.0)
    assert first.crop == (0, 1280, 40, 680) and (first.height, first.width) == (720, 1280)
    assert first.n_candidates == 64 and first.shape == (29, 352, 704)  # sized from the 640x1280 crop box
    second = index.sample(1)
    assert second.captions == ["first", "second"] and second.aesthetic == pytest.approx(4.1)
    assert second.fps is None and second.crop is None and second.shape == (1, 512, 512)
    assert index.sample(2).path == "/abs/c.mp4"
    with pytest.raises(IndexError):
        index.sample(3)
    ids = index.bucket_ids()
    keys = {b["id"]: b["key"] for b in index.buckets}
    assert [keys[i] for i in ids.tolist()] == ["29x352x704", "1x512x512", "29x416x576"]
    assert not ids.flags.owndata  # a view of the memory map, not a copy
    clone = pickle.loads(pickle.dumps(index))
    assert len(pickle.dumps(index)) < 500 and clone.captions(1) == ["first", "second"]
    meta = read_meta(path)
    assert meta["num_samples"] == 3 and meta["reasons"] == {"kept": 3, "no_caption": 1}
    assert json.loads((tmp_path / "out" / "index.json").read_text())["fingerprint"] == meta["fingerprint"]


def test_stale_annotations_data_txt_and_settings(make_data: Any, tmp_path: Path) -> None:
    data_txt, path = _build(make_data, tmp_path)
    anno = tmp_path / "anno" / "a.json"
    os.utime(anno, ns=(1, 1))  # touched, same content: still fresh
    assert SampleIndex(path).check(data_txt, SETTINGS) == []
    changed = dataclasses.replace(SETTINGS, frames=dataclasses.replace(SETTINGS.frames, num_frames=61))
    problems = SampleIndex(path).check(data_txt, changed)
    assert problems == ["frames.num_frames was 29 when the index was built and is 61 now"]
    anno.write_text(json.dumps(_records() + _records()))
    with pytest.raises(StaleIndexError, match=r"stale: annotation file .*a\.json changed") as info:
        open_index(path, data_txt=data_txt, settings=SETTINGS)
    assert info.value.exit_code == 2 and "osctl data bucket" in (info.value.hint or "")
    anno.write_text(json.dumps(_records()))
    data_txt.write_text(data_txt.read_text() + "# a comment\n")
    assert any("changed since the index was built" in p for p in SampleIndex(path).check(data_txt))
    anno.unlink()
    assert any("no longer exists" in p for p in SampleIndex(path).check())


def test_nothing_kept_writes_nothing(make_data: Any, tmp_path: Path) -> None:
    data_txt = make_data({"a.json": [{"path": "x.jpg", "resolution": {"height": 480, "width": 640}}]})
    result = build_buckets(read_annotations(load_data_txt(data_txt)), SETTINGS)
    with pytest.raises(DataError, match=r"no sample survived the rules \(no_caption 1\)"):
        write_index(result, data_txt, tmp_path / "out")
    assert not (tmp_path / "out" / "samples.arrow").exists()


def test_not_an_index(tmp_path: Path) -> None:
    from osctl.errors import UsageError

    with pytest.raises(UsageError, match="no sample index"):
        SampleIndex(tmp_path)
    (tmp_path / "samples.arrow").write_bytes(b"garbage")
    with pytest.raises(UsageError, match="not a readable osctl sample index"):
        SampleIndex(tmp_path)


def test_index_is_columnar_and_compact(make_data: Any, tmp_path: Path) -> None:
    records = [{"path": f"v/{i}.mp4", "cap": f"caption {i}", "resolution": {"height": 720, "width": 1280},
                "num_frames": 100, "fps": 24} for i in range(2000)]
    data_txt = make_data({"a.json": records})
    result = build_buckets(read_annotations(load_data_txt(data_txt)), SETTINGS)
    path = write_index(result, data_txt, tmp_path / "out")
    index = SampleIndex(path)
    assert len(index) == 2000 and index.table.num_rows == 2000
    assert all(col.num_chunks == 1 for col in index.table.columns)
    assert np.all(index.numpy("t") == 29)
    assert path.stat().st_size < 2000 * 250  # about 100 bytes of numbers plus the strings


def test_index_columns_gathered_on_threads_are_the_same(make_data: Any, tmp_path: Path) -> None:
    from osctl.data.index import index_table

    records = _records() * 40
    data_txt = make_data({"a.json": records, "b.json": records[:3], "c.json": [records[2]], "d.json": records[::-1]})
    result = build_buckets(read_annotations(load_data_txt(data_txt)), SETTINGS)
    one = index_table(result, threads=1)
    assert one.num_rows == result.n_kept > 0
    for threads in (2, 5):
        many = index_table(result, threads=threads)
        assert [c.num_chunks for c in many.columns] == [1] * len(many.columns)
        assert many.to_batches()[0].serialize().to_pybytes() == one.to_batches()[0].serialize().to_pybytes()


# ----------------------------------------------------------------- reusing recorded annotation digests


def _sliced_build(make_data: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *, racy_ns: int = 0) -> Path:
    """data.txt of one annotation file large enough (for the patched slice size) to be hashed after decoding."""
    import osctl.data._fast.slices as slices
    import osctl.data.annotations as annotations
    import osctl.data.fingerprint as fingerprint

    monkeypatch.setattr(slices, "CHUNK_BYTES", 300)  # decoded in slices: the digest is a pending FileDigest
    monkeypatch.setattr(annotations, "hash_in_background", lambda digests: None)  # computed on first use
    monkeypatch.setattr(fingerprint, "RACY_NS", racy_ns)
    return make_data({"a.json": _records() * 5})


def _rebuild(data_txt: Path, out: Path) -> tuple[int, Any]:
    from osctl.data.index import reuse_recorded_digests

    loaded = read_annotations(load_data_txt(data_txt))
    reused = reuse_recorded_digests(loaded, out)
    write_index(build_buckets(loaded, SETTINGS), data_txt, out)
    return reused, loaded[0]


def _sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_an_unchanged_annotation_file_is_not_hashed_again(make_data: Any, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    data_txt = _sliced_build(make_data, tmp_path, monkeypatch)
    out = tmp_path / "out"
    anno = tmp_path / "anno" / "a.json"
    assert _rebuild(data_txt, out)[0] == 0  # no index yet
    first = read_meta(out / "samples.arrow")["fingerprint"]
    entry = first["annotations"][0]
    assert entry["sha256"] == _sha256(anno)
    assert {"ctime_ns", "inode", "device", "stat_ns"} <= set(entry)
    reused, item = _rebuild(data_txt, out)
    assert reused == 1 and item.sha256 == _sha256(anno)
    assert read_meta(out / "samples.arrow")["fingerprint"]["sha256"] == first["sha256"]


def test_a_changed_annotation_file_is_hashed_even_with_its_old_size_and_mtime(
        make_data: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data_txt = _sliced_build(make_data, tmp_path, monkeypatch)
    out = tmp_path / "out"
    anno = tmp_path / "anno" / "a.json"
    _rebuild(data_txt, out)
    recorded = read_meta(out / "samples.arrow")["fingerprint"]["annotations"][0]["sha256"]
    before = os.stat(anno)
    text = anno.read_text()
    anno.write_text(text.replace("a video", "b video", 1))  # same size, other content
    os.utime(anno, ns=(before.st_atime_ns, before.st_mtime_ns))  # and the old modification time
    assert os.stat(anno).st_size == before.st_size and os.stat(anno).st_mtime_ns == before.st_mtime_ns
    reused, item = _rebuild(data_txt, out)
    assert reused == 0 and item.sha256 == _sha256(anno) != recorded
    assert read_meta(out / "samples.arrow")["fingerprint"]["annotations"][0]["sha256"] == _sha256(anno)


def test_a_file_changed_just_before_the_recording_is_hashed_again(make_data: Any, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Written within RACY_NS of being recorded: a later write in the same timestamp tick could go unseen."""
    data_txt = _sliced_build(make_data, tmp_path, monkeypatch, racy_ns=60 * 10**9)
    out = tmp_path / "out"
    _rebuild(data_txt, out)
    reused, item = _rebuild(data_txt, out)
    assert reused == 0 and item.sha256 == _sha256(tmp_path / "anno" / "a.json")


@pytest.mark.parametrize("summary", [None, "{not json", '{"fingerprint": {"annotations": 7}}', '{"fingerprint": {}}',
                                     '{"fingerprint": {"annotations": [{"path": 1}, 5]}}'])
def test_a_missing_or_broken_earlier_index_reuses_nothing(make_data: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          summary: str | None) -> None:
    from osctl.data.index import reuse_recorded_digests

    data_txt = _sliced_build(make_data, tmp_path, monkeypatch)
    out = tmp_path / "out"
    out.mkdir()
    if summary is not None:
        (out / "index.json").write_text(summary)
    loaded = read_annotations(load_data_txt(data_txt))
    assert reuse_recorded_digests(loaded, out) == 0
    assert loaded[0].sha256 == _sha256(tmp_path / "anno" / "a.json")
