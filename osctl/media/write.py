"""Write generated frames to MP4 (PyAV, H.264), PNG/JPG and animated GIF, atomically."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np


def write_video(path: Path, frames: np.ndarray, fps: float, *, crf: int = 18) -> Path:
    """Write ``T x H x W x 3`` uint8 frames as H.264 MP4 (yuv420p; odd sizes are padded by one pixel)."""
    import av

    frames = _even(np.ascontiguousarray(frames))
    tmp = path.with_name(f".{path.name}.tmp")
    with av.open(str(tmp), mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=_fps_fraction(fps))
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": str(crf), "preset": "medium"}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    os.replace(tmp, path)
    return path


def write_image(path: Path, frame: np.ndarray) -> Path:
    """Write one ``H x W x 3`` uint8 frame as PNG or JPG (by suffix)."""
    from PIL import Image

    tmp = path.with_name(f".{path.name}.tmp{path.suffix}")
    Image.fromarray(frame).save(tmp, quality=95)
    os.replace(tmp, path)
    return path


def write_gif(path: Path, frames: np.ndarray, fps: float) -> Path:
    """Write ``T x H x W x 3`` uint8 frames as a looping animated GIF."""
    from PIL import Image

    images = [Image.fromarray(f) for f in frames]
    tmp = path.with_name(f".{path.name}.tmp.gif")
    images[0].save(tmp, save_all=True, append_images=images[1:], duration=max(1, round(1000 / fps)), loop=0)
    os.replace(tmp, path)
    return path


def grid(videos: list[np.ndarray], pad: int = 1) -> np.ndarray:
    """Tile ``T x H x W x 3`` videos (same size) into one ``ceil(sqrt(n))``-column grid video."""
    n = len(videos)
    cols = int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / cols))
    t = max(v.shape[0] for v in videos)
    h, w = videos[0].shape[1:3]
    canvas = np.zeros((t, rows * (h + pad) + pad, cols * (w + pad) + pad, 3), dtype=np.uint8)
    for i, video in enumerate(videos):
        r, c = divmod(i, cols)
        y, x = pad + r * (h + pad), pad + c * (w + pad)
        canvas[: video.shape[0], y : y + h, x : x + w] = video[:, :h, :w]
        if video.shape[0] < t:  # hold the last frame of shorter clips
            canvas[video.shape[0]:, y : y + h, x : x + w] = video[-1, :h, :w]
    return canvas


def _even(frames: np.ndarray) -> np.ndarray:
    _, h, w, _ = frames.shape
    if h % 2 or w % 2:
        frames = np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")
    return frames


def _fps_fraction(fps: float):
    from fractions import Fraction

    return Fraction(fps).limit_denominator(1001)
