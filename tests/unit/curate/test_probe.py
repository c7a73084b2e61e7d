"""Probing one media file for `osctl data import`: the facts of good files, a reason for every bad one."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from osctl.curate.probe import MediaProbe, probe_file
from tests.curate_helpers import exif_image, noise_clip, write_clip
from tests.unit.data.pipeline_helpers import coded_video, still_image


def test_video_facts_match_the_file(tmp_path: Path) -> None:
    probe = probe_file(str(coded_video(tmp_path / "a.mp4", 9, fps=12, size=(48, 64))))
    assert probe.ok and probe.warnings == ()
    assert (probe.kind, probe.height, probe.width, probe.num_frames, probe.codec) == ("video", 48, 64, 9, "h264")
    assert probe.fps == pytest.approx(12.0, abs=1e-6) and probe.duration == pytest.approx(0.75, abs=1e-3)
    assert MediaProbe.from_json(probe.to_json()) == probe


def test_image_facts(tmp_path: Path) -> None:
    probe = probe_file(str(still_image(tmp_path / "a.png", size=(30, 50))))
    assert probe.ok and (probe.kind, probe.height, probe.width, probe.codec) == ("image", 30, 50, "png")


def test_unusable_files_are_reported_with_their_reason(tmp_path: Path) -> None:
    (tmp_path / "empty.mp4").write_bytes(b"")
    (tmp_path / "text.mp4").write_text("not a video")
    whole = noise_clip(tmp_path / "whole.mp4", frames=20, faststart=True).read_bytes()
    (tmp_path / "cut_short.mp4").write_bytes(whole[: len(whole) // 2])  # index first, frames cut off
    late_index = noise_clip(tmp_path / "late.mp4", frames=20).read_bytes()
    (tmp_path / "no_index.mp4").write_bytes(late_index[: len(late_index) // 2])  # index at the end, cut off
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    codes = {name: probe_file(str(tmp_path / name)).error for name in
             ("empty.mp4", "text.mp4", "cut_short.mp4", "no_index.mp4", "empty.png", "broken.png")}
    assert {name: error[0] for name, error in codes.items()} == {
        "empty.mp4": "empty_file", "text.mp4": "unreadable", "cut_short.mp4": "truncated",
        "no_index.mp4": "truncated", "empty.png": "empty_file", "broken.png": "unreadable"}
    assert "only " in codes["cut_short.mp4"][1] and "of 20 frames" in codes["cut_short.mp4"][1]
    assert "copy it again" in codes["cut_short.mp4"][1]


def test_variable_frame_rate_is_a_warning_and_fps_the_average(tmp_path: Path) -> None:
    frames = np.zeros((12, 32, 32, 3), dtype=np.uint8) + np.arange(12, dtype=np.uint8)[:, None, None, None] * 20
    pts = [0, 40, 80, 120, 160, 200, 300, 400, 500, 600, 700, 800]  # 25 fps, then 10 fps
    import decord

    path = write_clip(tmp_path / "vfr.mp4", frames, 25, pts_ms=pts)
    probe = probe_file(str(path))
    assert probe.ok and probe.num_frames == 12
    assert [code for code, _ in probe.warnings] == ["variable_frame_rate"]
    assert "40.0 to 100.0 ms" in probe.warnings[0][1]
    assert 10 < probe.fps < 25 and probe.fps == pytest.approx(decord.VideoReader(str(path)).get_avg_fps(), abs=1e-3)


@pytest.mark.parametrize(("degrees", "size"), [(90, (64, 32)), (180, (32, 64))])
def test_display_rotation_gives_the_upright_size_and_a_warning(tmp_path: Path, degrees: int,
                                                               size: tuple[int, int]) -> None:
    import decord

    frames = np.zeros((5, 32, 64, 3), dtype=np.uint8)
    path = write_clip(tmp_path / "turned.mp4", frames, 24, rotation=degrees)
    probe = probe_file(str(path))
    assert probe.ok and (probe.height, probe.width) == size
    assert tuple(decord.VideoReader(str(path))[0].shape[:2]) == size  # what the training reader decodes
    assert [code for code, _ in probe.warnings] == ["rotated"] and f"turned {degrees}°" in probe.warnings[0][1]


def test_exif_turned_image_is_left_out_with_the_fix(tmp_path: Path) -> None:
    probe = probe_file(str(exif_image(tmp_path / "phone.jpg", 6)))
    assert probe.error is not None and probe.error[0] == "exif_rotated"
    assert "turned 90°" in probe.error[1] and "exif_transpose" in probe.error[1]
    assert probe_file(str(exif_image(tmp_path / "upright.jpg", 1))).ok
