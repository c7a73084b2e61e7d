"""Read short videos and images back (for grids, evaluation, trackers and tests) with PyAV and Pillow."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def read_video_frames(path: Path) -> np.ndarray:
    """All frames of ``path`` as ``T x H x W x 3`` uint8 RGB."""
    import av

    with av.open(str(path)) as container:
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
    if not frames:
        raise ValueError(f"{path} has no decodable video frames")
    return np.stack(frames)


IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg"})
"""Still-image files a sample (or a dataset image) can be; anything else is read as a video."""


def spread_indices(total: int, max_frames: int) -> np.ndarray:
    """At most ``max_frames`` distinct frame positions spread evenly over ``total`` frames (first and last kept)."""
    return np.unique(np.linspace(0, total - 1, min(total, max_frames)).round().astype(np.int64))


def read_spread_frames(path: Path, max_frames: int | None = None) -> tuple[np.ndarray, np.ndarray, int]:
    """Up to ``max_frames`` (all when None) evenly spread frames of a video (PyAV) or an image (Pillow).

    Returns ``(frames, indices, total)``: ``K x H x W x 3`` uint8 RGB frames, their positions in the
    clip and the clip's frame count. Every frame is decoded but only the picked ones are converted to
    RGB, which is most of the cost of reading a clip.
    """
    path = Path(path)
    if path.suffix.lower() in IMAGE_SUFFIXES:
        from PIL import Image

        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))[None], np.zeros(1, dtype=np.int64), 1
    import av

    with av.open(str(path)) as container:
        decoded = list(container.decode(video=0))
        if not decoded:
            raise ValueError(f"{path} has no decodable video frames")
        picks = spread_indices(len(decoded), max_frames or len(decoded))
        frames = np.stack([decoded[int(i)].to_ndarray(format="rgb24") for i in picks])
    return frames, picks, len(decoded)
