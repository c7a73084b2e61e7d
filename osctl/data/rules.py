"""Pure frame and resolution rules of Open-Sora-Plan v1.3 (reference §2-3), vectorised with numpy.

Every function here is a pure function of its arguments: no file access, no global RNG, the same
result on every rank. Array functions take and return numpy arrays (one element per record) so a
million records are handled in milliseconds; the per-record helpers (:func:`candidate_indices`,
:func:`build_frame_indices`, :func:`sample_frame_indices`) reproduce the reference element by element.

Frames (a video with frame rate ``fps``, usable span ``span`` frames starting at ``start``):

- resampling interval ``1`` when ``|fps - train_fps| < 0.1``, else ``fps / train_fps``;
  candidates are ``floor(start + k * interval) < start + span`` exactly as ``numpy.arange`` makes them
  (:func:`count_candidates` gives their number without building them);
- too long: ``span > too_long_factor * num_frames * fps / train_fps * speed_factor``;
- short: fewer candidates than ``num_frames``; dropped with probability ``drop_short_ratio`` using a
  uniform number drawn per record position from ``numpy.random.default_rng(seed)``;
- snap (:func:`snap_frame_count`): the largest ``y <= min(candidates, num_frames)`` with
  ``y >= min_frames``, ``(y - 1) % stride_t == 0`` and latent length ``(y - 1) / stride_t + 1`` divisible
  by ``sp_size``, where ``stride_t`` is the autoencoder's temporal stride (4 for WF-VAE, from the recipe's
  :class:`~osctl.geometry.LatentGeometry`); none -> too short. Images are 1-frame samples.

Resolution (``h x w`` = the crop box when a crop is present, else the annotation resolution):

- ``force``: keep when ``h / w`` lies in ``[a / max_aspect, a * max_aspect]`` with
  ``a = max_height / max_width``; every sample is ``max_height x max_width``;
- ``area``: scale by ``sqrt(max_hxw / (h w))`` when larger than ``max_hxw`` (never up), truncate,
  floor both sides to ``hw_stride``; drop a side ``<= 0``, an area below ``min_hxw`` or an aspect
  outside ``[1 / max_aspect, max_aspect]``;
- ``absolute`` (seed Case 3): fit inside ``max_height x max_width`` keeping the aspect (never up,
  integer arithmetic), floor to ``hw_stride``; drop a side ``<= 0``, anything below
  ``min_height x min_width`` or an aspect outside the bound.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np

REFERENCE_MIN_FRAMES = 29
"""The reference's hard-coded minimum usable frame count (``find_closest_y``)."""


@dataclass(frozen=True)
class FrameRules:
    """The frame settings of a build (recipe ``data`` section plus ``parallel.sp_size``; the autoencoder's
    temporal stride comes with the build's latent geometry)."""

    num_frames: int = 93
    train_fps: float = 24.0
    speed_factor: float = 1.0
    drop_short_ratio: float = 1.0
    min_frames: int = REFERENCE_MIN_FRAMES
    too_long_factor: float = 5.0
    sp_size: int = 1
    default_fps: float | None = None
    seed: int = 42


@dataclass(frozen=True)
class ResolutionRules:
    """The resolution settings of a build (recipe ``data`` section)."""

    mode: str = "area"
    max_height: int | None = None
    max_width: int | None = None
    min_height: int | None = None
    min_width: int | None = None
    max_hxw: int | None = None
    min_hxw: int | None = None
    hw_stride: int = 32
    max_aspect: float = 2.0
    crop_before_sizing: bool = True


# ---------------------------------------------------------------------------------------------- frames


def resample_interval(fps: np.ndarray | float, train_fps: float) -> np.ndarray:
    """Source frames per training frame: 1 when fps is within 0.1 of train_fps, else fps / train_fps."""
    fps = np.asarray(fps, dtype=np.float64)
    return np.where(np.abs(fps - train_fps) < 0.1, 1.0, fps / train_fps)


