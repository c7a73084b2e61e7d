"""The error tree every osctl command reports through, and how operating-system failures map onto it.

Each error carries the exit code the command line uses and an optional hint (usually the next command
to run). Messages are one sentence naming the file, key or value at fault.

Operating-system failures (a read-only or full disk, a permission, a file where a folder should be)
are described in one place, :func:`io_error`; code that writes wraps its writes in :func:`writing`,
which turns such a failure into one sentence naming the folder the user chose:

- the destination cannot be used as given (read-only file system, permission denied, a file where a
  folder is needed, a name too long): :class:`UsageError`, exit 2 -- choose another destination;
- the system could not store the output (disk full, quota used up, file too large, I/O error):
  :class:`StorageError`, exit 1 -- the command ran and the disk refused its output.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
from collections.abc import Callable, Iterator


class OsctlError(Exception):
    """Base of all errors osctl reports to a user without a traceback."""

    exit_code: int = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class UsageError(OsctlError):
    """The command line or its inputs are wrong (exit 2)."""

    exit_code = 2


class ConfigError(UsageError):
    """A recipe (or an override of it) is wrong (exit 2).

    ``problems`` optionally lists each problem as ``(dotted key, sentence)`` so a caller can point every
    one of them at the line that set its key (the message already joins them).
    """

    def __init__(self, message: str, *, hint: str | None = None,
                 problems: list[tuple[str, str]] | None = None) -> None:
        super().__init__(message, hint=hint)
        self.problems = list(problems or [])


class PluginError(UsageError):
    """A plugin is missing, duplicated or broken (exit 2)."""


class DataError(OsctlError):
    """The command ran and found a problem in the data (exit 1)."""


class CheckFailed(OsctlError):
    """The command ran and a check it performs failed (exit 1)."""


class StorageError(OsctlError):
    """The command ran but the system could not store its output: disk full, quota, I/O error (exit 1)."""


class PeerFailed(OsctlError):
    """Another process of a multi-process run failed or stopped answering, so this one cannot go on (exit 1)."""


# ------------------------------------------------------------------------------ operating-system failures

# errno -> (why the destination cannot be used as given, what to do); exit 2: choose another one
_BAD_DESTINATION: dict[int, tuple[str, str]] = {
    errno.EROFS: ("it is on a read-only file system", "choose a folder on a writable disk"),
    errno.EACCES: ("permission denied", "choose a folder you can write to or change its permissions"),
    errno.EPERM: ("the operation is not permitted there", "choose a folder you can write to"),
    errno.EISDIR: ("it is a folder where a file is needed", "give a file name"),
    errno.ENAMETOOLONG: ("a file name in it is too long for the file system", "choose a shorter path"),
    errno.ELOOP: ("it goes through a loop of symbolic links", "choose a real folder"),
    errno.ENOTDIR: ("a part of it is a file, not a folder", "choose a folder"),
}
# errno -> (why the system could not store the output, what to do); exit 1: the command ran, the disk refused
_NO_STORAGE: dict[int, tuple[str, str]] = {
    errno.ENOSPC: ("the disk is full (no space left on device)", "free some space or choose a folder on another disk"),
    errno.EDQUOT: ("the disk quota is used up", "free some space or choose a folder on another disk"),
    errno.EFBIG: ("a file grew larger than the file system (or this process's file size limit) allows",
                  "choose a folder on another file system"),
    errno.EIO: ("the disk reported an input/output error", "check the disk and try again"),
    errno.EMFILE: ("this process has too many files open", "raise the limit (ulimit -n) and try again"),
    errno.ENFILE: ("the system has too many files open", "try again later"),
}
_OS_ERROR_IN_TEXT = re.compile(r"(?:os error|\[Errno) (\d+)")
# torch's archive writer hides the errno of a failed write behind one of these messages
_TORCH_WRITE_FAILED = re.compile(r"unexpected pos \d+ vs \d+|PytorchStreamWriter failed writing")
_FULL_BELOW_BYTES = 64 << 20
"""A write that failed without an errno counts as a full disk when less than this is left free."""


def blocking_file(path: os.PathLike[str] | str) -> str | None:
    """The first existing part of ``path`` that is not a folder (the path itself included), else None."""
    current = os.path.abspath(path)
    while True:
        if os.path.lexists(current):
            return None if os.path.isdir(current) else current
        parent = os.path.dirname(current)
        if parent == current:
            return None
        current = parent


def free_bytes(path: os.PathLike[str] | str) -> int | None:
    """Bytes free to this user on the disk holding ``path`` (or its nearest existing parent)."""
    current = os.path.abspath(path)
    while not os.path.exists(current) and os.path.dirname(current) != current:
        current = os.path.dirname(current)
    try:
        stat = os.statvfs(current)
    except OSError:
        return None
    return stat.f_bavail * stat.f_frsize


def io_error(exc: BaseException, path: os.PathLike[str] | str | None = None, *,
             action: str = "write", hint: str | None = None) -> OsctlError | None:
    """The one-sentence osctl error for ``exc``, an operating-system failure to ``action`` ``path``.

    ``path`` is what the user chose (an output folder, a file); without it the failing file's own name
    is used. Besides :class:`OSError`, failures that libraries wrap in their own exceptions are
    recognised: an ``os error N`` in the text (safetensors) and torch's archive writer, whose failed
    write has no errno (it is reported as a full disk when the disk is nearly full). Returns None when
    ``exc`` is not such a failure (the caller re-raises it). ``hint`` becomes the error's hint.
    """
    error = _describe(exc, path, action)
    if error is not None and hint is not None:
        error.hint = hint
    return error


def _describe(exc: BaseException, path: os.PathLike[str] | str | None, action: str) -> OsctlError | None:
    """:func:`io_error` without the hint."""
    code: int | None = None
    if isinstance(exc, OSError):
        code = exc.errno
    else:
        text = str(exc)
        found = _OS_ERROR_IN_TEXT.search(text)
        if found:
            code = int(found.group(1))
        elif _TORCH_WRITE_FAILED.search(text):
            where = path or "the output"
            free = free_bytes(where) if path else None
            if free is not None and free < _FULL_BELOW_BYTES:
                return StorageError(f"cannot {action} {where}: the disk is full (only {free // 1024} KiB left); "
                                    f"{_NO_STORAGE[errno.ENOSPC][1]}.")
            return StorageError(f"cannot {action} {where}: the write failed ({text.strip()}); check the disk "
                                "and try again.")
    if code is None:
        return None
    where = path if path is not None else getattr(exc, "filename", None)
    target = f" {where}" if where is not None else ""
    if code in (errno.ENOTDIR, errno.EEXIST) and where is not None:
        blocking = blocking_file(where)
        if blocking is not None:
            return UsageError(f"cannot {action}{target}: {blocking} is a file, not a folder; choose a folder "
                              "(or move that file away).")
    if code in _BAD_DESTINATION:
        return UsageError(f"cannot {action}{target}: {'; '.join(_BAD_DESTINATION[code])}.")
    if code in _NO_STORAGE:
        return StorageError(f"cannot {action}{target}: {'; '.join(_NO_STORAGE[code])}.")
    return None


@contextlib.contextmanager
def writing(path: os.PathLike[str] | str, *, action: str = "write", cleanup: Callable[[], None] | None = None,
            hint: str | None = None) -> Iterator[None]:
    """Turn an operating-system failure inside the block into the osctl error naming ``path``.

    ``cleanup`` runs when the block fails, before the error is raised (e.g. removing a half-written
    folder); errors that are not operating-system failures pass through unchanged (after ``cleanup``
    too). ``hint`` is given to the mapped error.

        with writing(out_dir):
            write_files(out_dir)
    """
    try:
        yield
    except Exception as exc:
        mapped = None if isinstance(exc, OsctlError) else io_error(exc, path, action=action, hint=hint)
        if cleanup is not None:
            cleanup()
        if mapped is None:
            raise
        raise mapped from exc
    except BaseException:  # interrupted: clean up, report nothing new
        if cleanup is not None:
            cleanup()
        raise
