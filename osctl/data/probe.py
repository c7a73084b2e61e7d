"""Open media files to learn what they really hold (``osctl data validate --probe``).

Videos are opened with decord (the reader training uses): frame count, average fps, the size of the
first frame, and a decode of the last frame so that a file truncated after its header is caught.
Images are fully decoded with Pillow. Files are probed in parallel on a thread pool; decoders run in
native code, so threads overlap well. decord and Pillow are imported only here.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from osctl.data.records import KIND_IMAGE, KIND_VIDEO


@dataclass(frozen=True)
class MediaInfo:
    """What a probe found: decodable or not (with the reason), and the decoded geometry."""

    ok: bool
    error: str | None = None
    frames: int | None = None
    fps: float | None = None
    height: int | None = None
    width: int | None = None


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    detail = text[0][:200] if text else ""
    return f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__


def probe_video(path: str) -> MediaInfo:
    """Open ``path`` with decord, decode its first and last frames, and report count, fps and size."""
    try:
        import decord

        reader = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=1)
        frames = len(reader)
        if frames <= 0:
            return MediaInfo(False, "the file holds no video frames", frames=0)
        height, width = reader[0].shape[:2]
        if frames > 1:
            reader[frames - 1].shape  # noqa: B018 - decoding the last frame catches truncated files
        fps = float(reader.get_avg_fps())
        return MediaInfo(True, None, frames, fps, int(height), int(width))
    except Exception as exc:  # decord raises its own error types for every kind of broken file
        return MediaInfo(False, _short(exc))


def probe_image(path: str) -> MediaInfo:
    """Fully decode ``path`` with Pillow and report its size."""
    try:
        from PIL import Image

        with Image.open(path) as image:
            image.load()
            width, height = image.size
        return MediaInfo(True, None, 1, None, int(height), int(width))
    except Exception as exc:  # Pillow raises many unrelated types for broken files
        return MediaInfo(False, _short(exc))


def probe_media(paths: Sequence[str], kinds: Sequence[int], workers: int = 4) -> list[MediaInfo]:
    """Probe every path (videos with decord, images with Pillow) on ``workers`` threads, in input order."""

    def one(job: tuple[str, int]) -> MediaInfo:
        path, kind = job
        if kind == KIND_VIDEO:
            return probe_video(path)
        if kind == KIND_IMAGE:
            return probe_image(path)
        return MediaInfo(False, "unknown media type")

    jobs = list(zip(paths, kinds, strict=True))
    if workers <= 1 or len(jobs) <= 1:
        return [one(job) for job in jobs]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(one, jobs))
