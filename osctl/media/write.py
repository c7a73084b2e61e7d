"""Write generated frames to MP4 (PyAV, H.264), PNG/JPG and animated GIF, atomically.

Each file is encoded under a temporary name next to it and renamed into place by
:func:`osctl.utils.atomic.atomic_file`, so a crash or an interrupted run never leaves a half-written
video; ``root`` is the output folder the caller chose (default: the file's own folder), which the
destination must not leave.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from osctl.utils.atomic import atomic_file

#: Pillow's format name for each image suffix osctl writes
_IMAGE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG"}


def write_video(path: Path, frames: np.ndarray, fps: float, *, crf: int = 18, root: Path | None = None) -> Path:
    """Write ``T x H x W x 3`` uint8 frames as H.264 MP4 (yuv420p; odd sizes are padded by one pixel)."""
    import av

    frames = _even(np.ascontiguousarray(frames))
    with atomic_file(path, root=root or path.parent) as tmp, av.open(str(tmp), mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=_fps_fraction(fps))
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": str(crf), "preset": "medium"}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_image(path: Path, frame: np.ndarray, *, root: Path | None = None) -> Path:
    """Write one ``H x W x 3`` uint8 frame as PNG or JPG (by suffix)."""
    from PIL import Image

    image_format = _IMAGE_FORMATS.get(path.suffix.lower())
    if image_format is None:
        raise ValueError(f"{path}: write_image writes {', '.join(_IMAGE_FORMATS)} files, not {path.suffix!r}")
    with atomic_file(path, root=root or path.parent) as tmp:
        Image.fromarray(frame).save(tmp, format=image_format, quality=95)
    return path


def write_gif(path: Path, frames: np.ndarray, fps: float, *, root: Path | None = None) -> Path:
    """Write ``T x H x W x 3`` uint8 frames as a looping animated GIF."""
    from PIL import Image

    images = [Image.fromarray(f) for f in frames]
    with atomic_file(path, root=root or path.parent) as tmp:
        images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:], duration=max(1, round(1000 / fps)),
                       loop=0)
    return path


GRID_BACKGROUND = (24, 24, 24)
GRID_TEXT = (235, 235, 235)
CAPTION_SIZE = 14
"""Caption font size in pixels (Pillow's built-in default font: nothing to download)."""
CAPTION_LINE = CAPTION_SIZE + 4
"""Pixels from one caption line to the next."""
CAPTION_LINES = 2
CAPTION_MIN_WIDTH = 384
"""A grid is at least this wide (cells left-aligned), so a one- or two-column grid's captions fit."""
"""Lines a caption may take above its row; a longer one is cut with "..."."""


@dataclass(frozen=True)
class GridLayout:
    """Where :func:`captioned_grid` puts things: canvas size, the enlargement factor, the cell size, the
    caption lines and their top, and the top-left corner of every cell (row r, column c)."""

    frames: int
    width: int
    height: int
    factor: int
    cell: tuple[int, int]
    captions: list[list[str]]
    caption_tops: list[int]
    row_tops: list[int]
    column_lefts: list[int]


def grid_layout(rows: list[tuple[str, list[np.ndarray | None]]], *, pad: int = 4, min_side: int = 512) -> GridLayout:
    """The layout of :func:`captioned_grid` for these rows (see there)."""
    from PIL import ImageFont

    videos = [v for _, row in rows for v in row if v is not None]
    if not videos:
        raise ValueError("a grid needs at least one video")
    cols = max(len(row) for _, row in rows)
    h = max(v.shape[1] for v in videos)
    w = max(v.shape[2] for v in videos)
    factor = max(1, min_side // max(len(rows) * h, cols * w))
    h, w = h * factor, w * factor
    width = max(pad + cols * (w + pad), CAPTION_MIN_WIDTH)  # room for the captions of a narrow grid
    font = ImageFont.load_default(size=CAPTION_SIZE)
    captions = [_wrap(caption, font, width - 2 * pad) for caption, _ in rows]
    caption_tops, row_tops = [], []
    y = pad
    for lines in captions:
        caption_tops.append(y)
        y += len(lines) * CAPTION_LINE + pad
        row_tops.append(y)
        y += h + pad
    return GridLayout(frames=max(v.shape[0] for v in videos), width=width, height=y, factor=factor, cell=(h, w),
                      captions=captions, caption_tops=caption_tops, row_tops=row_tops,
                      column_lefts=[pad + c * (w + pad) for c in range(cols)])


def captioned_grid(rows: list[tuple[str, list[np.ndarray | None]]], *, pad: int = 4,
                   min_side: int = 512) -> np.ndarray:
    """One ``T x H x W x 3`` video of rows: each row's caption, then its videos side by side in order.

    ``rows`` are ``(caption, videos)``, videos ``T x H x W x 3`` uint8 (images are ``1 x H x W x 3``);
    ``None`` leaves its cell empty, so columns line up (column k is sample k of every row). Every cell
    has the size of the largest video (smaller ones sit top-left); a clip shorter than the longest holds
    its last frame. Tiny videos are enlarged by a whole factor (nearest neighbour) until the cells fill
    ``min_side`` pixels along the grid's longer side, so a person can see a 16-pixel demo sample; the
    captions keep their size. The captions are drawn with Pillow's default font (nothing to download),
    wrapped to the grid's width (at least :data:`CAPTION_MIN_WIDTH`) in at most :data:`CAPTION_LINES` lines.
    """
    from PIL import Image, ImageDraw, ImageFont

    layout = grid_layout(rows, pad=pad, min_side=min_side)
    background = Image.new("RGB", (layout.width, layout.height), GRID_BACKGROUND)
    draw = ImageDraw.Draw(background)
    font = ImageFont.load_default(size=CAPTION_SIZE)
    for lines, top in zip(layout.captions, layout.caption_tops, strict=True):
        for i, line in enumerate(lines):
            draw.text((pad, top + i * CAPTION_LINE), line, fill=GRID_TEXT, font=font)
    t, factor = layout.frames, layout.factor
    canvas = np.repeat(np.asarray(background)[None], t, axis=0)
    for (_, row), top in zip(rows, layout.row_tops, strict=True):
        for video, left in zip(row, layout.column_lefts, strict=False):
            if video is None:
                continue
            big = video.repeat(factor, axis=1).repeat(factor, axis=2) if factor > 1 else video
            vh, vw = big.shape[1:3]
            canvas[: big.shape[0], top : top + vh, left : left + vw] = big
            if big.shape[0] < t:  # hold the last frame of shorter clips
                canvas[big.shape[0]:, top : top + vh, left : left + vw] = big[-1]
    return canvas


def _wrap(text: str, font: Any, width: int) -> list[str]:
    """``text`` in lines no wider than ``width`` pixels (word by word), at most :data:`CAPTION_LINES`;
    the last line ends with "..." when some of the text did not fit."""
    lines: list[str] = []
    words = text.split()
    while words and len(lines) < CAPTION_LINES:
        line = words.pop(0)
        while words and font.getlength(f"{line} {words[0]}") <= width:
            line = f"{line} {words.pop(0)}"
        lines.append(line)
    if words or (lines and font.getlength(lines[-1]) > width):
        last = lines[-1]
        while last and font.getlength(f"{last}...") > width:
            last = last[:-1]
        lines[-1] = f"{last.rstrip()}..."
    return lines or [""]


def _even(frames: np.ndarray) -> np.ndarray:
    _, h, w, _ = frames.shape
    if h % 2 or w % 2:
        frames = np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")
    return frames


def _fps_fraction(fps: float):
    from fractions import Fraction

    return Fraction(fps).limit_denominator(1001)
