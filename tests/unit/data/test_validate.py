"""`validate_data`: every check flags exactly the records it should, and clean records are never flagged."""

from __future__ import annotations

import json
import pickle
from collections import OrderedDict
from pathlib import Path
from typing import Any

import pytest

from osctl.data.validate import CHECKS, ERROR, WARNING, validate_data
from tests.unit.data.data_helpers import write_image, write_video

V = {"cap": "a clip", "resolution": {"height": 24, "width": 32}, "num_frames": 12, "fps": 8}
I = {"cap": "a photo", "resolution": {"height": 24, "width": 32}}  # noqa: E741

GOOD = [
    {**V, "path": "v/good.mp4", "cut": [0, 12], "crop": [0, 32, 4, 20], "aesthetic": 5.0, "tech": 0.3, "motion": 0.1},
    {**I, "path": "i/good.jpg", "cap": ["one", "two"]},
    {**I, "path": "i/good.PNG"},
    {**V, "path": "v/good.MOV"},
]

DEFECTS: list[tuple[Any, set[str]]] = [
    (42, {"not_an_object"}),
    ({**V}, {"missing_path"}),
    ({**V, "path": "v/x.gif"}, {"unknown_extension"}),
    ({**V, "path": "v/d3.mp4", "cap": None}, {"missing_caption"}),
    ({**V, "path": "v/d4.mp4", "cap": "   "}, {"empty_caption"}),
    ({**V, "path": "v/d5.mp4", "cap": ["ok", ""]}, {"empty_caption"}),
    ({**V, "path": "v/d6.mp4", "cap": 5}, {"wrong_type"}),
    ({**V, "path": "v/d7.mp4", "num_frames": "many"}, {"wrong_type"}),
    ({**V, "path": "v/d8.mp4", "resolution": None}, {"missing_resolution"}),
    ({**V, "path": "v/d9.mp4", "resolution": {"height": -1, "width": 32}}, {"bad_resolution"}),
    ({**V, "path": "v/d10.mp4", "num_frames": None}, {"missing_num_frames"}),
    ({**V, "path": "v/d11.mp4", "num_frames": 0}, {"bad_num_frames"}),
    ({**V, "path": "v/d12.mp4", "fps": None}, {"missing_fps"}),
    ({**V, "path": "v/d13.mp4", "fps": -5}, {"bad_fps"}),
    ({**V, "path": "v/d14.mp4", "fps": float("inf")}, {"bad_fps"}),
    ({**V, "path": "v/d15.mp4", "aesthetic": float("nan")}, {"not_finite"}),
    ({**V, "path": "v/d16.mp4", "cut": [10, 5]}, {"bad_cut"}),
    ({**V, "path": "v/d17.mp4", "cut": [0, 13]}, {"bad_cut"}),
    ({**V, "path": "v/d18.mp4", "cut": [0, 5, 9]}, {"bad_cut"}),
    ({**V, "path": "v/d19.mp4", "crop": [0, 33, 0, 24]}, {"bad_crop"}),
    ({**V, "path": "v/d20.mp4", "crop": [5, 5, 0, 24]}, {"bad_crop"}),
    ({**V, "path": "v/absent.mp4"}, {"media_missing"}),
    ({**V, "path": "../outside/e.mp4"}, {"path_escapes_root"}),
    ({**V, "path": "v/good.mp4", "cut": [0, 12]}, {"duplicate_path"}),  # the same scene of the same video
    ({**I, "path": "i/d24.jpg", "resolution": {"height": 24.5, "width": 32}}, {"wrong_type"}),
    ({**V, "path": "v/d25.mp4", "num_frames": 1e30}, {"out_of_range"}),
    ({**V, "path": "v/d26.mp4", "resolution": {"height": 1e25, "width": 32}}, {"out_of_range"}),
    ({**V, "path": "v/d27.mp4", "resolution": {"height": 24, "width": 1e308}}, {"out_of_range"}),
    ({**V, "path": "v/d28.mp4", "fps": 1e-300}, {"out_of_range"}),
    ({**V, "path": "v/d29.mp4", "cut": [1e17, 1e17 + 64]}, {"out_of_range"}),
    ({**I, "path": "i/d30.jpg", "crop": [0, 1e300, 0, 24]}, {"out_of_range"}),
    ({**V, "path": "v/d31.mp4", "fps": 1e308}, {"out_of_range"}),
]
WARNINGS = {"path_escapes_root", "duplicate_path"}


