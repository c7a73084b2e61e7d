"""Read whole short videos back (for grids, evaluation and tests) with PyAV."""

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
