"""SHA-256 digests of annotation files, computed while the caller does other work.

The sample index fingerprints every annotation file by its SHA-256 (:mod:`osctl.data.index`), which
costs about 0.6 s of CPU per GB. Hashing and reading release the GIL, so a digest is computed on a
background thread and only waited for when the fingerprint is built:

- :class:`BytesDigest` hashes a file already in memory, starting at once (it overlaps decoding);
- :class:`FileDigest` hashes an open file from its own duplicate descriptor, on a background thread
  started with :func:`hash_in_background` once no process will be forked any more (no thread may run
  during a fork), or in the caller's thread on first use when nobody started it. When the file is
  known to be unchanged since an earlier run recorded its digest, :meth:`FileDigest.settle` takes
  that digest instead and stops a hashing in progress (see :func:`osctl.data.index.reuse_recorded_digests`).

Both expose ``hexdigest()``, which waits for the result (and re-raises a read error).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import threading
from collections.abc import Sequence
from typing import Protocol

BLOCK = 1 << 20
"""Bytes read per call while hashing a file."""


class Digest(Protocol):
    """A digest that may still be in progress."""

    def hexdigest(self) -> str:
        """The hex SHA-256, waiting for it when needed."""
        ...


class BytesDigest(threading.Thread):
    """SHA-256 of a bytes object, computed on a background thread started at once."""

    def __init__(self, data: bytes) -> None:
        super().__init__(daemon=True)
        self._data = data
        self._digest = ""
        self.start()

    def run(self) -> None:
        self._digest = hashlib.sha256(self._data).hexdigest()
        self._data = b""

    def hexdigest(self) -> str:
        """The hex SHA-256 of the bytes (waits for the thread)."""
        self.join()
        return self._digest


class FileDigest:
    """SHA-256 of an open file, computed exactly once by whichever thread asks first.

    The descriptor is duplicated at construction (the caller may close its own) and closed once the
    file has been hashed.
    """

    def __init__(self, fd: int) -> None:
        self._fd = os.dup(fd)
        self._claim = threading.Lock()
        self._claimed = False
        self._done = threading.Event()
        self._digest = ""
        self._known: str | None = None
        self._error: OSError | None = None

    def settle(self, known: str) -> None:
        """Take ``known`` as this file's digest instead of hashing it (a hashing in progress stops early).

        For a file whose digest an earlier run recorded and that has not changed since: re-hashing
        it would only cost time (about 0.6 s of CPU per GB).
        """
        self._known = known  # a hashing thread sees it at its next block and stops
        if self._take():
            self._finish(known, None)

    def discard(self) -> None:
        """Close the file without hashing it (the caller gave up on the digest); ``hexdigest`` then raises."""
        if self._take():
            self._finish("", OSError(errno.ECANCELED, "the digest was discarded"))

    def compute(self) -> None:
        """Hash the file now, in this thread; returns at once when another thread has already begun."""
        if not self._take():
            return
        digest = hashlib.sha256()
        buffer = bytearray(BLOCK)
        view = memoryview(buffer)
        offset = 0
        result, error = "", None
        try:
            while self._known is None and (got := os.preadv(self._fd, [view], offset)) > 0:
                digest.update(view[:got])
                offset += got
            result = self._known if self._known is not None else digest.hexdigest()
        except OSError as exc:
            error = exc
        finally:
            self._finish(result, error)

    def _take(self) -> bool:
        """Claim the file for this call; False when a call before it did (hashing, settling or discarding)."""
        with self._claim:
            if self._claimed:
                return False
            self._claimed = True
            return True

    def _finish(self, digest: str, error: OSError | None) -> None:
        """Record the outcome, close the file and wake whoever waits in :meth:`hexdigest`."""
        self._digest, self._error = digest, error
        os.close(self._fd)
        self._done.set()

    def hexdigest(self) -> str:
        """The hex SHA-256 of the file, computed here when no background thread has taken it."""
        self.compute()
        self._done.wait()
        if self._error is not None:
            raise self._error
        return self._digest


def hash_in_background(digests: Sequence[FileDigest]) -> None:
    """Compute ``digests`` one after the other on one daemon thread (they are independent files).

    The thread runs at the lowest CPU priority (Linux sets it per thread), so that it takes the time
    the caller's own threads leave idle instead of slowing them down; a caller waiting for a digest
    leaves a core idle, so the hashing then runs at full speed. Call it only once no worker process
    will be forked any more in this process.
    """
    if digests:
        threading.Thread(target=_compute_all, args=(list(digests),), daemon=True, name="osctl-checksum").start()


def _compute_all(digests: list[FileDigest]) -> None:
    with contextlib.suppress(OSError, AttributeError):  # not Linux: normal priority
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
    for digest in digests:
        digest.compute()