def _dataset(tmp_path: Path) -> Path:
    root = tmp_path / "media"
    anno = tmp_path / "anno"
    anno.mkdir()
    for record in GOOD + [r for r, _ in DEFECTS]:
        if isinstance(record, dict) and "path" in record and record["path"] != "v/absent.mp4":
            target = root / record["path"]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.touch()
    (anno / "good.json").write_text(json.dumps(GOOD))
    (anno / "defects.json").write_text(json.dumps([r for r, _ in DEFECTS]))  # NaN/Infinity tokens included
    (anno / "broken.json").write_text('[{"path": "a.jpg",\n  "cap": "x" "oops"}]')
    (anno / "notlist.json").write_text('{"records": []}')
    (anno / "unsafe.pkl").write_bytes(pickle.dumps([OrderedDict(path="a.jpg")]))
    (anno / "dir.json").mkdir()
    pickled = [{**I, "path": "i/pkl0.jpg"}, {**V, "path": "v/pkl1.webm"}]
    for record in pickled:
        (root / record["path"]).touch()
    (anno / "good.pkl").write_bytes(pickle.dumps(pickled))
    data_txt = tmp_path / "data.txt"
    data_txt.write_text("\n".join([
        "# defects of every kind", f"{root},anno/good.json", f"{root},anno/defects.json", f"{root},anno/broken.json",
        f"{root},anno/notlist.json", f"{root},anno/unsafe.pkl", f"{root},anno/missing.json", f"{root},anno/dir.json",
        "this line has no comma", f"{root},anno/table.csv", f"{root},anno/good.pkl",
    ]) + "\n")
    return data_txt


def test_every_check_flags_exactly_its_records(tmp_path: Path) -> None:
    report = validate_data(_dataset(tmp_path))
    flagged = report.flagged()
    expected: dict[tuple[str, int | None], set[str]] = {
        ("anno/defects.json", i): codes for i, (_, codes) in enumerate(DEFECTS)}
    expected.update({
        ("anno/broken.json", None): {"json_syntax"}, ("anno/notlist.json", None): {"not_a_list"},
        ("anno/unsafe.pkl", None): {"pickle_refused"}, ("anno/missing.json", None): {"file_missing"},
        ("anno/dir.json", None): {"file_unreadable"},
        ("data.txt", 9): {"datatxt_malformed"}, ("data.txt", 10): {"datatxt_malformed"},
    })
    flagged = {(Path(f).name if f.endswith("data.txt") else f, i): c for (f, i), c in flagged.items()}
    assert flagged == expected
    assert not any(f in ("anno/good.json", "anno/good.pkl") for f, _ in flagged)  # clean records are never flagged
    assert report.n_records == len(GOOD) + len(DEFECTS) + 2
    assert report.warnings == 2 and report.errors == len(expected) - 2
    for finding in report.findings():
        assert finding.severity == (WARNING if finding.code in WARNINGS else ERROR)
        assert finding.code in CHECKS
    covered = {code for codes in expected.values() for code in codes} | {"datatxt_empty"}  # see the test below
    assert covered == {c.code for c in CHECKS.values() if not c.probe}  # every non-probe check is exercised


