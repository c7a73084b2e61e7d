"""The clip a captioner or scorer plugin receives: one record's media, usable span and frames.

A :class:`Clip` is built from an annotation record and its DATA_ROOT. Its span is what training
would read -- ``cut`` when present, else the first ``num_frames`` frames -- and :meth:`Clip.frames`
returns evenly spread frames of that span with the record's ``crop`` applied, decoded by the training
reader (:mod:`osctl.data.stream.reader`: decord, PyAV when decord fails; Pillow for images). A plugin thus
judges exactly the pixels a model would learn from.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from osctl.data.records import KIND_IMAGE, KIND_VIDEO, media_kind
from osctl.errors import DataError

READ_TIMEOUT_S = 120.0
"""Seconds one clip's frames may take to decode before the clip is reported as hung."""


@dataclass(frozen=True)
class Clip:
    """One record's media: ``path`` (absolute), ``kind`` (``video``/``image``), span ``[start, end)``, fps, size.

    ``record`` is a copy of the annotation record (read it, do not rely on changing it).
    """

    path: str
    kind: str
    start: int
    end: int
    fps: float | None
    height: int | None
    width: int | None
    crop: tuple[int, int, int, int] | None = None
    record: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def num_frames(self) -> int:
        """Frames in the usable span (1 for an image)."""
        return self.end - self.start

    @property
    def seconds(self) -> float | None:
        """Length of the span in seconds (None for images and videos without fps)."""
        return self.num_frames / self.fps if self.kind == "video" and self.fps else None

    def indices(self, count: int | None = None) -> np.ndarray:
        """``count`` frame positions spread evenly over the span, first and last included (all when None)."""
        total = self.num_frames
        wanted = total if count is None else max(1, min(int(count), total))
        return self.start + np.unique(np.linspace(0, total - 1, wanted).round().astype(np.int64))

    def frames(self, count: int | None = None, *, indices: np.ndarray | None = None) -> np.ndarray:
        """``K x H x W x 3`` uint8 RGB frames (``count`` spread over the span, or ``indices``), crop applied.

        Raises :class:`osctl.data.stream.reader.MediaError` (a ``DataError``) when the file cannot be decoded.
        """
        from osctl.data.stream.reader import read_image, read_video

        if self.kind == "image":
            array = read_image(self.path, timeout=READ_TIMEOUT_S)
        else:
            picks = self.indices(count) if indices is None else np.asarray(indices, dtype=np.int64)
            array = read_video(self.path, picks, timeout=READ_TIMEOUT_S)
        if self.crop is not None:
            x0, x1, y0, y1 = self.crop
            array = array[:, y0:y1, x0:x1]
        return np.ascontiguousarray(array)


def _int_list(value: Any, size: int) -> tuple[int, ...] | None:
    if (isinstance(value, list | tuple) and len(value) == size
            and all(type(v) is int or (type(v) is float and v.is_integer()) for v in value)):
        return tuple(int(v) for v in value)
    return None


def _number(value: Any) -> float | None:
    return float(value) if type(value) in (int, float) and value == value else None


def clip_from_record(root: str, record: dict[str, Any]) -> Clip:
    """The :class:`Clip` of ``record`` under DATA_ROOT ``root``; :class:`DataError` when it has no usable span."""
    path = record.get("path")
    if not isinstance(path, str) or not path:
        raise DataError("the record has no `path`")
    full = os.path.normpath(os.path.join(root, path))
    kind = media_kind(full)
    resolution = record.get("resolution") if isinstance(record.get("resolution"), dict) else {}
    height, width = _number(resolution.get("height")), _number(resolution.get("width"))
    crop = _int_list(record.get("crop"), 4)
    common = {"height": None if height is None else int(height), "width": None if width is None else int(width),
              "crop": crop, "record": dict(record)}
    if kind == KIND_IMAGE:
        return Clip(full, "image", 0, 1, None, **common)  # type: ignore[arg-type]
    if kind != KIND_VIDEO:
        raise DataError(f"{path} has an extension that is neither a video nor an image one")
    cut = _int_list(record.get("cut"), 2)
    start = cut[0] if cut is not None else 0
    frames = _number(record.get("num_frames"))
    if frames is not None and frames >= 1:
        end = start + int(frames)
    elif cut is not None:
        end = cut[1]
    else:
        raise DataError(f"{path} has no `num_frames`; run `osctl data import` on it first")
    if start < 0 or end <= start:
        raise DataError(f"{path} has an empty span [{start}, {end})")
    return Clip(full, "video", start, end, _number(record.get("fps")), **common)  # type: ignore[arg-type]
