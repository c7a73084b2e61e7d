"""`osctl data import` as a library: shapes folders, lists, re-probes, bad files, reruns and interruptions."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from osctl.curate.engines import LocalEngine
from osctl.curate.importer import import_media
from osctl.data.validate import validate_data
from osctl.errors import UsageError
from tests.curate_helpers import exif_image, file_frames, noise_clip, shapes_folder, write_clip


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, dict[str, Any]]]:
    return shapes_folder(tmp_path_factory.mktemp("shapes"), videos=6, images=3)


def _records(result: Any) -> dict[str, dict[str, Any]]:
    return {r["path"]: r for path in result.annotations for r in json.loads(path.read_text())}


def _check_against_original(records: dict[str, dict[str, Any]], original: dict[str, dict[str, Any]]) -> None:
    assert set(records) == set(original)
    for path, record in records.items():
        want = original[path]
        assert record["cap"] == want["cap"], path
        assert record["resolution"] == want["resolution"], path
        if path.endswith(".mp4"):
            assert record["num_frames"] == file_frames(want), path
            assert record["fps"] == pytest.approx(want["fps"], abs=1e-3), path
            assert record["codec"] == "h264" and record["duration"] > 0
        else:
            assert "num_frames" not in record and "fps" not in record


def test_shapes_folder_import_reproduces_the_annotations_and_validates_clean(shapes, tmp_path: Path) -> None:
    folder, original = shapes
    out = tmp_path / "out"
    result = import_media(folder, out, engine=LocalEngine(2))
    assert (result.files, result.written, result.probed, result.reused, result.problems) == (9, 9, 9, 0, [])
    _check_against_original(_records(result), original)
    report = validate_data(result.data_txt, probe=True, workers=2)
    assert (report.errors, report.warnings) == (0, 0), [f.short() for f in report.findings()]

    again = import_media(folder, out, engine=LocalEngine(2))
    assert (again.probed, again.reused) == (0, 9)
    assert [p.read_bytes() for p in again.annotations] == [p.read_bytes() for p in result.annotations]


def test_grown_and_changed_folder_probes_only_new_or_changed_files(shapes, tmp_path: Path) -> None:
    folder = tmp_path / "grow"
    shutil.copytree(shapes[0], folder)
    out = tmp_path / "out"
    import_media(folder, out, engine=LocalEngine(1))
    noise_clip(folder / "videos" / "new.mp4", frames=7)
    changed = sorted((folder / "videos").glob("0000-*.mp4"))[0]
    noise_clip(changed, frames=5, size=(32, 32))
    (folder / "images").joinpath(sorted(p.name for p in (folder / "images").glob("*.txt"))[0]).write_text("edited")
    result = import_media(folder, out, engine=LocalEngine(1))
    assert (result.files, result.probed, result.reused) == (10, 2, 8)
    records = _records(result)
    assert records["videos/new.mp4"]["num_frames"] == 7
    assert records[f"videos/{changed.name}"]["resolution"] == {"height": 32, "width": 32}
    assert "edited" in [r.get("cap") for r in records.values()]


@pytest.mark.parametrize("kind", ["csv", "jsonl"])
def test_csv_and_jsonl_lists_import_like_the_folder(shapes, tmp_path: Path, kind: str) -> None:
    folder, original = shapes
    rows = [{"file": str(folder / path), "text": rec["cap"] if isinstance(rec["cap"], str) else rec["cap"][0]}
            for path, rec in original.items()]
    listing = tmp_path / f"list.{kind}"
    if kind == "csv":
        with listing.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=["file", "text"])
            writer.writeheader()
            writer.writerows(rows)
    else:
        listing.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    result = import_media(listing, tmp_path / "out", path_column="file", caption_column="text", engine=LocalEngine(2))
    records = _records(result)
    assert result.written == len(original) and result.problems == []
    firsts = {p: {**r, "cap": r["cap"] if isinstance(r["cap"], str) else r["cap"][0]} for p, r in original.items()}
    _check_against_original(records, firsts)
    assert result.data_txt.read_text().splitlines()[-1] == f"{folder},annotations/list.json"
    report = validate_data(result.data_txt, probe=True, workers=2)
    assert (report.errors, report.warnings) == (0, 0)


def test_reprobe_of_an_annotation_keeps_its_fields(tmp_path: Path) -> None:
    write_clip(tmp_path / "data" / "a.mp4", __import__("numpy").zeros((10, 32, 32, 3), dtype="uint8"), 8)
    anno = tmp_path / "old.json"
    anno.write_text(json.dumps([{"path": "a.mp4", "cap": "kept", "resolution": {"height": 1, "width": 1},
                                 "num_frames": 99, "fps": 30, "cut": [2, 8], "aesthetic": 5.0, "mine": [1]},
                                {"path": "b.mp4", "cap": "gone"}]))
    result = import_media(anno, tmp_path / "out", root=tmp_path / "data", engine=LocalEngine(1))
    assert json.loads(result.annotations[0].read_text()) == [
        {"path": "a.mp4", "cap": "kept", "resolution": {"height": 32, "width": 32}, "num_frames": 6, "fps": 8.0,
         "duration": 1.25, "codec": "h264", "cut": [2, 8], "aesthetic": 5.0, "mine": [1]}]
    assert [(p.code, p.severity) for p in result.problems] == [("media_missing", "error")]


def test_bad_files_are_reported_each_with_a_reason(tmp_path: Path) -> None:
    import numpy as np

    src = tmp_path / "src"
    noise_clip(src / "good.mp4", frames=6)
    (src / "good.txt").write_text("fine")
    (src / "empty.mp4").write_bytes(b"")
    (src / "junk.mp4").write_text("junk")
    whole = noise_clip(src / "tmp_whole.mp4", frames=20, faststart=True).read_bytes()
    (src / "tmp_whole.mp4").unlink()
    (src / "short.mp4").write_bytes(whole[: len(whole) // 2])
    write_clip(src / "vfr.mp4", np.zeros((6, 32, 32, 3), np.uint8), 25, pts_ms=[0, 40, 80, 200, 320, 440])
    write_clip(src / "turned.mp4", np.zeros((4, 32, 48, 3), np.uint8), 24, rotation=90)
    exif_image(src / "phone.jpg", 8)
    noise_clip(src / "latin.mp4", frames=4)
    (src / "latin.txt").write_bytes("légende".encode("latin-1"))
    result = import_media(src, tmp_path / "out", engine=LocalEngine(2))
    found = {(Path(p.path).name, p.code, p.severity) for p in result.problems}
    assert found == {("empty.mp4", "empty_file", "error"), ("junk.mp4", "unreadable", "error"),
                     ("short.mp4", "truncated", "error"), ("phone.jpg", "exif_rotated", "error"),
                     ("latin.mp4", "caption_encoding", "error"), ("vfr.mp4", "variable_frame_rate", "warning"),
                     ("turned.mp4", "rotated", "warning")}
    records = _records(result)
    assert sorted(records) == ["good.mp4", "turned.mp4", "vfr.mp4"]
    assert records["turned.mp4"]["resolution"] == {"height": 48, "width": 32}
    written = [json.loads(line) for line in (result.out / "problems.jsonl").read_text().splitlines()]
    assert len(written) == 7 and all(set(p) == {"path", "code", "severity", "message"} for p in written)
    assert result.to_json()["skipped"] == 5 and result.to_json()["warnings"] == 2


class _Interrupted(LocalEngine):
    """Delivers the first ``keep`` results, then stops as Ctrl-C would."""

    def __init__(self, keep: int) -> None:
        super().__init__(1)
        self.keep = keep

    def map(self, fn, items, *, context=None, on_result=None):
        for index, item in enumerate(items[: self.keep]):
            on_result(index, fn(context, item))
        raise KeyboardInterrupt


def test_interrupted_import_leaves_the_previous_output_and_resumes(shapes, tmp_path: Path) -> None:
    folder = tmp_path / "src"
    shutil.copytree(shapes[0], folder)
    out = tmp_path / "out"
    first = import_media(folder / "images", out, engine=LocalEngine(1))
    before = first.data_txt.read_bytes()
    with pytest.raises(KeyboardInterrupt):
        import_media(folder, out, engine=_Interrupted(4))
    assert first.data_txt.read_bytes() == before  # nothing half-written: the old output is intact
    assert not list(out.rglob("*.tmp-*"))
    resumed = import_media(folder, out, engine=LocalEngine(1))
    # the 3 images were probed by the first import, 4 videos before the interruption: 2 videos are left
    assert (resumed.files, resumed.probed, resumed.reused) == (9, 2, 7)


def test_unrelated_output_folder_is_refused(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "mine.txt").write_text("keep")
    noise_clip(tmp_path / "src" / "a.mp4", frames=3)
    with pytest.raises(UsageError, match=r"is not empty and holds no osctl-curate\.json"):
        import_media(tmp_path / "src", tmp_path / "out")


def test_bad_source_creates_no_output_folder(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="does not exist"):
        import_media(tmp_path / "missing", tmp_path / "out")
    assert not (tmp_path / "out").exists()