@pytest.mark.parametrize("text", ["", "# only a comment\n\n"])
def test_a_data_txt_listing_no_file_is_an_error(tmp_path: Path, text: str) -> None:
    data_txt = tmp_path / "data.txt"
    data_txt.write_text(text)
    report = validate_data(data_txt)
    assert report.errors == 1
    (finding,) = report.findings()
    assert finding.code == "datatxt_empty" and "lists no annotation files" in finding.message


def test_absurd_numbers_name_the_field_and_the_bound(tmp_path: Path) -> None:
    report = validate_data(_dataset(tmp_path))
    messages = {(f.index, f.field): f.message for f in report.findings("out_of_range")}
    first = next(i for i, (_, codes) in enumerate(DEFECTS) if codes == {"out_of_range"})
    assert messages[(first, "num_frames")] == "num_frames is 1e+30, beyond the plausible maximum 10000000"
    assert messages[(first + 1, "resolution.height")] == "resolution.height is 1e+25, beyond the plausible maximum 65536"
    assert messages[(first + 2, "resolution.width")] == "resolution.width is 1e+308, beyond the plausible maximum 65536"
    assert messages[(first + 3, "fps")] == "fps is 1e-300, below the plausible minimum 0.01"
    assert messages[(first + 4, "cut")] == "cut is [1e+17, 1.0000000000000006e+17], beyond the plausible maximum 10000000"
    assert messages[(first + 6, "fps")] == "fps is 1e+308, beyond the plausible maximum 1000"


def test_messages_name_the_problem(tmp_path: Path) -> None:
    report = validate_data(_dataset(tmp_path))
    by_code = {f.code: f for f in report.findings()}
    assert "broken.json:2:14: JSON syntax error" in by_code["json_syntax"].message
    cuts = [f.message for f in report.examples("bad_cut", 5)]
    assert cuts[0] == "cut is [0, 5, 9], expected 2 integers [start_frame, end_frame]"
    assert cuts[1].startswith("cut is [10, 5]; it needs 0 <= start < end")
    assert cuts[2].startswith("cut is [0, 13], 13 frames, but num_frames is 12")
    assert "outside the 32x24" in report.examples("bad_crop")[0].message
    assert "also listed at anno/good.json:0" in by_code["duplicate_path"].message
    assert by_code["duplicate_path"].short().startswith("anno/defects.json:23 path: ")
    assert "collections.OrderedDict" in by_code["pickle_refused"].message
    assert by_code["datatxt_malformed"].field == "line"


PROBE_RECORDS: list[tuple[dict[str, Any], set[tuple[str, str]]]] = [
    ({**V, "path": "ok.mp4"}, set()),
    ({**I, "path": "ok.png"}, set()),
    ({**V, "path": "trunc.mp4", "num_frames": 40}, {("media_undecodable", ERROR)}),
    ({**V, "path": "faststart_trunc.mp4", "num_frames": 40}, {("media_undecodable", ERROR)}),
    ({**V, "path": "zero.mp4"}, {("media_undecodable", ERROR)}),
    ({**I, "path": "garbage.jpg"}, {("media_undecodable", ERROR)}),
    ({**V, "path": "ok.mp4", "resolution": {"height": 48, "width": 64}}, {("resolution_mismatch", ERROR), ("duplicate_path", WARNING)}),
    ({**I, "path": "small.png"}, {("resolution_mismatch", ERROR)}),
    ({**V, "path": "more.mp4", "num_frames": 20}, {("frame_count_mismatch", ERROR)}),
    ({**V, "path": "more2.mp4", "num_frames": 8}, {("frame_count_mismatch", WARNING)}),
    ({**V, "path": "cut.mp4", "num_frames": 20, "cut": [2, 16]}, {("cut_beyond_media", ERROR)}),
    ({**V, "path": "fps.mp4", "fps": 30}, {("fps_mismatch", ERROR)}),
    ({**V, "path": "fps2.mp4", "fps": 8.05}, {("fps_mismatch", WARNING)}),
]


