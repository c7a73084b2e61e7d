"""Learn what a media file holds for ``osctl data import``: size, frame count, fps, duration and codec.

Videos are read with PyAV at the packet level: the container header gives the stream, every video
packet is demuxed (not decoded) and counted, and only the first frame is decoded. That is what a probe
needs and little more, so a thousand short clips take seconds:

- the frame count is the number of packets that could be read, which is what decord (the training
  reader) counts for the containers it supports; a header that lists more frames than the file holds
  means the file was cut short, and the file is reported instead of written;
- decoding is single-threaded (for one frame, starting a decoder's threads costs more than they save:
  it cut the CPU time of probing a short clip by a third or more);
- the first decoded frame proves the codec can be decoded and gives the frame size after the display
  matrix, as decord reads it (decord turns rotated phone videos upright; they are reported as a
  warning because a reader that ignores the matrix would see them turned);
- the packet timestamps reveal a variable frame rate: fps is then the average and the file is
  reported (a reader that indexes frames by position plays its slow and fast parts at one rate).

Images are checked for an EXIF orientation (the training reader uses the stored pixels, so a turned
image would be learnt turned; it is reported instead of written) and fully decoded with
:func:`osctl.data.probe.probe_image`, the probe of ``osctl data validate --probe``.

``osctl data validate --probe`` (:mod:`osctl.data.probe`) decodes the first and the last frame of every
video with decord to find files training cannot read; this module records what the files are.
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass
from typing import Any

from osctl.data.records import KIND_IMAGE, KIND_VIDEO, media_kind

PROBE_FORMAT = 1
"""Bumped whenever probing the same file would give other facts (cached probes of another format are redone)."""

VFR_TOLERANCE = 0.1
"""A clip is variable-frame-rate when its frame intervals differ by more than this fraction of the median."""

_EXIF_ORIENTATION = 0x0112
_ORIENTATION_WORDS = {2: "mirrored", 3: "turned 180°", 4: "flipped upside down", 5: "mirrored and turned 90°",
                      6: "turned 90°", 7: "mirrored and turned 270°", 8: "turned 270°"}


@dataclass(frozen=True)
class MediaProbe:
    """What probing one file found: the facts of a usable file, or the reason it cannot be used.

    ``error`` is ``(code, message)`` when the file is left out of the output; ``warnings`` are
    ``(code, message)`` pairs about a file that is still written. Sizes are of the decoded frame.
    """

    kind: str
    error: tuple[str, str] | None = None
    width: int | None = None
    height: int | None = None
    num_frames: int | None = None
    fps: float | None = None
    duration: float | None = None
    codec: str | None = None
    warnings: tuple[tuple[str, str], ...] = ()

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_json(self) -> dict[str, Any]:
        """A plain dict (for the probe cache and for worker processes), read back by :meth:`from_json`."""
        return {"kind": self.kind, "error": list(self.error) if self.error else None, "width": self.width,
                "height": self.height, "num_frames": self.num_frames, "fps": self.fps, "duration": self.duration,
                "codec": self.codec, "warnings": [list(w) for w in self.warnings]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> MediaProbe:
        error = data.get("error")
        return cls(kind=data["kind"], error=(str(error[0]), str(error[1])) if error else None,
                   width=data.get("width"), height=data.get("height"), num_frames=data.get("num_frames"),
                   fps=data.get("fps"), duration=data.get("duration"), codec=data.get("codec"),
                   warnings=tuple((str(c), str(m)) for c, m in data.get("warnings") or ()))


def _short(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    detail = lines[0][:200] if lines else ""
    return f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__


def _fail(kind: str, code: str, message: str) -> MediaProbe:
    return MediaProbe(kind=kind, error=(code, message))


def _size_problem(path: str, kind: str) -> MediaProbe | None:
    try:
        size = os.stat(path).st_size
    except OSError as exc:
        return _fail(kind, "unreadable", f"cannot read the file ({exc.strerror or exc})")
    if size == 0:
        return _fail(kind, "empty_file", "the file is empty (0 bytes); copy it again or remove it")
    return None


def probe_file(path: str) -> MediaProbe:
    """Probe ``path`` as a video or an image, by its extension (see :func:`osctl.data.records.media_kind`)."""
    kind = media_kind(path)
    if kind == KIND_VIDEO:
        return probe_video(path)
    if kind == KIND_IMAGE:
        return probe_image(path)
    return _fail("unknown", "unknown_extension", "the extension is neither a video nor an image one")


def probe_video(path: str) -> MediaProbe:
    """Frame count (readable packets), fps, decoded size, duration and codec of the video at ``path``."""
    failed = _size_problem(path, "video")
    if failed is not None:
        return failed
    import av

    try:
        container = av.open(path, metadata_errors="ignore", options={"threads": "1"})
    except (av.FFmpegError, OSError, ValueError, UnicodeDecodeError) as exc:
        if _starts_as_mp4(path):
            return _fail("video", "truncated", "it starts as an MP4 but its index (moov atom) cannot be read: it was cut "
                                               "short, is still being written, or is damaged; copy it again or remove it")
        return _fail("video", "unreadable", f"not a readable video ({_short(exc)}); re-encode it "
                                            "(ffmpeg -i IN -c:v libx264 OUT.mp4) or remove it")
    with container:
        if not container.streams:
            return _fail("video", "truncated", "no stream could be found: the file is cut short (an MP4 whose index "
                                               "comes last) or damaged; copy it again or remove it")
        if not container.streams.video:
            return _fail("video", "no_video_stream", "the file holds no video stream (audio only?); remove it")
        stream = container.streams.video[0]
        stream.codec_context.thread_count = 1  # decoder threads cost more to start than one frame takes to decode
        listed = int(stream.frames or 0)
        codec = stream.codec_context.name
        timestamps: list[int] = []
        count = 0
        first: Any = None
        stopped: BaseException | None = None
        try:
            for packet in container.demux(stream):
                if packet.dts is None and packet.size == 0:  # the demuxer's final empty packet
                    continue
                count += 1
                if packet.pts is not None:
                    timestamps.append(int(packet.pts))
                if first is None:
                    decoded = packet.decode()
                    first = decoded[0] if decoded else None
            if first is None and count:
                decoded = stream.codec_context.decode(None)  # drain a decoder that holds frames back
                first = decoded[0] if decoded else None
        except (av.FFmpegError, ValueError) as exc:
            stopped = exc
        if count == 0:
            return _fail("video", "no_frames", "the video stream holds no frames; remove the file")
        if first is None:
            why = f" ({_short(stopped)})" if stopped is not None else ""
            return _fail("video", "undecodable", f"no frame of its {codec} stream could be decoded{why}; re-encode it "
                                                 "(ffmpeg -i IN -c:v libx264 OUT.mp4) or remove it")
        if stopped is not None or count < listed:
            listed_text = f"{listed}" if listed else "?"
            why = f" ({_short(stopped)})" if stopped is not None else ""
            return _fail("video", "truncated", f"only {count} of {listed_text} frames could be read{why}; the file is "
                                               "cut short: copy it again or remove it")
        rate = stream.average_rate or stream.guessed_rate
        seconds = float(stream.duration * stream.time_base) if stream.duration and stream.time_base else None
        if not rate and seconds:
            rate = count / seconds
        if not rate or float(rate) <= 0:
            return _fail("video", "no_fps", "the stream gives no frame rate; re-encode it at a constant rate "
                                            "(ffmpeg -i IN -fps_mode cfr -r 24 OUT.mp4)")
        fps = float(rate)
        width, height = int(first.width), int(first.height)
        warnings: list[tuple[str, str]] = []
        rotation = round(float(getattr(first, "rotation", 0) or 0)) % 360
        if rotation in (90, 270):
            width, height = height, width
        if rotation:
            warnings.append(("rotated", f"the file is turned {rotation}° by its display matrix; recorded upright "
                                        f"({height}x{width}) as decord reads it (a reader that ignores the matrix sees "
                                        "it turned; re-encode it to store it upright)"))
        vfr = _variable_rate(timestamps, float(stream.time_base) if stream.time_base else None)
        if vfr is not None:
            warnings.append(("variable_frame_rate",
                             f"frame intervals range from {vfr[0]:.1f} to {vfr[1]:.1f} ms; fps {fps:.3f} is the "
                             "average and readers index frames by position, so motion speed varies where the rate "
                             "does (re-encode at a constant rate: ffmpeg -i IN -fps_mode cfr OUT.mp4)"))
        duration = seconds if seconds else count / fps
        return MediaProbe(kind="video", width=width, height=height, num_frames=count, fps=fps,
                          duration=round(duration, 6), codec=codec, warnings=tuple(warnings))


def _starts_as_mp4(path: str) -> bool:
    """True when the file begins with an MP4/QuickTime ``ftyp`` box (so an open that fails means damage, not format)."""
    try:
        with open(path, "rb") as handle:
            return handle.read(8)[4:8] == b"ftyp"
    except OSError:
        return False


def _variable_rate(timestamps: list[int], time_base: float | None) -> tuple[float, float] | None:
    """(shortest, longest) frame interval in ms when they differ by more than :data:`VFR_TOLERANCE`, else None."""
    if len(timestamps) < 3 or not time_base:
        return None
    ordered = sorted(set(timestamps))
    steps = sorted(b - a for a, b in itertools.pairwise(ordered))
    median = steps[len(steps) // 2]
    if median <= 0 or steps[-1] - steps[0] <= VFR_TOLERANCE * median:
        return None
    return steps[0] * time_base * 1000, steps[-1] * time_base * 1000


def probe_image(path: str) -> MediaProbe:
    """Size of the image at ``path`` (fully decoded); an EXIF orientation other than upright is an error."""
    failed = _size_problem(path, "image")
    if failed is not None:
        return failed
    from PIL import Image

    from osctl.data.probe import probe_image as decode_image

    try:
        with Image.open(path) as image:
            orientation = int(image.getexif().get(_EXIF_ORIENTATION, 1) or 1)
            fmt = (image.format or "").lower() or None
    except Exception as exc:  # Pillow raises many unrelated types for broken files
        return _fail("image", "unreadable", f"not a readable image ({_short(exc)}); remove it or save it again")
    if orientation != 1:
        words = _ORIENTATION_WORDS.get(orientation, f"orientation {orientation}")
        return _fail("image", "exif_rotated",
                     f"its EXIF orientation {orientation} says it is shown {words}, but readers use the stored pixels, "
                     "so it would be learnt that way; save it upright (PIL.ImageOps.exif_transpose, or "
                     "mogrify -auto-orient) and import again")
    info = decode_image(path)
    if not info.ok:
        return _fail("image", "undecodable", f"the image cannot be decoded ({info.error}); save it again or remove it")
    return MediaProbe(kind="image", width=info.width, height=info.height, num_frames=1, codec=fmt)
