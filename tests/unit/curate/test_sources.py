"""What `osctl data import` finds in a folder, a list or an annotation, and where captions come from."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from osctl.curate.sources import read_caption_file, read_source
from osctl.errors import UsageError


def _touch(path: Path, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_folder_captions_from_sidecars_and_captions_jsonl(tmp_path: Path) -> None:
    root = tmp_path / "src"
    for name in ("a.mp4", "b.MOV", "sub/c.png", "sub/d.jpg", "sub/e.webm", ".hidden.mp4", ".cache/f.mp4", "notes.md"):
        _touch(root / name)
    (root / "a.txt").write_text("a cat\n", encoding="utf-8")
    (root / "b.caption").write_text("first\n\nsecond\n", encoding="utf-8")
    (root / "sub" / "captions.jsonl").write_text(
        json.dumps({"path": "c.png", "caption": "a chart"}) + "\n" + json.dumps({"file": "d.jpg", "cap": ["x", "y"]}) + "\n")
    (root / "sub" / "e.txt").write_bytes("un café".encode("utf-16"))  # UTF-16 with its byte-order mark
    source = read_source(root, exclude=root / "out")
    found = {item.rel: item.caption for item in source.items}
    assert found == {"a.mp4": "a cat", "b.MOV": ["first", "second"], "sub/c.png": "a chart", "sub/d.jpg": ["x", "y"],
                     "sub/e.webm": "un café"}
    assert source.kind == "folder" and source.groups[0].root == str(root.resolve())
    assert all(Path(item.path).is_absolute() for item in source.items)
    assert read_source(root, captions="none").items[0].caption is None


def test_output_folder_inside_the_source_is_not_searched(tmp_path: Path) -> None:
    _touch(tmp_path / "a.mp4")
    _touch(tmp_path / "out" / "clips" / "a" / "scene-000.mp4")
    assert [item.rel for item in read_source(tmp_path, exclude=tmp_path / "out").items] == ["a.mp4"]


def test_caption_encodings(tmp_path: Path) -> None:
    assert read_caption_file(_touch(tmp_path / "bom.txt", "\ufeffhello".encode())) == ("hello", None)
    value, problem = read_caption_file(_touch(tmp_path / "latin.txt", "café".encode("latin-1")))
    assert value is None and problem is not None and problem[0] == "caption_encoding"
    assert "byte 0xe9 at offset 3" in problem[1] and "save it as UTF-8" in problem[1]
    value, problem = read_caption_file(_touch(tmp_path / "nul.txt", "hi".encode("utf-16-le")))
    assert problem is not None and problem[0] == "caption_encoding" and "NUL" in problem[1]
    value, problem = read_caption_file(_touch(tmp_path / "blank.txt", b"  \n"))
    assert value is None and problem is not None and problem[0] == "empty_caption"


def test_csv_list_with_named_columns(tmp_path: Path) -> None:
    _touch(tmp_path / "media" / "one" / "a.mp4")
    _touch(tmp_path / "media" / "two" / "b.png")
    listing = tmp_path / "list.csv"
    listing.write_text("file,text\nmedia/one/a.mp4,a dog\nmedia/two/b.png,\nmedia/one/a.mp4,again\nnotes.md,x\n,empty\n")
    source = read_source(listing, path_column="file", caption_column="text")
    assert source.groups[0].root == str((tmp_path / "media").resolve())
    assert [(item.rel, item.caption, item.caption_problem and item.caption_problem[0]) for item in source.items] == [
        ("one/a.mp4", "a dog", None), ("two/b.png", None, "empty_caption")]
    assert sorted(p.code for p in source.problems) == ["duplicate_path", "missing_path", "unknown_extension"]
    with pytest.raises(UsageError, match=r"--path-column path: list.csv has no column 'path'; its columns are file, text"):
        read_source(listing)


def test_jsonl_and_parquet_lists(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    _touch(tmp_path / "a.mp4")
    rows = [{"path": "a.mp4", "caption": "a"}, {"path": str(tmp_path / "a.mp4"), "caption": "twice"}]
    (tmp_path / "l.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    pq.write_table(pa.Table.from_pylist(rows[:1]), tmp_path / "l.parquet")
    for name in ("l.jsonl", "l.parquet"):
        source = read_source(tmp_path / name)
        assert [(i.rel, i.caption) for i in source.items] == [("a.mp4", "a")]
    assert [p.code for p in read_source(tmp_path / "l.jsonl").problems] == ["duplicate_path"]


def test_annotation_keeps_its_fields_and_root(tmp_path: Path) -> None:
    anno = tmp_path / "anno" / "v.json"
    anno.parent.mkdir()
    anno.write_text(json.dumps([{"path": "clips/a.mp4", "cap": "old", "cut": [2, 9], "aesthetic": 5.5, "mine": 1}]))
    source = read_source(anno, root=tmp_path / "data")
    item = source.items[0]
    assert (item.rel, item.path) == ("clips/a.mp4", str(tmp_path / "data" / "clips" / "a.mp4"))
    assert item.base == {"cap": "old", "cut": [2, 9], "aesthetic": 5.5, "mine": 1}
    (tmp_path / "data.txt").write_text(f"{tmp_path / 'data'},anno/v.json\n")
    assert read_source(tmp_path / "data.txt", captions="none").items[0].base == {"cut": [2, 9], "aesthetic": 5.5,
                                                                                  "mine": 1}


def test_bad_sources_are_usage_errors(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="does not exist"):
        read_source(tmp_path / "nope")
    with pytest.raises(UsageError, match="caption-column needs a CSV/JSONL/Parquet list"):
        read_source(tmp_path, captions="caption-column")
    with pytest.raises(UsageError, match=r"has suffix '\.xml'"):
        read_source(_touch(tmp_path / "a.xml"))
    with pytest.raises(UsageError, match="--captions 'sidecar' is not a caption source"):
        read_source(tmp_path, captions="sidecar")