@pytest.mark.slow
def test_probe_finds_broken_and_disagreeing_media(tmp_path: Path) -> None:
    media = tmp_path / "media"
    for name in ("ok", "more", "more2", "cut", "fps", "fps2"):
        write_video(media / f"{name}.mp4", 12)
    full = write_video(media / "full.mp4", 40)
    (media / "trunc.mp4").write_bytes(full.read_bytes()[: full.stat().st_size // 2])  # index (moov) lost
    fast = write_video(media / "fast.mp4", 40, faststart=True)
    (media / "faststart_trunc.mp4").write_bytes(fast.read_bytes()[: fast.stat().st_size // 2])  # frames lost
    write_video(media / "zero.mp4", 0)
    write_image(media / "ok.png")
    write_image(media / "small.png", size=(10, 10))
    (media / "garbage.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (tmp_path / "anno.json").write_text(json.dumps([r for r, _ in PROBE_RECORDS]))
    data_txt = tmp_path / "data.txt"
    data_txt.write_text(f"{media},anno.json\n")
    report = validate_data(data_txt, probe=True, workers=3)
    got: dict[int, set[tuple[str, str]]] = {}
    for finding in report.findings():
        assert finding.index is not None
        got.setdefault(finding.index, set()).add((finding.code, finding.severity))
    assert got == {i: want for i, (_, want) in enumerate(PROBE_RECORDS) if want}
    assert report.examples("cut_beyond_media")[0].message.startswith("cut ends at frame 16 but the file has 12 frames")
    quick = validate_data(data_txt)  # without --probe the media are only checked for existence
    assert {f.code for f in quick.findings()} == {"duplicate_path"}


def test_existence_and_duplicates_across_roots_and_path_spellings(tmp_path: Path) -> None:
    media = tmp_path / "m"
    (media / "sub").mkdir(parents=True)
    for name in ("top.jpg", "sub/x.jpg", "sub/y.jpg"):
        (media / name).touch()
    a = [{**I, "path": "top.jpg"}, {**I, "path": "./top.jpg"}, {**I, "path": "sub//x.jpg"}, {**I, "path": str(media / "sub/y.jpg")},
         {**I, "path": "sub/none.jpg"}, {**I, "path": "nosuchdir/z.jpg"}]
    b = [{**I, "path": "x.jpg"}, {**I, "path": "y.jpg"}]
    (tmp_path / "a.json").write_text(json.dumps(a))
    (tmp_path / "b.json").write_text(json.dumps(b))
    data_txt = tmp_path / "data.txt"
    data_txt.write_text(f"{media},a.json\n{media / 'sub'},b.json\n")
    flagged = validate_data(data_txt).flagged()
    assert flagged == {("a.json", 4): {"media_missing"}, ("a.json", 5): {"media_missing"},
                       ("b.json", 1): {"duplicate_path"}}
    # "./top.jpg" and "sub//x.jpg" name files that exist; their spelling differs from "top.jpg", so they are
    # not reported as duplicates (paths are compared as joined, not resolved)


def _reference_paths(roots: list[str], files: list[list[Any]], plain: bool) -> dict[tuple[str, int], set[str]]:
    """media_missing, path_escapes_root and duplicate_path the slow, obvious way (one record at a time)."""
    import os

    found: dict[tuple[str, int], set[str]] = {}
    first: dict[str, tuple[str, int]] = {}
    for f, (root, records) in enumerate(zip(roots, files, strict=True)):
        for i, record in enumerate(records):
            path = record.get("path")
            if not isinstance(path, str):
                continue
            joined = path if path.startswith("/") else ("" if root == "/" else root.rstrip("/")) + "/" + path
            codes = found.setdefault((f"f{f}.json", i), set())
            if not os.path.isfile(joined):
                codes.add("media_missing")
            if not (os.path.normpath(os.path.join(root, path)) + "/").startswith(root.rstrip("/") + "/"):
                codes.add("path_escapes_root")
            key = path if plain else joined
            if key in first:
                codes.add("duplicate_path")
            first.setdefault(key, (f"f{f}.json", i))
    return {k: v for k, v in found.items() if v}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_path_checks_match_a_record_by_record_reference(tmp_path: Path, seed: int) -> None:
    """Existence, escapes and duplicates over odd, absolute, repeated and folder-like paths, across files."""
    import numpy as np

    rng = np.random.default_rng(seed)
    media = tmp_path / "media"
    other = tmp_path / "other"
    for folder in ("a", "a/b", "c", "a/x.mp4"):
        (media / folder).mkdir(parents=True, exist_ok=True)
    for name in ("a/1.mp4", "a/2.mp4", "a/b/3.mp4", "c/4.mp4", "5.mp4", "a/b/6.mp4"):
        (media / name).touch()
    other.mkdir()
    (other / "7.mp4").touch()
    names = ["a/1.mp4", "a/2.mp4", "a/b/3.mp4", "c/4.mp4", "5.mp4", "a/b/6.mp4", "a/x.mp4", "a/none.mp4",
             "zz/9.mp4", "a//1.mp4", "./5.mp4", "a/../c/4.mp4", "../other/7.mp4", f"{media}/a/1.mp4",
             f"{other}/7.mp4", "/5.mp4", "a/", "", "a/b/../b/3.mp4"]
    plain_names = names[:9]
    for plain in (True, False):
        pool = plain_names if plain else names
        roots = [str(media), str(media)] if plain else [str(media), str(other)]
        files = []
        for _ in roots:
            records: list[Any] = []
            for _ in range(60):
                if rng.random() < 0.05:
                    records.append({**V})
                else:
                    records.append({**V, "path": str(rng.choice(pool))})
            files.append(records)
        folder = tmp_path / f"anno{int(plain)}"
        folder.mkdir()
        lines = []
        for f, (root, records) in enumerate(zip(roots, files, strict=True)):
            (folder / f"f{f}.json").write_text(json.dumps(records))
            lines.append(f"{root},{folder}/f{f}.json")
        data_txt = folder / "data.txt"
        data_txt.write_text("\n".join(lines) + "\n")
        report = validate_data(data_txt, workers=1)
        got = {(Path(file).name, i): codes & {"media_missing", "path_escapes_root", "duplicate_path"}
               for (file, i), codes in report.flagged().items() if i is not None}
        assert {k: v for k, v in got.items() if v} == _reference_paths(roots, files, plain)
        for finding in report.findings("duplicate_path"):
            listed = finding.message.split(" is also listed at ")[1]
            file, index = listed.rsplit(":", 1)
            assert files[int(Path(file).stem[1:])][int(index)]["path"] is not None


def test_scenes_of_one_video_are_not_duplicates_but_a_repeated_scene_is(tmp_path: Path) -> None:
    media = tmp_path / "m"
    media.mkdir()
    (media / "v.mp4").touch()
    (media / "w.mp4").touch()
    records = [{**V, "path": "v.mp4", "cut": [0, 12]}, {**V, "path": "v.mp4", "cut": [12, 24]},  # two scenes
               {**V, "path": "v.mp4", "cut": [0, 12]},  # the first scene again
               {**V, "path": "v.mp4"},  # the whole video: not one of its scenes
               {**V, "path": "w.mp4"}, {**V, "path": "w.mp4"}]  # the same whole video twice
    (tmp_path / "a.json").write_text(json.dumps(records))
    data_txt = tmp_path / "data.txt"
    data_txt.write_text(f"{media},a.json\n")
    report = validate_data(data_txt)
    assert report.flagged() == {("a.json", 2): {"duplicate_path"}, ("a.json", 5): {"duplicate_path"}}
    messages = sorted(f.message for f in report.findings())
    assert messages[0].endswith("v.mp4 is also listed at a.json:0") and messages[1].endswith("w.mp4 is also listed at a.json:4")
