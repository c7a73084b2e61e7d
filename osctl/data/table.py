"""One annotation file as columns, and the outcome of reading it.

:class:`RecordTable` is what every reader produces and every check and rule consumes: numpy float64
columns (NaN = absent) for the numbers, Arrow string columns for paths and captions, and the
per-record issues found while reading. :class:`LoadedAnnotation` wraps it with the file's identity
(size, times, digest) or the :class:`FileProblem` that stopped it. No per-record Python object
outlives reading.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from osctl.data.checksum import Digest
from osctl.data.datatxt import DataSource
from osctl.data.records import FieldIssue


@dataclass(frozen=True)
class FileProblem:
    """A whole annotation file cannot be used (missing, unreadable, not JSON, not a list, unsafe pickle)."""

    code: str
    message: str
    line: int | None = None
    column: int | None = None


NUMERIC_COLUMNS: tuple[str, ...] = ("num_frames", "fps", "aesthetic", "aes", "tech", "motion", "height", "width")


@dataclass
class RecordTable:
    """All records of one annotation file as columns (row i = record i of the file).

    Numbers are float64 with NaN for "absent or null" (integers are exact up to 2**53). ``cut`` is
    ``n x 2`` and ``crop`` is ``n x 4`` with NaN rows when absent. ``cap_json`` holds each caption as
    its JSON text (a string or a list of strings, ``null`` when absent; None when the file was read
    with ``captions=False``) and ``cap_state`` its :data:`~osctl.data.records.CAP_OK`-style state. ``issues`` are (record index, issue) pairs for
    records that are not well typed; :attr:`invalid_mask` and :meth:`bad` summarise them.
    """

    n: int
    path: pa.Array | pa.ChunkedArray
    cap_json: pa.Array | pa.ChunkedArray | None
    cap_state: np.ndarray
    height: np.ndarray
    width: np.ndarray
    num_frames: np.ndarray
    fps: np.ndarray
    aesthetic: np.ndarray
    aes: np.ndarray
    tech: np.ndarray
    motion: np.ndarray
    cut: np.ndarray
    crop: np.ndarray
    issues: list[tuple[int, FieldIssue]] = field(default_factory=list)
    _bad: dict[str, np.ndarray] | None = field(default=None, repr=False)

    def _bad_fields(self) -> dict[str, np.ndarray]:
        if self._bad is None:
            self._bad = {}
            for index, issue in self.issues:
                root = issue.field.split(".")[0].split("[")[0] or "record"
                self._bad.setdefault(root, np.zeros(self.n, dtype=bool))[index] = True
                self._bad.setdefault("*", np.zeros(self.n, dtype=bool))[index] = True
        return self._bad

    def bad(self, name: str) -> np.ndarray:
        """Boolean mask of records whose ``name`` field (``record``: the whole record) had a type problem."""
        mask = self._bad_fields().get(name)
        return mask if mask is not None else np.zeros(self.n, dtype=bool)

    @property
    def invalid_mask(self) -> np.ndarray:
        """Boolean mask of records that had any issue while being read."""
        return self.bad("*")

    def score(self) -> np.ndarray:
        """``aesthetic``, falling back to its alias ``aes`` where ``aesthetic`` is absent."""
        return np.where(np.isnan(self.aesthetic), self.aes, self.aesthetic)

    def rows(self, start: int, stop: int) -> RecordTable:
        """Records ``start:stop`` as a table that shares this one's memory (issue indices shifted).

        Lets per-record work run on cache-sized parts, or on several threads at once.
        """
        numbers = {name: getattr(self, name)[start:stop] for name in NUMERIC_COLUMNS}
        return RecordTable(
            n=stop - start, path=self.path.slice(start, stop - start),
            cap_json=None if self.cap_json is None else self.cap_json.slice(start, stop - start),
            cap_state=self.cap_state[start:stop], cut=self.cut[start:stop], crop=self.crop[start:stop],
            issues=[(i - start, issue) for i, issue in self.issues if start <= i < stop], **numbers,
        )


_ARRAY_COLUMNS = (*NUMERIC_COLUMNS, "cap_state", "cut", "crop")


def concat_tables(parts: list[RecordTable], *, threads: int = 1) -> RecordTable:
    """One table from consecutive slices of the same file (strings stay chunked; issue indices shift).

    With ``threads > 1`` the numpy columns are joined on that many threads (numpy copies without
    the GIL, and the page faults of the new columns then run side by side).
    """
    if len(parts) == 1:
        return parts[0]
    offsets = np.cumsum([0] + [p.n for p in parts])
    pieces = [[getattr(p, name) for p in parts] for name in _ARRAY_COLUMNS]
    if threads > 1:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(min(threads, len(pieces))) as pool:
            joined = list(pool.map(np.concatenate, pieces))
    else:
        joined = [np.concatenate(columns) for columns in pieces]
    arrays = dict(zip(_ARRAY_COLUMNS, joined, strict=True))
    return RecordTable(
        n=int(offsets[-1]),
        path=pa.chunked_array([c for p in parts for c in _chunks(p.path)], pa.string()),
        cap_json=None if parts[0].cap_json is None else pa.chunked_array(
            [c for p in parts for c in _chunks(p.cap_json)], parts[0].cap_json.type),
        issues=[(int(off) + i, issue) for off, p in zip(offsets, parts, strict=False) for i, issue in p.issues],
        **arrays,
    )


def _chunks(array: pa.Array | pa.ChunkedArray) -> list[pa.Array]:
    return list(array.chunks) if isinstance(array, pa.ChunkedArray) else [array]


@dataclass
class LoadedAnnotation:
    """The outcome of reading one annotation file: a table, or the problem that stopped it."""

    source: DataSource
    table: RecordTable | None
    problem: FileProblem | None
    size: int = 0
    mtime_ns: int = 0
    digest: str | Digest | None = field(default=None, repr=False)
    ctime_ns: int = 0
    inode: int = 0
    device: int = 0
    stat_ns: int = 0
    """Wall-clock time (ns) when the file's size and times were taken (see :func:`osctl.data.index.reuse_recorded_digests`)."""

    @property
    def n(self) -> int:
        """Number of records read (0 when the file could not be read)."""
        return self.table.n if self.table is not None else 0

    @property
    def sha256(self) -> str | None:
        """Hex SHA-256 of the file (None when read with ``checksum=False``).

        The digest may still be computed on a background thread (:mod:`osctl.data.checksum`) while
        the caller works on the table; this waits for it.
        """
        if self.digest is not None and not isinstance(self.digest, str):
            self.digest = self.digest.hexdigest()
        return self.digest