def count_candidates(start: np.ndarray, span: np.ndarray, interval: np.ndarray) -> np.ndarray:
    """Number of resampled candidate frames, equal to ``len(candidate_indices(...))`` element by element.

    ``numpy.arange(start, start + span, interval)`` has ``ceil(span / interval)`` elements, the i-th
    being ``start + i * ((start + interval) - start)``; after truncation the last one can reach
    ``start + span`` through rounding and is then filtered out. This reproduces both steps exactly.
    """
    start = np.asarray(start, dtype=np.float64)
    span = np.asarray(span, dtype=np.float64)
    interval = np.asarray(interval, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        length = np.ceil(span / interval)
        length = np.where(np.isfinite(length) & (length > 0), length, 0.0)
        delta = (start + interval) - start
        last = np.trunc(start + (length - 1) * delta)
        overshoot = (length >= 2) & (last >= start + span)
    return (length - overshoot).astype(np.int64)


def candidate_indices(start: int, span: int, fps: float, train_fps: float) -> np.ndarray:
    """The resampled source frame indices of one video (reference §2.1), as ``int64``."""
    interval = 1.0 if abs(fps - train_fps) < 0.1 else fps / train_fps
    indices = np.arange(start, start + span, interval).astype(np.int64)
    return indices[indices < start + span]


def snap_frame_count(count: np.ndarray | int, *, stride_t: int, min_frames: int = REFERENCE_MIN_FRAMES,
                     sp_size: int = 1) -> np.ndarray:
    """Largest legal frame count ``<= count`` (``k x stride_t + 1``, latent length divisible by sp_size,
    ``>= min_frames``); -1 if none. ``stride_t``: the autoencoder's temporal stride."""
    count = np.asarray(count, dtype=np.int64)
    latent = np.where(count >= 1, (count - 1) // stride_t + 1, 0)
    latent = latent // sp_size * sp_size
    frames = (latent - 1) * stride_t + 1
    ok = (count >= min_frames) & (latent >= 1) & (frames >= min_frames)
    return np.where(ok, frames, -1)


def too_long_mask(span: np.ndarray, fps: np.ndarray, rules: FrameRules) -> np.ndarray:
    """Videos longer than ``too_long_factor`` times the source span one sample needs."""
    need = rules.num_frames * np.asarray(fps, dtype=np.float64) / rules.train_fps * rules.speed_factor
    return np.asarray(span, dtype=np.float64) > rules.too_long_factor * need


def short_drop_draws(n_records: int, seed: int) -> np.ndarray:
    """One uniform number in [0, 1) per record position, the same on every rank for a given seed."""
    return np.random.default_rng(seed).random(n_records)


def temporal_crop_begins(n_candidates: np.ndarray, num_frames: int, seed: int | random.Random,
                         *, reference_window: bool = True) -> np.ndarray:
    """Build-time start of the temporal crop for each video, -1 where no crop is needed.

    Draws with Python's ``random`` in record order, one ``randint`` per video with more candidates than
    ``num_frames``: ``randint(0, max(0, n - num_frames - 1))`` as the reference's ``TemporalRandomCrop``
    does (its last window is never chosen); ``reference_window=False`` allows every window.
    """
    rng = seed if isinstance(seed, random.Random) else random.Random(seed)
    counts = np.asarray(n_candidates, dtype=np.int64)
    begins = np.full(counts.shape, -1, dtype=np.int64)
    extra = 1 if reference_window else 0
    for i in np.flatnonzero(counts > num_frames):
        begins[i] = rng.randint(0, max(0, int(counts[i]) - num_frames - extra))
    return begins


def build_frame_indices(start: int, span: int, fps: float, train_fps: float, crop_begin: int,
                        frames: int) -> np.ndarray:
    """Build-time frame indices of one kept video: ``candidates[b : b + frames]``, ``b = max(crop_begin, 0)``."""
    candidates = candidate_indices(start, span, fps, train_fps)
    begin = max(int(crop_begin), 0)
    return candidates[begin:begin + int(frames)]


class FrameCountError(ValueError):
    """Read-time sampling cannot produce the frame count the sample's bucket was built for."""


def sample_frame_indices(fps: float, start: int, span: int, *, num_frames: int, train_fps: float,
                         expected_frames: int, rng: random.Random, stride_t: int, speed_factor: float = 1.0,
                         sp_size: int = 1, min_frames: int = REFERENCE_MIN_FRAMES,
                         drop_short_ratio: float = 1.0, reference_quirks: bool = False) -> np.ndarray:
    """Source frame indices to decode for one video sample at read time (reference ``get_actual_frame``).

    Steps: resample to ``train_fps``; when ``speed_factor > 1`` and there are more candidates than
    ``num_frames``, keep ``int(n / s)`` evenly spaced ones with ``s = min(speed_factor, n / num_frames)``;
    crop a random window of ``num_frames`` (``rng``); snap to the legal count (``stride_t``: the autoencoder's
    temporal stride).

    With ``reference_quirks=True`` the reference is reproduced exactly, including two defects:
    ``int(n / s)`` can round down to ``num_frames - 1`` (then the snapped count differs from the
    bucket and :class:`FrameCountError` is raised, as the reference raises ValueError), and the last
    crop window is never drawn. By default osctl keeps at least ``num_frames`` frames after the
    speed-up and draws among all windows, so the count always equals ``expected_frames``.
    """
    candidates = candidate_indices(start, span, fps, train_fps)
    count = len(candidates)
    ratio = count / num_frames
    if speed_factor > 1 and ratio > 1:
        factor = min(speed_factor, ratio)
        target = int(count / factor)
        if not reference_quirks:
            target = max(target, num_frames)
        candidates = candidates[np.linspace(0, count - 1, target, dtype=int)]
    if len(candidates) > num_frames:
        last = len(candidates) - num_frames - (1 if reference_quirks else 0)
        begin = rng.randint(0, max(0, last))
        candidates = candidates[begin:begin + num_frames]
    frames = int(snap_frame_count(len(candidates), min_frames=min_frames, sp_size=sp_size, stride_t=stride_t))
    if frames == -1:
        raise FrameCountError(f"only {len(candidates)} usable frames; at least {min_frames} are needed")
    candidates = candidates[:frames]
    if frames != expected_frames:
        raise FrameCountError(f"read-time sampling gives {frames} frames but the sample was bucketed with {expected_frames}")
    if frames < num_frames and drop_short_ratio >= 1:
        raise FrameCountError(f"{frames} frames is shorter than num_frames={num_frames} while drop_short_ratio is 1")
    return candidates


# ------------------------------------------------------------------------------------------ resolution


def aspect_ok(h: np.ndarray, w: np.ndarray, low: float, high: float) -> np.ndarray:
    """``low <= h / w <= high`` (False where w is 0)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.asarray(h, dtype=np.float64) / np.asarray(w, dtype=np.float64)
        return (ratio <= high) & (ratio >= low)


def size_force(h: np.ndarray, w: np.ndarray, rules: ResolutionRules) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Force mode: (H, W, keep) with every kept sample exactly ``max_height x max_width``."""
    assert rules.max_height is not None and rules.max_width is not None
    a = rules.max_height / rules.max_width
    keep = aspect_ok(h, w, 1 / rules.max_aspect * a, rules.max_aspect * a)
    shape = np.shape(h)
    return np.full(shape, rules.max_height, np.int64), np.full(shape, rules.max_width, np.int64), keep


def size_area(h: np.ndarray, w: np.ndarray, rules: ResolutionRules) -> tuple[np.ndarray, np.ndarray]:
    """Area mode target size (before the drop checks): area-bounded downscale then stride flooring."""
    assert rules.max_hxw is not None
    h = np.asarray(h, dtype=np.int64)
    w = np.asarray(w, dtype=np.int64)
    area = h * w
    big = area > rules.max_hxw
    with np.errstate(divide="ignore", invalid="ignore"):
        scale = np.sqrt(rules.max_hxw / np.where(big, area, 1))
        h2 = np.where(big, np.trunc(h * scale), h).astype(np.int64)
        w2 = np.where(big, np.trunc(w * scale), w).astype(np.int64)
    stride = rules.hw_stride
    return h2 // stride * stride, w2 // stride * stride


def size_absolute(h: np.ndarray, w: np.ndarray, rules: ResolutionRules) -> tuple[np.ndarray, np.ndarray]:
    """Absolute mode target size: fit inside the max box keeping the aspect (never up), floor to stride."""
    assert rules.max_height is not None and rules.max_width is not None
    h = np.asarray(h, dtype=np.int64)
    w = np.asarray(w, dtype=np.int64)
    mh, mw = rules.max_height, rules.max_width
    safe_h = np.maximum(h, 1)
    safe_w = np.maximum(w, 1)
    over = (h > mh) | (w > mw)
    height_bound = h * mw > w * mh  # relatively taller than the box: height hits the limit first
    h2 = np.where(over, np.where(height_bound, mh, h * mw // safe_w), h)
    w2 = np.where(over, np.where(height_bound, w * mh // safe_h, mw), w)
    stride = rules.hw_stride
    return h2 // stride * stride, w2 // stride * stride
