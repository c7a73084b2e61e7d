"""Plain helpers of the data tests (``tests.unit.data.data_helpers``): annotation files and small media."""

from __future__ import annotations

import json
import pickle
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np


def write_annotations(folder: Path, records: list[Any], name: str = "anno.json") -> Path:
    """Write ``records`` in the format given by ``name``'s suffix (.json, .jsonl, .pkl, .parquet)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    if name.endswith(".jsonl"):
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
    elif name.endswith(".pkl"):
        path.write_bytes(pickle.dumps(records))
    elif name.endswith(".parquet"):
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_struct_array(pa.array(records)), path)  # keys of every row
    else:
        path.write_text(json.dumps(records))
    return path


def write_video(path: Path, frames: int, fps: float = 8, size: tuple[int, int] = (24, 32), *,
                faststart: bool = False) -> Path:
    """A small H.264 mp4 of ``frames`` frames (0 gives a file with a video stream but no frame)."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    height, width = size
    options = {"movflags": "faststart"} if faststart else {}
    with av.open(str(path), "w", format="mp4", options=options) as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        if frames == 0:
            container.start_encoding()
        rng = np.random.default_rng(0)
        for _ in range(frames):
            frame = av.VideoFrame.from_ndarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_image(path: Path, size: tuple[int, int] = (24, 32)) -> Path:
    """A small PNG/JPEG (by suffix) of ``size`` = (height, width)."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((*size, 3), dtype=np.uint8)).save(path)
    return path
