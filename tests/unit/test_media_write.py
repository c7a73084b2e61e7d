"""Media writers: a failed encode leaves neither a half-written file nor a temporary one; writes stay in root."""

from __future__ import annotations

import numpy as np
import pytest

from osctl.errors import UsageError
from osctl.media.read import read_spread_frames
from osctl.media.write import write_gif, write_image, write_video


def _frames(t: int = 3) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 255, (t, 16, 16, 3), dtype=np.uint8)


def test_written_files_read_back(tmp_path):
    video = write_video(tmp_path / "a.mp4", _frames(), 8, root=tmp_path)
    assert read_spread_frames(video)[0].shape[1:] == (16, 16, 3)
    image = write_image(tmp_path / "a.png", _frames()[0])
    assert np.array_equal(read_spread_frames(image)[0][0], _frames()[0])
    write_image(tmp_path / "a.jpg", _frames()[0])
    write_gif(tmp_path / "a.gif", _frames(), 8)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.gif", "a.jpg", "a.mp4", "a.png"]


def test_failed_encode_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    import av

    path = write_video(tmp_path / "a.mp4", _frames(), 8)
    before = path.read_bytes()
    real = av.VideoFrame

    class FailsLate:  # the encoder has written packets by then: an interrupted run in the middle of a video
        calls = 0

        @staticmethod
        def from_ndarray(frame, format):
            FailsLate.calls += 1
            if FailsLate.calls == 70:
                raise KeyboardInterrupt
            return real.from_ndarray(frame, format=format)

    monkeypatch.setattr(av, "VideoFrame", FailsLate)
    with pytest.raises(KeyboardInterrupt):
        write_video(path, _frames(80), 8)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["a.mp4"]


def test_writes_stay_inside_the_chosen_folder(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(UsageError, match="outside the output folder"):
        write_image(out / ".." / "escape.png", _frames()[0], root=out)
    assert not (tmp_path / "escape.png").exists()
