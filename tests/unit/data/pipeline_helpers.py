"""Helpers of the training-pipeline tests: videos whose frames tell their index, and small real indexes."""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from osctl.data.bucket import BucketSettings
from osctl.data.build import IndexTarget, build_index
from osctl.data.index import SampleIndex, open_index
from osctl.data.rules import FrameRules, ResolutionRules
from tests.geometry_helpers import v13_with

STEP = 3
BASE = 20


def frame_value(i: int) -> int:
    """Grey level of frame ``i`` in :func:`coded_video` (decoders are off by at most 1 on flat frames)."""
    return BASE + STEP * i


def decode_frame_ids(values: np.ndarray) -> list[int]:
    """Frame indices from the grey level (0..255) of each frame of a coded video."""
    return [round((float(v) - BASE) / STEP) for v in values]


def coded_video(path: Path, frames: int, fps: float = 24, size: tuple[int, int] = (64, 64)) -> Path:
    """An H.264 mp4 whose frame ``i`` is flat grey :func:`frame_value` (``frames`` <= 75)."""
    import av

    assert frames <= 75, "grey levels run out after 75 frames"
    path.parent.mkdir(parents=True, exist_ok=True)
    height, width = size
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"crf": "4"}
        for i in range(frames):
            frame = np.full((height, width, 3), frame_value(i), dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def still_image(path: Path, size: tuple[int, int] = (64, 64), value: int = 128) -> Path:
    """A flat PNG/JPEG (by suffix) of ``size`` = (height, width)."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((*size, 3), value, dtype=np.uint8)).save(path)
    return path


def settings(*, num_frames: int = 9, train_fps: float = 12, min_frames: int = 5, mode: str = "area",
             max_hxw: int | None = 1024, hw_stride: int = 16, max_height: int | None = None,
             max_width: int | None = None, stride_t: int = 4, seed: int = 42, batch: int = 1) -> BucketSettings:
    """Bucket settings for small test clips (every bucket kept, short clips kept)."""
    from osctl.parallel.layout import ParallelLayout

    return BucketSettings(
        frames=FrameRules(num_frames=num_frames, train_fps=train_fps, drop_short_ratio=0.0, min_frames=min_frames,
                          seed=seed),
        resolution=ResolutionRules(mode=mode, max_hxw=max_hxw, min_hxw=(max_hxw // 4 if max_hxw else None),
                                   hw_stride=hw_stride, max_height=max_height, max_width=max_width),
        min_bucket_batches=0, group_data=True, layout=ParallelLayout(stream_batch=batch),
        geometry=v13_with(stride_t=stride_t))


def make_index(tmp: Path, records: list[dict[str, Any]], bucket_settings: BucketSettings) -> SampleIndex:
    """Write ``records`` (paths relative to ``tmp / "media"``), build the index like ``osctl data bucket``, open it."""
    anno = tmp / "anno.json"
    anno.write_text(json.dumps(records))
    data_txt = tmp / "data.txt"
    data_txt.write_text(f"{tmp / 'media'},{anno}\n")
    out = tmp / "index"
    build_index(data_txt, IndexTarget(bucket_settings, out))
    return open_index(out, data_txt=data_txt, settings=bucket_settings)


def video_record(name: str, frames: int, fps: float, size: tuple[int, int], **extra: Any) -> dict[str, Any]:
    """An annotation record of a coded video."""
    return {"path": name, "cap": extra.pop("cap", f"clip {name}"), "num_frames": frames, "fps": fps,
            "resolution": {"height": size[0], "width": size[1]}, **extra}


def image_record(name: str, size: tuple[int, int], **extra: Any) -> dict[str, Any]:
    """An annotation record of a still image."""
    return {"path": name, "cap": extra.pop("cap", f"image {name}"), "resolution": {"height": size[0], "width": size[1]},
            **extra}
