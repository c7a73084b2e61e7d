"""Media for the curate tests: a shapes folder without annotations, joined scenes, and broken or odd files."""

from __future__ import annotations

import json
import pickle
import shutil
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pytest

SCENE_COLOURS = ((200, 30, 30), (30, 190, 40), (40, 60, 220), (230, 220, 40))


def ensure_curation_plugins(monkeypatch: pytest.MonkeyPatch, root: Path) -> None:
    """Make the built-in curation plugins visible to the registry (until osctl is reinstalled with their entry point)."""
    from osctl.plugin_manager import find_plugins, reset_caches
    from tests.plugin_helpers import install_fake_distribution

    if not any(p.name == "osctl.curation" for p in find_plugins()):
        install_fake_distribution(monkeypatch, root, "osctl-curation-dev",
                                  {"osctl.curation": "osctl_builtin.curation.register"})
    reset_caches()


def curation_registry() -> Any:
    """A registry holding the built-in curation plugins, whether or not osctl was reinstalled with their entry point."""
    from osctl.plugin_manager import build_registry, find_plugins, new_plugin_manager
    from osctl_builtin.curation import register

    installed = any(p.name == "osctl.curation" for p in find_plugins())
    return build_registry(new_plugin_manager([] if installed else [("osctl.curation", register)]))


def write_clip(path: Path, frames: np.ndarray, fps: float = 24, *, rotation: int = 0, faststart: bool = False,
               pts_ms: list[int] | None = None) -> Path:
    """Encode ``T x H x W x 3`` uint8 frames as H.264 mp4 (optionally with a display rotation, or timestamps in ms)."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    options = {"movflags": "faststart"} if faststart else {}
    with av.open(str(path), "w", format="mp4", options=options) as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        stream.options = {"crf": "10"}
        if rotation:
            stream.set_display_rotation(rotation)
        if pts_ms is not None:
            stream.codec_context.time_base = Fraction(1, 1000)
        for k, frame in enumerate(frames):
            video_frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
            if pts_ms is not None:
                video_frame.pts, video_frame.time_base = pts_ms[k], Fraction(1, 1000)
            for packet in stream.encode(video_frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def scene_frames(lengths: tuple[int, ...] = (20, 25, 30), size: tuple[int, int] = (64, 64)) -> np.ndarray:
    """Frames of shots that look nothing alike (a flat colour each, with a small moving white bar)."""
    height, width = size
    shots = []
    for shot, length in enumerate(lengths):
        frames = np.empty((length, height, width, 3), dtype=np.uint8)
        frames[:] = SCENE_COLOURS[shot % len(SCENE_COLOURS)]
        for k in range(length):
            x = k % (width - 8)
            frames[k, height // 3: height // 3 + 8, x: x + 8] = 255
        shots.append(frames)
    return np.concatenate(shots)


def three_scene_clip(path: Path, lengths: tuple[int, ...] = (20, 25, 30), fps: float = 24) -> Path:
    """One clip joining ``len(lengths)`` visibly different scenes (cuts at the running sums of ``lengths``)."""
    return write_clip(path, scene_frames(lengths), fps)


def noise_clip(path: Path, frames: int = 12, size: tuple[int, int] = (48, 64), fps: float = 12, seed: int = 0,
               faststart: bool = False) -> Path:
    """A clip of random pixels (large packets: cutting its file short loses frames)."""
    rng = np.random.default_rng(seed)
    return write_clip(path, rng.integers(0, 256, (frames, *size, 3), dtype=np.uint8), fps, faststart=faststart)


def exif_image(path: Path, orientation: int, size: tuple[int, int] = (40, 60)) -> Path:
    """A JPEG whose EXIF says it is shown turned (orientation 6 = 90°)."""
    from PIL import Image

    image = Image.fromarray(np.full((*size, 3), 90, dtype=np.uint8))
    exif = Image.Exif()
    exif[0x0112] = orientation
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, exif=exif)
    return path


def shapes_folder(tmp: Path, *, videos: int = 6, images: int = 3, seed: int = 0) -> tuple[Path, dict[str, dict[str, Any]]]:
    """A shapes dataset with its annotations replaced by ``NAME.txt`` captions; returns it and the original records.

    The records are keyed by the media path relative to the folder (``videos/...``, ``images/...``).
    """
    from osctl.synth.shapes import synth_shapes

    made = synth_shapes(tmp / "made", videos=videos, images=images, seed=seed)
    folder = tmp / "folder"
    shutil.copytree(made.out / "videos", folder / "videos")
    if images:
        shutil.copytree(made.out / "images", folder / "images")
    original: dict[str, dict[str, Any]] = {}
    videos_json = made.out / "annotations" / "videos.json"
    for record in json.loads(videos_json.read_text()) if videos else []:
        original[f"videos/{record['path']}"] = record
    if images:
        for record in pickle.loads((made.out / "annotations" / "images.pkl").read_bytes()):
            original[f"images/{record['path']}"] = record
    for relative, record in original.items():
        cap = record["cap"] if isinstance(record["cap"], str) else "\n".join(record["cap"])
        (folder / relative).with_suffix(".txt").write_text(cap + "\n", encoding="utf-8")
    return folder, original


def file_frames(record: dict[str, Any]) -> int:
    """Frames in a shapes clip's file: ``num_frames``, plus the lead-in and lead-out of a cut clip."""
    cut = record.get("cut")
    return record["num_frames"] + (cut[0] * 2 if cut else 0)


def moving_square(path: Path, *, speed: int, frames: int = 16, size: int = 64, fps: float = 24) -> Path:
    """A clip of a white square on black moving right by ``speed`` pixels per frame (0: still)."""
    video = np.zeros((frames, size, size, 3), dtype=np.uint8)
    for k in range(frames):
        x = 4 + speed * k
        video[k, 24:40, x:x + 16] = 255
    return write_clip(path, video, fps)
