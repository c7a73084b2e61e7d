"""Read the frames of one training sample: videos with decord (PyAV fallback), images with Pillow.

Why a module of its own: decoding is where training meets broken files. Every failure becomes a
:class:`MediaError` with a stable ``code`` (``missing``, ``undecodable``, ``truncated``,
``size_mismatch``, ``timeout``) and one sentence naming the file, so the dataset can count it,
replace the sample and, above a threshold, stop with a message that names examples.

- Videos: ``decord.VideoReader(path, ctx=cpu(0), num_threads=1).get_batch(indices)`` (the reference
  reader, reference §1.3). When decord cannot open or decode a file (it fails on some frame widths,
  e.g. 32, 48, 96 and 144 px, and on some containers), the file is decoded again with PyAV, frame by
  frame up to the last index needed. Only when both fail is the file bad.
- Images: Pillow, converted to RGB, returned as a 1-frame clip.
- Size check: the decoded frame must be ``height x width`` of the annotation (the index stores it):
  the crop box and the bucket were computed from it, so a disagreement would silently mis-size the
  sample (reference §3.4).
- Time budget: :func:`call_with_timeout` runs a decode on a daemon thread and gives up after
  ``timeout`` seconds, so a file that makes a decoder hang costs one timeout instead of a hung run.
  The hung thread is abandoned (native code cannot be interrupted); after :data:`MAX_ABANDONED`
  abandoned threads in one process the reader refuses to continue (the storage is probably stuck).

Arrays are ``T x H x W x 3`` uint8 RGB. decord, PyAV and Pillow are imported on first use.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import numpy as np

from osctl.errors import DataError

T = TypeVar("T")

MEDIA_ERROR_CODES: tuple[str, ...] = ("missing", "undecodable", "truncated", "size_mismatch", "frame_count", "timeout",
                                      "error")
"""Every :attr:`MediaError.code`, in report order (``error``: an unexpected exception while loading a sample)."""

MAX_ABANDONED = 4
"""Decode threads that may hang (past their timeout) in one process before reading stops for good."""

_abandoned_lock = threading.Lock()
_abandoned = 0


class MediaError(DataError):
    """One sample's media could not be read as the index describes it.

    ``code`` is one of :data:`MEDIA_ERROR_CODES`; ``path`` is the media file. The dataset catches
    it, counts it and replaces the sample; it reaches the user only through the bad-sample summary.
    """

    def __init__(self, code: str, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}", hint="run `osctl data validate DATA_TXT --probe` to list broken media.")
        self.code = code
        self.path = path
        self.detail = message

    def __reduce__(self) -> tuple[Any, tuple[str, str, str]]:
        """Pickle with the constructor's arguments (errors cross DataLoader worker processes)."""
        return (MediaError, (self.code, self.path, self.detail))


class DecodeHung(DataError):
    """Too many decodes hung in this process; the storage or a decoder is stuck."""


def _short(exc: BaseException, path: str = "") -> str:
    """The first line of an exception, prefixed by its type, without the file name (already in the message)."""
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    text = lines[0] if lines else ""
    if path:
        text = text.replace(f": '{path}'", "").replace(f" {path}", " the file").replace(path, "the file")
    text = text[:160]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# ------------------------------------------------------------------------------------------ time budget


def call_with_timeout(fn: Callable[[], T], timeout: float | None, *, path: str = "") -> T:
    """``fn()`` with a time budget of ``timeout`` seconds (``None`` or ``<= 0``: no budget, run inline).

    Runs ``fn`` on a daemon thread and waits for it; past the budget raises ``MediaError("timeout")``
    and abandons the thread (it cannot be killed, and being a daemon it never blocks process exit).
    Exceptions of ``fn`` are re-raised unchanged. After :data:`MAX_ABANDONED` abandoned threads in
    this process every further call raises :class:`DecodeHung` so a stuck disk stops training with a
    clear message instead of leaking threads forever.
    """
    global _abandoned
    if timeout is None or timeout <= 0:
        return fn()
    with _abandoned_lock:
        if _abandoned >= MAX_ABANDONED:
            raise DecodeHung(
                f"{_abandoned} media decodes hung for more than {timeout:g} s in process {os.getpid()} "
                f"(latest: {path}); the storage or a decoder is stuck.",
                hint="check the data volume, or raise the decode timeout if files are just slow.")
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # handed to the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=run, name="osctl-decode", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        with _abandoned_lock:
            _abandoned += 1
        raise MediaError("timeout", path, f"decoding took longer than {timeout:g} s and was abandoned")
    if "error" in box:
        raise box["error"]
    return box["value"]


def abandoned_decodes() -> int:
    """Decode threads abandoned past their timeout in this process (for tests and stats)."""
    return _abandoned


def _reset_abandoned() -> None:
    """Forget abandoned decodes (tests only)."""
    global _abandoned
    with _abandoned_lock:
        _abandoned = 0


