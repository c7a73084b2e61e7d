"""Quality scores that need no model: ``motion`` (optical flow) and ``tech`` (sharpness), with OpenCV.

Both look at a few frames spread over the clip's usable span with its crop applied
(:meth:`osctl.curate.clip.Clip.frames`), shrunk so their short side is ``size`` pixels: the scores of
a 4K clip and of its 480p copy then agree, and a frame costs a few milliseconds.

- ``motion``: the mean magnitude of the dense optical flow (Farneback) between ``pairs`` pairs of
  consecutive frames, in **frame sides per second** (pixels moved per frame / the frame's long side x
  fps), the unit of the shapes dataset's ``motion``: a shape crossing the frame in two seconds moves
  about 0.5 where it is; averaged over all pixels a small mover scores less, a camera pan close to its
  speed. Images have no motion: no score is written for them.
- ``tech``: the variance of the Laplacian of the grey frames (a classic blur measure: out-of-focus,
  motion-blurred or upscaled footage scores low), averaged over ``frames`` frames. At the default
  size, clean footage scores in the hundreds and blurry footage below ~50; choose
  ``data.filters.min_tech`` from the scores of your own data.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import Field

from osctl.registry import ComponentConfig


class MotionConfig(ComponentConfig):
    """Options of the ``motion`` scorer (``--set motion.KEY=VALUE``)."""

    pairs: int = Field(4, ge=1, le=64, description="pairs of consecutive frames measured, spread over the clip")
    size: int = Field(128, ge=16, le=2048, description="short side (pixels) frames are shrunk to before the flow")


class TechConfig(ComponentConfig):
    """Options of the ``tech`` scorer (``--set tech.KEY=VALUE``)."""

    frames: int = Field(4, ge=1, le=64, description="frames measured, spread over the clip")
    size: int = Field(256, ge=16, le=4096, description="short side (pixels) frames are shrunk to before measuring")


def _grey(frame: np.ndarray, size: int) -> np.ndarray:
    import cv2

    height, width = frame.shape[:2]
    scale = size / min(height, width)
    grey = cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2GRAY)
    if scale < 1:
        target = (max(1, round(width * scale)), max(1, round(height * scale)))
        grey = cv2.resize(grey, target, interpolation=cv2.INTER_AREA)
    return grey


def _one_thread() -> None:
    import cv2

    cv2.setNumThreads(1)  # one worker process per core: OpenCV's own threads would only compete


class MotionScorer:
    """Mean Farneback flow speed in frame sides per second (see the module docstring)."""

    def __init__(self, config: MotionConfig) -> None:
        _one_thread()
        self.config = config

    def score(self, clip: Any) -> float | None:
        import cv2

        if clip.kind != "video" or clip.num_frames < 2:
            return None
        last_start = clip.end - 2
        starts = np.unique(np.linspace(clip.start, last_start, min(self.config.pairs, clip.num_frames - 1)).round()
                           .astype(np.int64))
        wanted = np.unique(np.concatenate([starts, starts + 1]))
        frames = clip.frames(indices=wanted)
        grey = {int(i): _grey(frame, self.config.size) for i, frame in zip(wanted, frames, strict=True)}
        speeds = []
        for start in starts.tolist():
            flow = cv2.calcOpticalFlowFarneback(grey[start], grey[start + 1], None, 0.5, 3, 15, 3, 5, 1.2, 0)
            speeds.append(float(np.sqrt((flow.astype(np.float64) ** 2).sum(axis=2)).mean()))
        side = max(grey[int(starts[0])].shape)
        per_frame = float(np.mean(speeds)) / side
        return per_frame * clip.fps if clip.fps else per_frame


class TechScorer:
    """Mean variance of the Laplacian of grey frames (see the module docstring)."""

    def __init__(self, config: TechConfig) -> None:
        _one_thread()
        self.config = config

    def score(self, clip: Any) -> float | None:
        import cv2

        frames = clip.frames(self.config.frames)
        values = [float(cv2.Laplacian(_grey(frame, self.config.size), cv2.CV_64F).var()) for frame in frames]
        return float(np.mean(values))


def build_motion_scorer(config: MotionConfig, **runtime: Any) -> MotionScorer:
    """Factory of ``motion``."""
    return MotionScorer(config)


def build_tech_scorer(config: TechConfig, **runtime: Any) -> TechScorer:
    """Factory of ``tech``."""
    return TechScorer(config)
