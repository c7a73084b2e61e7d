"""One live run per folder: an exclusive ``flock`` on a lock file inside it, with the holder's identity.

``osctl train`` takes it on ``train.output_dir`` (rank 0, before writing anything else there), so a
second run on the same folder — e.g. a resume started while the first run still trains — is refused
instead of racing it for ``checkpoint-N``. The kernel drops the lock when the holder's process ends,
however it ends (``kill -9`` included), so a dead run never leaves a stale lock; the file itself stays
(removing it would let a third process lock a new file while a second waits on the old one).

The file holds the holder's pid, host, start time and command as JSON, for the refusal message only:
the lock is the ``flock``, not the file's content. On one host this is exact. On a network filesystem
Linux emulates ``flock`` with byte-range locks on NFS (v4, or v3 with lockd), which then also works
across hosts; filesystems without lock support make ``flock`` fail, and the run is then refused with
that reason rather than run unguarded.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path
from types import TracebackType

from osctl.errors import UsageError

LOCK_FILE = ".osctl.lock"


class DirLock:
    """The exclusive lock of ``folder`` for ``command`` (a context manager; :meth:`acquire` / :meth:`release`)."""

    def __init__(self, folder: Path, command: str = "osctl train", key: str = "train.output_dir") -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_FILE
        self.command = command
        self.key = key
        self._fd: int | None = None
        self._created = False  # acquire() created the folder (so a run that writes nothing can take it back)

    @property
    def held(self) -> bool:
        """True while this object holds the lock."""
        return self._fd is not None

    def acquire(self) -> DirLock:
        """Take the lock (creating the folder and the lock file), or raise ``UsageError`` naming the holder."""
        if self._fd is not None:
            return self
        self._created = not self.folder.exists()
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise UsageError(f"{self.key} {self.folder} is in use by {self._holder()}; wait for it or stop it.",
                             hint="each run needs its own output folder; a resume must not race the live run.") \
                from None
        except OSError as exc:
            os.close(fd)
            raise UsageError(f"cannot lock {self.path} ({exc.strerror}); {self.key} must be on a filesystem "
                             "with file locks.") from None
        info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S %z"),
                "command": self.command, "argv": sys.argv[1:]}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        self._fd = fd
        return self

    def release(self, *, discard_unused: bool = False) -> None:
        """Drop the lock (closing the file releases it; the file stays, see the module docstring).

        ``discard_unused``: when :meth:`acquire` created the folder and nothing but the lock file was
        written into it since (a run that failed before its first write), remove both, so a refused run
        leaves no trace.
        """
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        if discard_unused and self._created:
            with contextlib.suppress(OSError):
                if [entry.name for entry in self.folder.iterdir()] == [LOCK_FILE]:
                    self.path.unlink()
                    self.folder.rmdir()
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        os.close(fd)

    def _holder(self) -> str:
        """``osctl train (pid 1234 on host h since ...)`` from the lock file, as far as it can be read."""
        try:
            info = json.loads(self.path.read_text() or "{}")
        except (OSError, ValueError):
            info = {}
        if not info.get("pid"):
            return "another process (it is starting or stopping)"
        return (f"{info.get('command', 'another process')} (pid {info['pid']} on host {info.get('host', '?')} "
                f"since {info.get('started', '?')})")

    def __enter__(self) -> DirLock:
        return self.acquire()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.release()
