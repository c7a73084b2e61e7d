"""``osctl data split-scenes``: find the shot changes of each video and write one record per scene.

Cuts are found with PySceneDetect's ``ContentDetector`` (a change of hue, saturation and brightness
between consecutive frames above ``threshold``; shots shorter than ``min_scene_len`` frames are merged
into their neighbour), on the whole file, then clipped to the record's usable span. Scenes shorter
than ``min_seconds`` are dropped and scenes longer than ``max_seconds`` are split into equal parts.

By default nothing is re-encoded: each scene becomes a record on the original file with
``cut: [start, end]`` (end exclusive) and ``num_frames = end - start``, the Open-Sora-Plan way of
pointing at part of a clip. Every other key is kept except the quality scores (``aesthetic``,
``tech``, ``motion``), which described the whole clip. With ``extract`` each scene is also written as
its own H.264 clip under ``OUT/clips/<record path without suffix>/scene-NNN.mp4`` (turned upright
when the source has a display rotation), and the records point at those clips instead.
Images pass through unchanged.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from osctl.curate.clip import Clip
from osctl.curate.engines import Engine
from osctl.curate.jobs import Job, JobResult, Merged, Progress, run_job, task_error
from osctl.data.records import SCORE_FIELDS
from osctl.errors import DataError, UsageError
from osctl.utils.atomic import atomic_file, ensure_inside

SCHEMA = "osctl.data.split-scenes/1"
CLIPS = "clips"


@dataclass(frozen=True)
class SceneOptions:
    """How scenes are found and shaped (see the module docstring); ``clips_root`` is set with ``extract``."""

    threshold: float = 27.0
    min_scene_len: int = 15
    min_seconds: float = 0.0
    max_seconds: float | None = None
    clips_root: str | None = None
    crf: int = 18

    def __post_init__(self) -> None:
        if not self.threshold > 0:
            raise UsageError(f"--threshold {self.threshold} must be positive (PySceneDetect's default is 27).")
        if self.min_scene_len < 1:
            raise UsageError(f"--min-scene-len {self.min_scene_len} must be at least 1 frame.")
        if self.min_seconds < 0:
            raise UsageError(f"--min-seconds {self.min_seconds} must not be negative.")
        if self.max_seconds is not None and self.max_seconds <= max(self.min_seconds, 0):
            raise UsageError(f"--max-seconds {self.max_seconds} must be more than --min-seconds {self.min_seconds}.")


def detect_scenes(path: str, *, threshold: float = 27.0, min_scene_len: int = 15) -> list[tuple[int, int]]:
    """``[start, end)`` frame spans of the shots of the video at ``path`` (the whole file when there is no cut)."""
    from scenedetect import ContentDetector, SceneManager, open_video

    try:
        video = open_video(path, backend="opencv")
    except Exception as exc:  # PySceneDetect raises OSError or its own errors for unreadable files
        raise DataError(f"PySceneDetect cannot open it ({type(exc).__name__}: {exc})") from None
    manager = SceneManager()
    manager.add_detector(ContentDetector(threshold=threshold, min_scene_len=min_scene_len))
    try:
        manager.detect_scenes(video=video)
        found = manager.get_scene_list(start_in_scene=True)
    except Exception as exc:  # OpenCV and PySceneDetect raise their own types for damaged streams
        raise DataError(f"scene detection failed ({type(exc).__name__}: {exc})") from None
    scenes = [(int(start.frame_num), int(end.frame_num)) for start, end in found]
    if not scenes:
        raise DataError("no frame could be decoded for scene detection")
    return scenes


def shape_scenes(scenes: list[tuple[int, int]], span: tuple[int, int], fps: float | None, *,
                 min_seconds: float = 0.0, max_seconds: float | None = None) -> list[tuple[int, int]]:
    """Scenes clipped to ``span``, long ones split into equal parts of at most ``max_seconds``, short ones dropped."""
    rate = fps or 0.0
    min_frames = max(1, math.ceil(min_seconds * rate - 1e-9)) if rate else 1
    max_frames = max(1, math.floor(max_seconds * rate + 1e-9)) if (rate and max_seconds) else None
    shaped: list[tuple[int, int]] = []
    for start, end in scenes:
        start, end = max(start, span[0]), min(end, span[1])
        length = end - start
        if length <= 0:
            continue
        pieces = math.ceil(length / max_frames) if max_frames else 1
        bounds = [start + round(k * length / pieces) for k in range(pieces + 1)]
        shaped.extend((a, b) for a, b in itertools.pairwise(bounds) if b - a >= min_frames)
    return shaped


def scene_task(options: SceneOptions, clip: Clip) -> dict[str, Any]:
    """The per-file work (runs on an engine's worker): the scenes of one video, extracted when asked."""
    try:
        found = detect_scenes(clip.path, threshold=options.threshold, min_scene_len=options.min_scene_len)
        scenes = shape_scenes(found, (clip.start, clip.end), clip.fps, min_seconds=options.min_seconds,
                              max_seconds=options.max_seconds)
        value: dict[str, Any] = {"scenes": [list(s) for s in scenes]}
        if options.clips_root is not None and scenes:
            value["clips"] = extract_scenes(clip, scenes, options.clips_root, crf=options.crf)
        return {"ok": value}
    except (DataError, OSError) as exc:
        return task_error(exc)


def clip_folder(clip: Clip) -> str:
    """Where the scenes of ``clip`` go, relative to the clips folder: its record's path without suffix.

    A path that is absolute or climbs out of its DATA_ROOT is replaced by the file's absolute path
    without its leading ``/``, so every scene lands inside the clips folder.
    """
    relative = os.path.normpath(str(clip.record.get("path") or ""))
    if relative in ("", ".") or os.path.isabs(relative) or relative.startswith(".."):
        relative = os.path.splitdrive(os.path.abspath(clip.path))[1].lstrip("/\\")
    return Path(relative).with_suffix("").as_posix()


def extract_scenes(clip: Clip, scenes: list[tuple[int, int]], clips_root: str, *, crf: int = 18) -> list[list[Any]]:
    """Write each scene of ``clip`` as an H.264 mp4 (one decoding pass); return ``[path, height, width]`` per scene."""
    import av

    root = Path(clips_root)
    folder = clip_folder(clip)
    written: list[list[Any]] = []
    writers: list[Any] = []
    try:
        with av.open(clip.path) as source:
            stream = source.streams.video[0]
            stream.thread_type = "AUTO"
            rate = stream.average_rate or stream.guessed_rate or 24
            scene_no = 0
            current = None
            for position, frame in enumerate(source.decode(stream)):
                while scene_no < len(scenes) and position >= scenes[scene_no][1]:
                    if current is not None:
                        current.finish()
                        current = None
                    scene_no += 1
                if scene_no >= len(scenes):
                    break
                if position >= scenes[scene_no][0]:
                    if current is None:
                        relative = f"{folder}/scene-{scene_no:03d}.mp4"
                        current = _SceneWriter(root, relative, rate, crf)
                        writers.append(current)
                        written.append([relative])
                    array = frame.to_ndarray(format="rgb24")
                    turn = round(float(getattr(frame, "rotation", 0) or 0)) % 360 // 90
                    current.add(np.rot90(array, k=turn) if turn else array)
            if current is not None:
                current.finish()
    except (av.FFmpegError, ValueError) as exc:
        for writer in writers:
            writer.abort()
        raise DataError(f"cannot extract its scenes ({type(exc).__name__}: {exc})") from None
    except BaseException:
        for writer in writers:
            writer.abort()
        raise
    if len(written) != len(scenes):
        raise DataError(f"only {len(written)} of {len(scenes)} scenes could be decoded for extraction")
    for entry, writer in zip(written, writers, strict=True):
        entry.extend([writer.height, writer.width])
    return written


class _SceneWriter:
    """One scene clip written to a temporary file and renamed into place by :meth:`finish`."""

    def __init__(self, root: Path, relative: str, rate: Any, crf: int) -> None:
        import av

        self._context = atomic_file(ensure_inside(root / relative, root.parent), root=root.parent)
        self._tmp = self._context.__enter__()
        self._container = av.open(str(self._tmp), mode="w", format="mp4")
        self._stream = self._container.add_stream("libx264", rate=rate)
        self._stream.pix_fmt = "yuv420p"
        self._stream.options = {"crf": str(crf)}
        self._open = True
        self.height = 0
        self.width = 0

    def add(self, frame: np.ndarray) -> None:
        import av

        height, width = frame.shape[:2]
        if not self.height:
            self.height, self.width = height + height % 2, width + width % 2  # yuv420p needs even sizes
            self._stream.height, self._stream.width = self.height, self.width
        if (height, width) != (self.height, self.width):
            frame = np.pad(frame, ((0, self.height - height), (0, self.width - width), (0, 0)), mode="edge")
        for packet in self._stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
            self._container.mux(packet)

    def finish(self) -> None:
        if not self._open:
            return
        for packet in self._stream.encode():
            self._container.mux(packet)
        self._container.close()
        self._open = False
        self._context.__exit__(None, None, None)

    def abort(self) -> None:
        if not self._open:
            return
        self._open = False
        with contextlib.suppress(Exception):  # closing a half-written container may fail; it is deleted anyway
            self._container.close()
        error = RuntimeError("scene extraction aborted")
        with contextlib.suppress(RuntimeError):
            self._context.__exit__(RuntimeError, error, None)


def _scene_records(record: dict[str, Any], value: dict[str, Any], clips_root: str | None) -> Merged:
    base = {k: v for k, v in record.items() if k not in SCORE_FIELDS}
    fps = record.get("fps") if type(record.get("fps")) in (int, float) else None
    out: Merged = []
    clips = value.get("clips") or [None] * len(value["scenes"])
    for (start, end), extracted in zip(value["scenes"], clips, strict=True):
        new = dict(base)
        if extracted is None:
            new["num_frames"] = end - start
            new["cut"] = [start, end]
            root = None
        else:
            relative, height, width = extracted
            new["path"] = relative
            new.pop("cut", None)
            new["num_frames"] = end - start
            new["resolution"] = {"height": height, "width": width}
            if "codec" in new:
                new["codec"] = "h264"
            root = clips_root
        if "duration" in new and fps:
            new["duration"] = round((end - start) / fps, 6)
        out.append((root, new))
    return out


def _is_video(record: dict[str, Any]) -> bool:
    from osctl.data.records import KIND_VIDEO, media_kind

    path = record.get("path")
    return isinstance(path, str) and media_kind(path) == KIND_VIDEO


def split_scenes(data_txt: Path, out: Path, *, threshold: float = 27.0, min_scene_len: int = 15,
                 min_seconds: float = 0.0, max_seconds: float | None = None, extract: bool = False,
                 engine: Engine | None = None, progress: Progress | None = None) -> JobResult:
    """Write one record per scene of every video of ``data_txt`` under ``out`` (see the module docstring)."""
    clips_root = str(Path(out).expanduser().resolve() / CLIPS) if extract else None
    options = SceneOptions(threshold=threshold, min_scene_len=min_scene_len, min_seconds=min_seconds,
                           max_seconds=max_seconds, clips_root=clips_root)
    job = Job(command="split-scenes", task=scene_task, context=options, options=asdict(options),
              wants=_is_video, merge=lambda record, value: _scene_records(record, value, clips_root))
    return run_job(data_txt, out, job, engine=engine, progress=progress)
