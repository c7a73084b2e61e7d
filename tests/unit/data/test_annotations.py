"""Annotation readers: every format gives the same columns; slices, processes and errors do not change them."""

from __future__ import annotations

import json
import math
import os
import pickle
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pytest

import osctl.data._fast.slices as slices
import osctl.data.annotations as annotations
from osctl.data.annotations import read_annotation
from osctl.data.datatxt import DataSource
from osctl.data.records import CAP_BLANK, CAP_MISSING, CAP_OK
from osctl.data.table import NUMERIC_COLUMNS, RecordTable
from tests.unit.data.data_helpers import write_annotations

RECORDS: list[dict[str, Any]] = [
    {"path": "v/a.mp4", "cap": "a video", "resolution": {"height": 720, "width": 1280}, "num_frames": 100, "fps": 30,
     "aesthetic": 5.5, "cut": [10, 110], "crop": [0, 1280, 40, 680], "tech": 0.5, "motion": 0.1},
    {"path": "i/b.jpg", "cap": ["one", "two"], "resolution": {"height": 480, "width": 640}, "aes": 4.0},
    {"path": "v/c.MOV", "cap": "x", "resolution": {"height": 360, "width": 640}, "num_frames": 50, "fps": 29.97},
    {"path": "i/d.png", "cap": None, "resolution": None},
    {"path": "i/e.jpg", "cap": "   ", "resolution": {"height": 10}},
]


def _source(path: Path) -> DataSource:
    fmt = {".json": "json", ".jsonl": "jsonl", ".pkl": "pkl", ".parquet": "parquet"}[path.suffix]
    return DataSource(0, 1, "/root", path, fmt)


def _read(path: Path, workers: int = 1) -> RecordTable:
    loaded = read_annotation(_source(path), workers=workers)
    assert loaded.problem is None, loaded.problem
    assert loaded.table is not None
    return loaded.table


def _plain(table: RecordTable) -> dict[str, Any]:
    def nums(values: np.ndarray) -> list[Any]:
        return [None if math.isnan(v) else float(v) for v in np.asarray(values).ravel()]

    return {
        "path": table.path.to_pylist(),
        "cap": [msgspec.json.decode(v) for v in table.cap_json.to_pylist()],
        "cap_state": table.cap_state.tolist(),
        **{name: nums(getattr(table, name)) for name in NUMERIC_COLUMNS},
        "cut": nums(table.cut), "crop": nums(table.crop),
        "issues": [(i, issue.code, issue.field) for i, issue in table.issues],
    }


@pytest.mark.parametrize("name", ["a.json", "a.jsonl", "a.pkl", "a.parquet"])
def test_every_format_gives_the_same_columns(tmp_path: Path, name: str) -> None:
    records = RECORDS
    if name.endswith(".parquet"):  # a parquet column has one type: every caption is a list there
        records = [{**r, "cap": [r["cap"]] if isinstance(r["cap"], str) else r["cap"]} for r in RECORDS]
    table = _read(write_annotations(tmp_path, records, name))
    plain = _plain(table)
    assert plain["path"] == ["v/a.mp4", "i/b.jpg", "v/c.MOV", "i/d.png", "i/e.jpg"]
    caps = [c[0] if isinstance(c, list) and len(c) == 1 else c for c in plain["cap"]]
    assert caps == ["a video", ["one", "two"], "x", None, "   "]
    assert plain["cap_state"] == [CAP_OK, CAP_OK, CAP_OK, CAP_MISSING, CAP_BLANK]
    assert plain["height"] == [720.0, 480.0, 360.0, None, 10.0]
    assert plain["width"] == [1280.0, 640.0, 640.0, None, None]
    assert plain["fps"] == [30.0, None, 29.97, None, None]
    assert plain["aes"] == [None, 4.0, None, None, None]
    assert plain["cut"][:2] == [10.0, 110.0] and plain["cut"][2:] == [None] * 8
    assert plain["crop"][:4] == [0.0, 1280.0, 40.0, 680.0]
    assert plain["issues"] == []
    np.testing.assert_array_equal(table.score(), [5.5, 4.0, np.nan, np.nan, np.nan])


