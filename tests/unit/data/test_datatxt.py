"""data.txt parsing: comments, relative paths, the last-comma split, suffixes, line-numbered errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from osctl.data.datatxt import load_data_txt, parse_data_txt
from osctl.errors import DataError, UsageError


def test_comments_blank_lines_and_relative_paths(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    data = tmp_path / "sub" / "data.txt"
    data.write_text("# header comment\n\n  media , a.json  \n   # indented comment\n/abs/root,/abs/b.JSONL\nr2,x/c.pkl\nr3,d.parquet\n")
    sources, problems = parse_data_txt(data)
    assert problems == []
    assert [s.line for s in sources] == [3, 5, 6, 7]
    assert sources[0].root == str(tmp_path / "sub" / "media")
    assert sources[0].annotation == tmp_path / "sub" / "a.json"
    assert sources[1].root == "/abs/root" and sources[1].annotation == Path("/abs/b.JSONL")
    assert [s.format for s in sources] == ["json", "jsonl", "pkl", "parquet"]
    assert [s.file_id for s in sources] == [0, 1, 2, 3]


def test_root_with_commas_splits_on_the_last_comma(tmp_path: Path) -> None:
    data = tmp_path / "data.txt"
    data.write_text("/data/root,with,commas,anno.json\n")
    (source,), problems = parse_data_txt(data)
    assert problems == []
    assert source.root == "/data/root,with,commas"
    assert source.annotation == tmp_path / "anno.json"


def test_malformed_lines_are_reported_with_their_numbers(tmp_path: Path) -> None:
    data = tmp_path / "data.txt"
    data.write_text("ok,a.json\nno comma here\n,b.json\nroot,\nroot,c.csv\nroot,noext\n")
    sources, problems = parse_data_txt(data)
    assert [s.line for s in sources] == [1]
    assert [p.line for p in problems] == [2, 3, 4, 5, 6]
    assert "no comma" in problems[0].message
    assert "DATA_ROOT is empty" in problems[1].message
    assert "ANNOTATION_FILE is empty" in problems[2].message
    assert ".csv" in problems[3].message and ".parquet" in problems[3].message
    with pytest.raises(DataError, match=r"data.txt:2: .*no comma"):
        load_data_txt(data)


def test_missing_data_txt_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="does not exist"):
        parse_data_txt(tmp_path / "nope.txt")


def test_empty_data_txt_is_refused(tmp_path: Path) -> None:
    data = tmp_path / "data.txt"
    data.write_text("# only a comment\n")
    with pytest.raises(DataError, match="lists no annotation files"):
        load_data_txt(data)