# ------------------------------------------------------------------------------------------------ videos


def _check_file(path: str) -> None:
    if not os.path.isfile(path):
        raise MediaError("missing", path, "file does not exist")
    if os.path.getsize(path) == 0:
        raise MediaError("truncated", path, "file is empty (0 bytes)")


def _decord_read(path: str, indices: np.ndarray) -> np.ndarray:
    import decord

    reader = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=1)
    count = len(reader)
    if count <= 0:
        raise MediaError("truncated", path, "the file holds no video frames")
    last = int(indices.max())
    if last >= count:
        raise MediaError("truncated", path, f"frame {last} is needed but the file holds {count} frames")
    return reader.get_batch(indices.tolist()).asnumpy()


def _pyav_read(path: str, indices: np.ndarray) -> np.ndarray:
    import av

    wanted = np.unique(indices)
    last = int(wanted[-1])
    got: dict[int, np.ndarray] = {}
    position = 0
    with av.open(path) as container:
        if not container.streams.video:
            raise MediaError("undecodable", path, "the file has no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        pointer = 0
        for frame in container.decode(stream):
            if position == wanted[pointer]:
                got[position] = frame.to_ndarray(format="rgb24")
                pointer += 1
                if pointer == len(wanted):
                    break
            position += 1
    if len(got) < len(wanted):
        raise MediaError("truncated", path, f"frame {last} is needed but only {position} frames could be decoded")
    return np.stack([got[int(i)] for i in indices])


def read_video(path: str, indices: Sequence[int] | np.ndarray, *, size: tuple[int, int] | None = None,
               timeout: float | None = None, backend: str = "auto") -> np.ndarray:
    """Frames ``indices`` of the video at ``path`` as ``T x H x W x 3`` uint8 RGB.

    ``backend``: ``auto`` (decord, then PyAV when decord fails on the file), ``decord`` or ``pyav``.
    ``size`` (height, width), when given, must equal the decoded frame size. ``timeout`` bounds the
    whole read (see :func:`call_with_timeout`). Raises :class:`MediaError` for a missing, empty,
    truncated or undecodable file and for a size that disagrees.
    """
    path = str(path)
    idx = np.asarray(indices, dtype=np.int64)
    if idx.ndim != 1 or not len(idx) or int(idx.min()) < 0:
        raise ValueError(f"frame indices must be a non-empty list of non-negative integers, got {list(idx)[:8]}")
    _check_file(path)

    def decode() -> np.ndarray:
        if backend == "pyav":
            return _pyav_read(path, idx)
        try:
            return _decord_read(path, idx)
        except MediaError as exc:
            if backend == "decord" or exc.code != "truncated":
                raise
            first: BaseException = exc
        except Exception as exc:  # decord raises bare RuntimeError/DECORDError for every kind of failure
            if backend == "decord":
                raise MediaError("undecodable", path, f"decord cannot read it ({_short(exc, path)})") from None
            first = exc
        try:
            return _pyav_read(path, idx)
        except MediaError:
            raise
        except Exception as exc:  # PyAV raises many av.error types
            why = first.detail if isinstance(first, MediaError) else _short(first, path)
            raise MediaError("undecodable", path, f"neither decord ({why}) nor PyAV ({_short(exc, path)}) can decode it") from None

    frames = call_with_timeout(decode, timeout, path=path)
    _check_size(path, frames, size)
    return frames


def _check_size(path: str, frames: np.ndarray, size: tuple[int, int] | None) -> None:
    if size is None:
        return
    height, width = int(frames.shape[1]), int(frames.shape[2])
    if (height, width) != (int(size[0]), int(size[1])):
        raise MediaError("size_mismatch", path, f"decoded frames are {height}x{width} but the annotation says "
                                                f"{int(size[0])}x{int(size[1])} (resolution.height x width)")


# ------------------------------------------------------------------------------------------------ images


def read_image(path: str, *, size: tuple[int, int] | None = None, timeout: float | None = None) -> np.ndarray:
    """The image at ``path`` as a 1-frame clip ``1 x H x W x 3`` uint8 RGB (Pillow, ``convert("RGB")``).

    Same errors and ``size``/``timeout`` meaning as :func:`read_video`.
    """
    path = str(path)
    _check_file(path)

    def decode() -> np.ndarray:
        from PIL import Image

        try:
            with Image.open(path) as image:
                array = np.asarray(image.convert("RGB"))
        except Exception as exc:  # Pillow raises OSError, SyntaxError, ValueError... for broken files
            code = "truncated" if "truncated" in str(exc).lower() else "undecodable"
            raise MediaError(code, path, f"Pillow cannot decode it ({_short(exc, path)})") from None
        return array[None]

    frames = call_with_timeout(decode, timeout, path=path)
    _check_size(path, frames, size)
    return frames