def test_lenient_reading_names_every_bad_field(tmp_path: Path) -> None:
    records = [
        {"path": 5, "cap": "ok", "resolution": {"height": True, "width": "640"}},
        {"path": "a.mp4", "cap": ["fine", 3], "num_frames": 10.5, "fps": "30", "cut": [1, 2, 3], "crop": [0, 1]},
        "not a record",
        {"path": "b.mp4", "cap": {"text": "x"}, "resolution": [1, 2], "aesthetic": "high", "tech": None},
        {"path": "c.mp4", "cap": "fine", "num_frames": 20, "fps": 24, "resolution": {"height": 2, "width": 2}},
    ]
    table = _read(write_annotations(tmp_path, records, "bad.json"))
    found = sorted((i, issue.code, issue.field) for i, issue in table.issues)
    assert found == [
        (0, "wrong_type", "path"), (0, "wrong_type", "resolution.height"), (0, "wrong_type", "resolution.width"),
        (1, "bad_crop", "crop"), (1, "bad_cut", "cut"), (1, "wrong_type", "cap[1]"), (1, "wrong_type", "fps"),
        (1, "wrong_type", "num_frames"),
        (2, "not_an_object", ""),
        (3, "wrong_type", "aesthetic"), (3, "wrong_type", "cap"), (3, "wrong_type", "resolution"),
    ]
    assert table.invalid_mask.tolist() == [True, True, True, True, False]
    assert table.bad("cap").tolist() == [False, True, False, True, False]
    assert table.bad("record").tolist() == [False, False, True, False, False]
    assert table.path.to_pylist() == [None, "a.mp4", None, "b.mp4", "c.mp4"]


def test_integral_floats_are_accepted_and_fractions_flagged(tmp_path: Path) -> None:
    records = [{"path": "a.mp4", "cap": "x", "num_frames": 100.0, "resolution": {"height": 720.0, "width": 1280}},
               {"path": "b.mp4", "cap": "x", "num_frames": 99.5, "cut": [0.5, 10]}]
    table = _read(write_annotations(tmp_path, records, "f.json"))
    assert table.num_frames[0] == 100 and table.height[0] == 720
    assert math.isnan(table.num_frames[1]) and np.isnan(table.cut[1]).all()
    assert sorted((i, issue.code) for i, issue in table.issues) == [(1, "bad_cut"), (1, "wrong_type")]


def test_nan_tokens_written_by_python_json_are_read_and_flagged(tmp_path: Path) -> None:
    path = tmp_path / "nan.json"
    path.write_text(json.dumps([{"path": "a.jpg", "cap": "x", "aesthetic": float("nan")},
                                {"path": "b.jpg", "cap": "y", "tech": float("inf"), "fps": float("-inf")}]))
    table = _read(path)
    assert sorted((i, issue.code, issue.field) for i, issue in table.issues) == [
        (0, "not_finite", "aesthetic"), (1, "bad_fps", "fps"), (1, "not_finite", "tech")]


def test_json_syntax_error_gives_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_text('[\n  {"path": "a.jpg", "cap": "x"},\n  {"path": "b.jpg" "cap": "y"}\n]\n')
    loaded = read_annotation(_source(path))
    assert loaded.table is None and loaded.problem is not None
    assert loaded.problem.code == "json_syntax"
    assert (loaded.problem.line, loaded.problem.column) == (3, 20)
    assert "broken.json:3:20" in loaded.problem.message


@pytest.mark.parametrize(("text", "code"), [('{"path": "a.jpg"}', "not_a_list"), ('"text"', "not_a_list"),
                                            ("", "json_syntax")])
def test_top_level_must_be_a_list(tmp_path: Path, text: str, code: str) -> None:
    path = tmp_path / "top.json"
    path.write_text(text)
    loaded = read_annotation(_source(path))
    assert loaded.problem is not None and loaded.problem.code == code


