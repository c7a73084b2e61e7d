"""`osctl data split-scenes`: cuts found on joined scenes, scene shaping, records and extracted clips."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from osctl.curate.engines import LocalEngine
from osctl.curate.importer import import_media
from osctl.curate.scenes import detect_scenes, shape_scenes, split_scenes
from osctl.data.validate import validate_data
from osctl.errors import UsageError
from tests.curate_helpers import three_scene_clip
from tests.unit.data.pipeline_helpers import still_image

LENGTHS = (20, 25, 30)


@pytest.fixture(scope="module")
def imported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An imported folder holding a clip of three joined scenes (and an image that passes through)."""
    root = tmp_path_factory.mktemp("scenes")
    three_scene_clip(root / "src" / "three.mp4", LENGTHS)
    (root / "src" / "three.txt").write_text("three shots")
    still_image(root / "src" / "still.png")
    (root / "src" / "still.txt").write_text("a grey frame")
    return import_media(root / "src", root / "imported", engine=LocalEngine(1)).data_txt


def test_three_joined_scenes_give_three_cuts(imported: Path) -> None:
    spans = detect_scenes(str(imported.parent.parent / "src" / "three.mp4"))
    assert len(spans) == 3
    for (start, end), want in zip(spans, [(0, 20), (20, 45), (45, 75)], strict=True):
        assert abs(start - want[0]) <= 1 and abs(end - want[1]) <= 1


def test_split_scenes_writes_cut_records_on_the_original_file(imported: Path, tmp_path: Path) -> None:
    result = split_scenes(imported, tmp_path / "out", engine=LocalEngine(1))
    records = json.loads(result.annotations[0].read_text())
    assert [r["path"] for r in records] == ["still.png", "three.mp4", "three.mp4", "three.mp4"]
    scenes = records[1:]
    assert [r["cut"] for r in scenes] == [[0, 20], [20, 45], [45, 75]]
    assert [r["num_frames"] for r in scenes] == list(LENGTHS)
    assert all(r["cap"] == "three shots" for r in scenes)
    assert [r["duration"] for r in scenes] == [pytest.approx(n / 24, abs=1e-6) for n in LENGTHS]
    assert (result.records, result.written, result.worked, result.untouched) == (2, 4, 1, 1)
    report = validate_data(result.data_txt, probe=True, workers=1)
    # scenes of one file share its path with other cuts: not duplicates
    assert report.errors == 0 and list(report.findings()) == []
    again = split_scenes(imported, tmp_path / "out", engine=LocalEngine(1))
    assert (again.worked, again.reused) == (0, 1)


def test_extract_writes_one_clip_per_scene(imported: Path, tmp_path: Path) -> None:
    import decord

    result = split_scenes(imported, tmp_path / "out", extract=True, min_seconds=0.9, engine=LocalEngine(1))
    lines = result.data_txt.read_text().splitlines()
    assert lines[-1] == f"{tmp_path / 'out' / 'clips'},annotations/media-clips.json"
    clips = json.loads((tmp_path / "out" / "annotations" / "media-clips.json").read_text())
    assert [c["path"] for c in clips] == ["three/scene-000.mp4", "three/scene-001.mp4"]  # 20 frames < 0.9 s dropped
    for clip, frames in zip(clips, LENGTHS[1:], strict=True):
        assert "cut" not in clip and clip["num_frames"] == frames
        assert len(decord.VideoReader(str(tmp_path / "out" / "clips" / clip["path"]))) == frames
    report = validate_data(result.data_txt, probe=True, workers=1)
    assert report.errors == 0, [f.short() for f in report.findings()]


def test_shape_scenes_clips_splits_and_drops() -> None:
    assert shape_scenes([(0, 10), (10, 100)], (5, 90), 10.0) == [(5, 10), (10, 90)]
    assert shape_scenes([(0, 100)], (0, 100), 10.0, max_seconds=3) == [(0, 25), (25, 50), (50, 75), (75, 100)]
    assert shape_scenes([(0, 4), (4, 40)], (0, 40), 10.0, min_seconds=0.5) == [(4, 40)]


def test_bad_scene_options_are_usage_errors(imported: Path, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"--max-seconds 1\.0 must be more than --min-seconds 2\.0"):
        split_scenes(imported, tmp_path / "o", min_seconds=2.0, max_seconds=1.0)