def test_jsonl_broken_lines_are_record_issues(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    path.write_text('{"path": "a.jpg", "cap": "x"}\n\n{"path": "b.jpg", cap}\n{"path": "c.jpg", "cap": "z"}\n')
    table = _read(path)
    assert table.n == 3
    assert [(i, issue.code) for i, issue in table.issues] == [(1, "json_syntax")]
    assert "line 3" in table.issues[0][1].message


def test_unsafe_and_truncated_pickles(tmp_path: Path) -> None:
    from collections import OrderedDict

    path = tmp_path / "a.pkl"
    path.write_bytes(pickle.dumps([OrderedDict(path="a.jpg")]))
    loaded = read_annotation(_source(path))
    assert loaded.problem is not None and loaded.problem.code == "pickle_refused"
    assert "collections.OrderedDict" in loaded.problem.message
    path.write_bytes(pickle.dumps(RECORDS)[:40])
    loaded = read_annotation(_source(path))
    assert loaded.problem is not None and loaded.problem.code == "file_unreadable"
    path.write_bytes(pickle.dumps({"path": "a.jpg"}))
    assert read_annotation(_source(path)).problem.code == "not_a_list"  # type: ignore[union-attr]


def test_missing_file(tmp_path: Path) -> None:
    loaded = read_annotation(_source(tmp_path / "none.json"))
    assert loaded.problem is not None and loaded.problem.code == "file_missing"


def _many(n: int) -> list[Any]:
    rng = np.random.default_rng(1)
    out: list[Any] = []
    for i in range(n):
        rec: dict[str, Any] = {"path": f"v/{i}.mp4", "cap": f"caption {i} with }},{{ inside" if i % 5 == 0 else f"c{i}",
                               "resolution": {"height": int(rng.integers(100, 2000)), "width": int(rng.integers(100, 2000))},
                               "num_frames": int(rng.integers(1, 500)), "fps": float(rng.choice([24, 30, 29.97]))}
        if i % 7 == 0:
            rec["cap"] = [f"a{i}", f"b{i}"]
        if i % 11 == 0:
            rec["cut"] = [1, 5]
        if i % 13 == 0:
            rec["aesthetic"] = None
        if i == 57:
            rec["num_frames"] = "many"
        if i == 111:
            rec = 7  # type: ignore[assignment]
        out.append(rec)
    return out


def test_slices_and_processes_give_the_whole_file_result(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_annotations(tmp_path, _many(400), "many.json")
    whole = _plain(_read(path))
    assert [i for i, _, _ in whole["issues"]] == [57, 111]
    monkeypatch.setattr(slices, "CHUNK_BYTES", 700)
    assert len(slices.split_array(path.read_bytes()) or []) > 20
    assert _plain(_read(path)) == whole
    monkeypatch.setattr(slices, "PARALLEL_MIN_BYTES", 0)
    assert _plain(_read(path, workers=3)) == whole


def test_a_cut_inside_a_string_falls_back_to_the_whole_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    records = [{"path": "a.jpg", "cap": "x" * 50 + '"}, {"path": "evil.jpg"' + "y" * 50}, {"path": "b.jpg", "cap": "z"}]
    path = write_annotations(tmp_path, records * 20, "tricky.json")
    whole = _plain(_read(path))
    monkeypatch.setattr(slices, "CHUNK_BYTES", 30)
    monkeypatch.setattr(slices, "PARALLEL_MIN_BYTES", 0)
    assert _plain(_read(path)) == whole
    assert _plain(_read(path, workers=2)) == whole
    assert whole["path"][:2] == ["a.jpg", "b.jpg"]


def test_slices_are_shared_through_the_work_queue_and_leftovers_done_by_the_parent(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A child whose area fills up, or that dies, leaves slices undone: the parent decodes them."""
    import osctl.data._fast.pool as parallel

    path = write_annotations(tmp_path, _many(600), "many.json")
    whole = _plain(_read(path))
    monkeypatch.setattr(slices, "CHUNK_BYTES", 500)
    monkeypatch.setattr(slices, "PARALLEL_MIN_BYTES", 0)
    monkeypatch.setattr(parallel, "MAX_TOKENS", 7)  # several slices per token
    assert _plain(_read(path, workers=4)) == whole
    monkeypatch.setattr(parallel, "_RESERVE", 1 << 40)  # no batch fits: children stop at once
    assert _plain(_read(path, workers=3)) == whole

    def crash(*_args: Any) -> None:
        os._exit(9)

    monkeypatch.setattr(parallel, "_child", crash)
    assert _plain(_read(path, workers=3)) == whole


def test_checks_can_skip_caption_texts_and_the_checksum(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import hashlib

    path = write_annotations(tmp_path, _many(300), "many.json")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert read_annotation(_source(path)).sha256 == digest
    lean = read_annotation(_source(path), captions=False, checksum=False)
    assert lean.sha256 is None and lean.table is not None and lean.table.cap_json is None
    full = _read(path)
    assert lean.table.cap_state.tolist() == full.cap_state.tolist()
    monkeypatch.setattr(slices, "CHUNK_BYTES", 400)
    monkeypatch.setattr(slices, "PARALLEL_MIN_BYTES", 0)
    for workers in (1, 2):
        sliced = read_annotation(_source(path), workers=workers)
        assert sliced.sha256 == digest
        assert sliced.table is not None and _plain(sliced.table) == _plain(full)
        lean = read_annotation(_source(path), workers=workers, captions=False, checksum=False)
        assert lean.sha256 is None and lean.table is not None and lean.table.cap_json is None
        assert lean.table.cap_state.tolist() == full.cap_state.tolist()
        assert [(i, x.code, x.field) for i, x in lean.table.issues] == [(i, x.code, x.field) for i, x in full.issues]


def test_a_folder_is_not_an_annotation_file(tmp_path: Path) -> None:
    folder = tmp_path / "dir.json"
    folder.mkdir()
    loaded = read_annotation(_source(folder))
    assert loaded.problem is not None and loaded.problem.code == "file_unreadable"
    assert "is a folder" in loaded.problem.message


def test_jsonl_line_with_a_wrong_type_before_a_nan_token(tmp_path: Path) -> None:
    """A line whose typed decode fails on a type before reaching a NaN token is still read leniently."""
    path = tmp_path / "a.jsonl"
    path.write_text('{"path": 5, "cap": "x", "aesthetic": NaN}\n{"path": "b.jpg", "num_frames": "x", "cap": "y" "z"}\n'
                    '{"path": "c.jpg", "cap": "z"}\n')
    table = _read(path)
    assert table.n == 3
    assert [(i, issue.code, issue.field) for i, issue in table.issues] == [
        (0, "wrong_type", "path"), (0, "not_finite", "aesthetic"), (1, "json_syntax", "")]
    assert table.path.to_pylist() == [None, None, "c.jpg"]


def test_meanwhile_runs_once_in_this_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from osctl.data.annotations import read_annotations

    big = write_annotations(tmp_path, _many(300), "big.json")
    small = write_annotations(tmp_path, RECORDS, "small.json")
    calls: list[int] = []
    for paths, workers in (([small], 1), ([small, big], 2), ([big, big], 1)):
        calls.clear()
        monkeypatch.setattr(slices, "CHUNK_BYTES", 1 << 30 if len(paths) == 1 else 500)
        monkeypatch.setattr(slices, "PARALLEL_MIN_BYTES", 0)
        loaded = read_annotations([_source(p) for p in paths], workers=workers,
                                  meanwhile=lambda: calls.append(os.getpid()))
        assert calls == [os.getpid()]
        assert [item.n for item in loaded] == [{small: len(RECORDS), big: 300}[p] for p in paths]


def test_the_slices_of_several_files_share_the_processes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One pool decodes the slices of every large JSON file; a file with a bad slice is read whole, alone."""
    import hashlib

    import osctl.data._fast.pool as parallel
    from osctl.data.annotations import read_annotations

    tricky = [{"path": "a.jpg", "cap": "x" * 50 + '"}, {"path": "evil.jpg"' + "y" * 50}, {"path": "b.jpg", "cap": "z"}]
    paths = [write_annotations(tmp_path, _many(300), "a.json"), write_annotations(tmp_path, tricky * 20, "tricky.json"),
             write_annotations(tmp_path, RECORDS, "small.jsonl"), write_annotations(tmp_path, _many(250), "b.json")]
    expected = [_plain(_read(path)) for path in paths]  # each file decoded whole, in one process
    sources = [DataSource(i, i + 1, "/root", path, _source(path).format) for i, path in enumerate(paths)]
    monkeypatch.setattr(slices, "CHUNK_BYTES", 400)
    monkeypatch.setattr(slices, "PARALLEL_MIN_BYTES", 0)
    pools: list[set[int]] = []
    real = parallel.decode_slices_parallel

    def watched(items: Any, *args: Any, **kwargs: Any) -> Any:
        pools.append({fd for fd, _, _ in items})
        return real(items, *args, **kwargs)

    monkeypatch.setattr(parallel, "decode_slices_parallel", watched)
    for workers in (1, 3):
        pools.clear()
        loaded = read_annotations(sources, workers=workers)
        assert [_plain(item.table) for item in loaded] == expected  # type: ignore[arg-type]
        assert [item.sha256 for item in loaded] == [hashlib.sha256(p.read_bytes()).hexdigest() for p in paths]
        assert len(pools) == (1 if workers > 1 else 0) and all(len(fds) == 3 for fds in pools)  # 3 sliced JSON files


def test_an_item_that_does_not_decode_comes_back_as_none(tmp_path: Path) -> None:
    """In a child or in the parent, a failed item does not stop the others (decode_slices_parallel)."""
    from osctl.data._fast.pool import decode_slices_parallel

    records = [{"path": f"v/{i}.mp4", "cap": f"clip {i}", "resolution": {"height": 720, "width": 1280},
                "num_frames": 90 + i, "fps": 30} for i in range(200)]
    path = write_annotations(tmp_path, records, "clean.json")
    ranges = slices.split_array(path.read_bytes(), 600) or []
    assert len(ranges) > 10
    fd = os.open(path, os.O_RDONLY)
    try:
        items = [(fd, start, stop) for start, stop in ranges]
        items[3] = (fd, ranges[3][0] + 1, ranges[3][1])  # cut inside a record: does not decode
        items[-2] = (fd, ranges[-2][0], ranges[-2][1] - 1)
        for workers in (1, 2, 3):
            tables = decode_slices_parallel(items, workers, slices.read_slice_or_none)
            assert [k for k, table in enumerate(tables) if table is None] == [3, len(items) - 2]
            whole = [slices.read_slice(fd, start, stop) for start, stop in ranges]
            for k, table in enumerate(tables):
                if table is not None:
                    assert _plain(table) == _plain(whole[k])
    finally:
        os.close(fd)


def test_an_unexpected_error_leaves_no_file_open(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from osctl.data.annotations import read_annotations

    clean = [{"path": f"v/{i}.mp4", "cap": f"clip {i}", "num_frames": 90, "fps": 30} for i in range(300)]
    paths = [write_annotations(tmp_path, clean, "a.json"), write_annotations(tmp_path, RECORDS, "b.jsonl"),
             write_annotations(tmp_path, clean[:200], "c.json")]
    sources = [DataSource(i, i + 1, "/root", path, _source(path).format) for i, path in enumerate(paths)]
    monkeypatch.setattr(slices, "CHUNK_BYTES", 500)
    monkeypatch.setattr(annotations, "hash_in_background", lambda digests: None)
    sliced = read_annotations(sources[:1])[0]  # a.json is decoded in slices: its digest is pending
    assert isinstance(sliced.digest, annotations.FileDigest) and sliced.sha256 is not None

    def broken(*_args: Any, **_kwargs: Any) -> Any:
        raise RuntimeError("reader bug")

    monkeypatch.setitem(annotations._READERS, "jsonl", broken)
    before = sorted(os.listdir("/proc/self/fd"))
    with pytest.raises(RuntimeError, match="reader bug"):
        read_annotations(sources, workers=1)
    with pytest.raises(RuntimeError, match="reader bug"):
        annotations.read_annotation(sources[1])
    monkeypatch.setattr(slices, "read_slice", broken)  # a failure while decoding slices
    with pytest.raises(RuntimeError, match="reader bug"):
        annotations.read_annotation(sources[0])
    with pytest.raises(RuntimeError, match="reader bug"):
        read_annotations(sources, workers=1)
    assert sorted(os.listdir("/proc/self/fd")) == before
