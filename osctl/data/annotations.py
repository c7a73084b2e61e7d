"""Read annotation files (.json, .jsonl, .pkl, .parquet) into columns, fast.

Each file becomes a :class:`RecordTable`: numpy float64 columns (NaN = absent) for the numbers,
Arrow string columns for paths and captions, and a list of per-record issues for records that are
not well typed. No per-record Python object outlives loading.

Speed: records are decoded by msgspec into typed structs (with the cyclic garbage collector paused)
and gathered into columns with a few C-speed passes. A large JSON array is read and decoded in slices
of whole records straight from the file; the slices of all large JSON files of a data.txt are shared
between processes when there are several workers (:mod:`osctl.data.parallel_decode`). Only when the
typed decode fails does the slow path run: the whole file is split into raw records, each is decoded
on its own, and those that still fail are read leniently (:func:`osctl.data.records.inspect_record`)
so that every problem is reported, not just the first. Non-JSON formats go through :func:`msgspec.convert` with the same types. Pickles are loaded
with :func:`osctl.utils.safe_pickle.safe_loads` only.

The SHA-256 of each file (for the index fingerprint) is computed on a background thread: while a
file read in one piece is decoded, or after a file decoded in slices is read, so that it overlaps the
caller's own work on the table instead of slowing the decoding processes (:mod:`osctl.data.checksum`);
``checksum=False`` skips it.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import re
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from itertools import chain
from operator import attrgetter
from stat import S_ISDIR
from typing import Any

import msgspec
import numpy as np
import pyarrow as pa

from osctl.data.checksum import BytesDigest, Digest, FileDigest, hash_in_background
from osctl.data.datatxt import DataSource
from osctl.data.records import (
    CAP_BLANK,
    CAP_MISSING,
    CAP_OK,
    CAP_WRONG_TYPE,
    NO_CROP,
    NO_CUT,
    NO_RESOLUTION,
    PLAUSIBLE_MAX,
    PLAUSIBLE_MIN,
    FieldIssue,
    ObjectRecord,
    Record,
    caption_state,
    inspect_record,
)

_RECORDS = msgspec.json.Decoder(list[Record])
_RECORD = msgspec.json.Decoder(Record)
_RAWS = msgspec.json.Decoder(list[msgspec.Raw])
_ANY = msgspec.json.Decoder()
_BYTE_POS = re.compile(r"\(byte (\d+)\)")


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


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic GC while millions of acyclic objects are created (a large, safe speed-up)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _line_col(data: bytes, offset: int) -> tuple[int, int]:
    offset = max(0, min(offset, len(data)))
    line = data.count(b"\n", 0, offset) + 1
    start = data.rfind(b"\n", 0, offset) + 1
    return line, len(data[start:offset].decode("utf-8", "replace")) + 1


def _syntax_problem(name: str, data: bytes, exc: Exception) -> FileProblem | None:
    """A ``json_syntax`` problem located by line and column; None when the file only uses NaN/Infinity."""
    match = _BYTE_POS.search(str(exc))
    if match:
        offset = int(match.group(1))
        if data[offset:offset + 3] == b"NaN" or data[offset:offset + 8] == b"Infinity" or data[offset:offset + 9] == b"-Infinity":
            return None  # Python's json writes these; read the file with the standard parser instead
        line, col = _line_col(data, offset)
        detail = str(exc).replace("JSON is malformed: ", "")
        detail = _BYTE_POS.sub("", detail).strip()
        return FileProblem("json_syntax", f"{name}:{line}:{col}: JSON syntax error: {detail}", line, col)
    return FileProblem("json_syntax", f"{name}: JSON syntax error: {exc}")


def _from_objects(items: Sequence[Any]) -> tuple[list[Record], list[tuple[int, FieldIssue]]]:
    """Typed conversion of Python records; per-record lenient reading of those that fail."""
    try:
        return msgspec.convert(items, list[ObjectRecord]), []  # type: ignore[return-value]
    except msgspec.ValidationError:
        pass
    records: list[Record] = []
    issues: list[tuple[int, FieldIssue]] = []
    for index, item in enumerate(items):
        try:
            records.append(msgspec.convert(item, ObjectRecord))
        except msgspec.ValidationError:
            record, found = inspect_record(item)
            records.append(record)
            issues.extend((index, issue) for issue in found)
    return records, issues


def _decode_json(name: str, data: bytes) -> tuple[list[Record], list[tuple[int, FieldIssue]]] | FileProblem:
    """Whole-file JSON decoding (typed, then per record); exact syntax-error positions."""
    try:
        return _RECORDS.decode(data), []
    except msgspec.ValidationError:
        pass
    except msgspec.DecodeError:
        pass
    try:
        raws = _RAWS.decode(data)
    except msgspec.ValidationError:
        top = _top_level_type(data)
        return FileProblem("not_a_list", f"{name}: the top level is a JSON {top}, expected a list of records")
    except msgspec.DecodeError as exc:
        problem = _syntax_problem(name, data, exc)
        if problem is not None:
            return problem
        return _decode_json_stdlib(name, data)
    return _from_raws(raws)


def _from_raws(raws: list[msgspec.Raw]) -> tuple[list[Record], list[tuple[int, FieldIssue]]]:
    records: list[Record] = []
    issues: list[tuple[int, FieldIssue]] = []
    for index, raw in enumerate(raws):
        try:
            records.append(_RECORD.decode(raw))
        except msgspec.ValidationError:
            record, found = inspect_record(_ANY.decode(raw))
            records.append(record)
            issues.extend((index, issue) for issue in found)
    return records, issues


# A large JSON array file is decoded in slices of about CHUNK_BYTES, cut at top-level record boundaries
# ("}" "," "{" with optional whitespace) and read from the file one at a time: the file is never held
# in memory as a whole, columns are gathered while each slice's objects are still in the CPU cache, and
# only one slice of Python objects is alive at a time. A cut that falls inside a string or a nested
# value always leaves its slice unbalanced, so that slice fails to decode and the whole file is decoded
# in one piece instead: the result never depends on where the cuts fall. 1 MiB slices (about 3,600
# records) stay in a core's cache better than larger or smaller ones (benchmarks/README.md, "Defaults
# measured").
CHUNK_BYTES = 1 << 20
PARALLEL_MIN_BYTES = 64 << 20
_WHITESPACE = frozenset(b" \t\r\n")
_RECORD_SEPARATOR = re.compile(rb"\}\s*,\s*\{")
_OPEN, _CLOSE = ord("["), ord("]")


class _SliceFailed(Exception):
    """A slice did not decode as a list of records (a syntax error, NaN tokens, or a cut in a bad place)."""


def split_array(data: Any, chunk_bytes: int | None = None) -> list[tuple[int, int]] | None:
    """Byte ranges of slices of a top-level JSON array, each holding whole records; None when not an array.

    ``data`` is any bytes-like object (a memory map of the file: only the pages around the cuts are read).
    """
    chunk_bytes = chunk_bytes or CHUNK_BYTES
    first, last = 0, len(data) - 1
    while first <= last and data[first] in _WHITESPACE:  # no lstrip/rstrip: they would copy the file
        first += 1
    while last >= first and data[last] in _WHITESPACE:
        last -= 1
    if last <= first or data[first] != _OPEN or data[last] != _CLOSE:
        return None
    ranges: list[tuple[int, int]] = []
    pos, end = first + 1, last
    while end - pos > chunk_bytes:
        match = _RECORD_SEPARATOR.search(data, pos + chunk_bytes, end)
        if match is None:
            break
        ranges.append((pos, match.start() + 1))
        pos = match.end() - 1
    ranges.append((pos, end))
    return ranges


def _decode_piece(piece: bytes | bytearray, captions: bool) -> RecordTable:
    """Columns of ``piece`` (``[`` records ``]``); raises :class:`_SliceFailed` when it is not such a list."""
    try:
        return build_columns(_RECORDS.decode(piece), captions=captions)
    except (msgspec.DecodeError, RecursionError):
        raise _SliceFailed from None
    except msgspec.ValidationError:
        pass
    try:
        raws = _RAWS.decode(piece)
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
        raise _SliceFailed from None
    return build_columns(*_from_raws(raws), captions=captions)


def read_slice(fd: int, start: int, stop: int, *, captions: bool = True) -> RecordTable:
    """Read bytes ``start:stop`` of the open file ``fd`` (whole records of a JSON array) and decode them."""
    size = stop - start
    piece = bytearray(size + 2)
    piece[0], piece[-1] = _OPEN, _CLOSE
    view = memoryview(piece)[1:size + 1]
    done = 0
    while done < size:
        got = os.preadv(fd, [view[done:]], start + done)
        if got <= 0:  # the file shrank since it was split
            raise _SliceFailed
        done += got
    del view
    return _decode_piece(piece, captions)


def _split_file(fd: int, size: int) -> list[tuple[int, int]] | None:
    """:func:`split_array` on the open file ``fd`` through a read-only memory map (None when not an array)."""
    import mmap

    if size <= 1:
        return None
    with mmap.mmap(fd, size, prot=mmap.PROT_READ) as view:
        return split_array(view)


def _slice_ranges(fd: int, size: int) -> list[tuple[int, int]] | None:
    """Slices of an open JSON file worth decoding apart (None: read it whole: small, not an array, one slice)."""
    if size <= CHUNK_BYTES:
        return None
    try:
        ranges = _split_file(fd, size)
    except (OSError, ValueError):
        return None
    return ranges if ranges is not None and len(ranges) >= 2 else None


def _decode_sliced(files: list[tuple[int, list[tuple[int, int]]]], workers: int, captions: bool,
                   start_background: Callable[[], None]) -> list[RecordTable | None]:
    """Decode the slices of every ``(fd, ranges)`` file; one table per file, None where a slice did not decode.

    The slices of all files share ``workers`` processes when they add up to :data:`PARALLEL_MIN_BYTES`
    (a data.txt of many medium files keeps every core busy too). A file with a slice that did not
    decode cleanly gets None: the caller reads it whole, which reports problems exactly.
    ``start_background`` is called once worker processes exist (no thread runs during a fork).
    """
    decode = partial(read_slice, captions=captions)
    total = sum(stop - start for _, ranges in files for start, stop in ranges)
    if workers > 1 and total >= PARALLEL_MIN_BYTES:
        from osctl.data.parallel_decode import decode_slices_parallel

        items = [(fd, start, stop) for fd, ranges in files for start, stop in ranges]
        tables = decode_slices_parallel(items, workers, decode, start_background)
        out: list[RecordTable | None] = []
        first = 0
        for _, ranges in files:
            parts = tables[first:first + len(ranges)]
            first += len(ranges)
            out.append(None if any(t is None for t in parts) else concat_tables(parts, threads=workers))  # type: ignore[arg-type]
        return out
    start_background()
    out = []
    for fd, ranges in files:
        try:
            out.append(concat_tables([decode(fd, start, stop) for start, stop in ranges]))
        except _SliceFailed:
            out.append(None)
    return out


def _read_json(name: str, data: bytes, captions: bool = True) -> RecordTable | FileProblem:
    decoded = _decode_json(name, data)
    return decoded if isinstance(decoded, FileProblem) else build_columns(*decoded, captions=captions)


def _top_level_type(data: bytes) -> str:
    stripped = data.lstrip()[:1]
    return {b"{": "object", b'"': "string", b"": "nothing"}.get(stripped, "value")


def _decode_json_stdlib(name: str, data: bytes) -> tuple[list[Record], list[tuple[int, FieldIssue]]] | FileProblem:
    """Python's parser: accepts the NaN/Infinity tokens that ``json.dump`` writes (flagged later)."""
    try:
        obj = json.loads(data)
    except json.JSONDecodeError as exc:
        return FileProblem("json_syntax", f"{name}:{exc.lineno}:{exc.colno}: JSON syntax error: {exc.msg}",
                           exc.lineno, exc.colno)
    except UnicodeDecodeError as exc:
        return FileProblem("file_unreadable", f"{name}: not UTF-8 text ({exc.reason} at byte {exc.start})")
    if not isinstance(obj, list):
        return FileProblem("not_a_list", f"{name}: the top level is a JSON {type(obj).__name__}, expected a list of records")
    return _from_objects(obj)


def _decode_jsonl(name: str, data: bytes) -> tuple[list[Record], list[tuple[int, FieldIssue]]] | FileProblem:
    try:
        return _RECORD.decode_lines(data), []
    except (msgspec.ValidationError, msgspec.DecodeError):
        pass
    records: list[Record] = []
    issues: list[tuple[int, FieldIssue]] = []
    for number, line in enumerate(data.split(b"\n"), start=1):
        if not line.strip():
            continue
        index = len(records)
        error: msgspec.DecodeError | None = None
        try:
            records.append(_RECORD.decode(line))
            continue
        except msgspec.ValidationError:
            try:  # a wrong type can come before a NaN/Infinity token or a syntax error
                obj: Any = _ANY.decode(line)
            except msgspec.DecodeError as exc:
                error = exc
        except msgspec.DecodeError as exc:
            error = exc
        if error is not None:
            try:
                obj = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError):
                match = _BYTE_POS.search(str(error))
                col = _line_col(line, int(match.group(1)))[1] if match else 1
                detail = _BYTE_POS.sub("", str(error).replace("JSON is malformed: ", "")).strip()
                records.append(Record())
                issues.append((index, FieldIssue("json_syntax", "", f"line {number}, column {col}: JSON syntax error: {detail}")))
                continue
        record, found = inspect_record(obj)
        records.append(record)
        issues.extend((index, issue) for issue in found)
    return records, issues


def _decode_pickle(name: str, data: bytes) -> tuple[list[Record], list[tuple[int, FieldIssue]]] | FileProblem:
    import pickle

    from osctl.utils.safe_pickle import UnsafePickleError, safe_loads

    try:
        obj = safe_loads(data)
    except UnsafePickleError as exc:
        return FileProblem("pickle_refused", f"{name}: {exc}; save the records as plain lists and dicts (or as JSON/parquet)")
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, MemoryError) as exc:
        return FileProblem("file_unreadable", f"{name}: not a readable pickle ({type(exc).__name__}: {exc})")
    if not isinstance(obj, list | tuple):
        return FileProblem("not_a_list", f"{name}: the pickle holds a {type(obj).__name__}, expected a list of records")
    return _from_objects(obj)


def _decode_parquet(name: str, data: bytes) -> tuple[list[Record], list[tuple[int, FieldIssue]]] | FileProblem:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(pa.BufferReader(data))
    except (pa.ArrowException, OSError) as exc:
        return FileProblem("file_unreadable", f"{name}: not a readable parquet file ({exc})")
    return _from_objects(table.to_pylist())


def _as_table(decoder: Any) -> Any:
    def read(name: str, data: bytes, captions: bool = True) -> RecordTable | FileProblem:
        decoded = decoder(name, data)
        return decoded if isinstance(decoded, FileProblem) else build_columns(*decoded, captions=captions)

    return read


_READERS = {"json": _read_json, "jsonl": _as_table(_decode_jsonl), "pkl": _as_table(_decode_pickle),
            "parquet": _as_table(_decode_parquet)}


_NUMBERS = attrgetter("num_frames", "fps", "aesthetic", "aes", "tech", "motion", "resolution", "cut", "crop")
_PLAIN = ("num_frames", "fps", "aesthetic", "aes", "tech", "motion")  # then height, width: NUMERIC_COLUMNS


def _row_dtype() -> np.dtype:
    """msgpack layout of one row as ``msgspec`` encodes it.

    A row is ``(6 floats, Resolution(height, width), (2 floats), (4 floats))``; a struct is written as
    a map with its field names, so every row without ``None`` has the same size and byte layout.
    """
    fields: list[tuple[str, str]] = [("row", "u1")]
    for k in range(len(_PLAIN)):
        fields += [(f"t{k}", "u1"), (f"v{k}", ">f8")]
    fields += [("res_head", "u1"), ("height_key", "V7"), ("t6", "u1"), ("v6", ">f8"),
               ("width_key", "V6"), ("t7", "u1"), ("v7", ">f8")]
    for name, width in (("cut", 2), ("crop", 4)):
        fields.append((f"{name}_head", "u1"))
        for j in range(width):
            fields += [(f"{name}_t{j}", "u1"), (f"{name}{j}", ">f8")]
    return np.dtype(fields)


_ROW = _row_dtype()
_FLOAT64_TAG = 0xCB
_SCALAR_COUNT = 8
_HEADS = {"row": 0x90 | 9, "res_head": 0x82, "cut_head": 0x92, "crop_head": 0x94}
_KEYS = {"height_key": b"\xa6height", "width_key": b"\xa5width"}


def _numbers_fast(rows: list[Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Read all numbers of all rows in one step from their msgpack encoding (None if the layout differs).

    ``msgspec`` writes every Python float as a 9-byte float64, so rows without ``None`` share one fixed
    binary layout that :func:`numpy.frombuffer` reads directly (several times faster than iterating).
    """
    n = len(rows)
    blob = msgspec.msgpack.encode(rows)
    head = 1 if n < 16 else 3 if n < 1 << 16 else 5
    if n == 0 or len(blob) != head + n * _ROW.itemsize:
        return None
    table = np.frombuffer(blob, dtype=_ROW, offset=head)
    tags = [f"t{k}" for k in range(_SCALAR_COUNT)] + ["cut_t0", "cut_t1"] + [f"crop_t{j}" for j in range(4)]
    ok = all(bool((table[name] == value).all()) for name, value in _HEADS.items())
    ok = ok and all(bool((table[name] == _FLOAT64_TAG).all()) for name in tags)
    ok = ok and all(bool((table[name] == np.void(key)).all()) for name, key in _KEYS.items())
    if not ok:
        return None
    scalars = np.empty((_SCALAR_COUNT, n), dtype=np.float64)
    for k in range(_SCALAR_COUNT):
        scalars[k] = table[f"v{k}"]
    cut = np.empty((n, 2), dtype=np.float64)
    crop = np.empty((n, 4), dtype=np.float64)
    for j in range(2):
        cut[:, j] = table[f"cut{j}"]
    for j in range(4):
        crop[:, j] = table[f"crop{j}"]
    return scalars, cut, crop


def _numbers_slow(rows: list[Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The same as :func:`_numbers_fast` for rows holding ``None`` (explicit nulls)."""
    n = len(rows)
    res = [row[6] if row[6] is not None else NO_RESOLUTION for row in rows]
    scalars = np.array([(*row[:6], r.height, r.width) for row, r in zip(rows, res, strict=True)],
                       dtype=np.float64).reshape(n, _SCALAR_COUNT).T.copy()
    cut = np.array([row[7] if row[7] is not None else NO_CUT for row in rows], dtype=np.float64).reshape(n, 2)
    crop = np.array([row[8] if row[8] is not None else NO_CROP for row in rows], dtype=np.float64).reshape(n, 4)
    return scalars, cut, crop


# A JSON string can only be blank if its first character is whitespace, an escape, the closing quote,
# or a non-ASCII character (Unicode spaces); only those few are decoded to be checked exactly.
_BLANK_CANDIDATE_BYTES = np.zeros(256, dtype=bool)
for _byte in b' \t\r\n\\"':
    _BLANK_CANDIDATE_BYTES[_byte] = True
_BLANK_CANDIDATE_BYTES[0x80:] = True


def _caption_json(value: Any) -> bytes:
    if value is None or isinstance(value, str | list | tuple):
        return msgspec.json.encode(value)
    return msgspec.json.encode({"type": type(value).__name__})  # reported as a wrong type


def _captions(values: list[Any], keep: bool = True) -> tuple[pa.Array | None, np.ndarray, list[tuple[int, FieldIssue]]]:
    """Captions as one Arrow binary column of JSON texts (None unless ``keep``), their states and wrong-type issues."""
    n = len(values)
    if set(map(type, values)) - {msgspec.Raw}:
        values = [v if type(v) is msgspec.Raw else _caption_json(v) for v in values]
    lengths = np.fromiter(map(len, values), dtype=np.int64, count=n)
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    blob = b"".join(values)
    kind, width = (pa.binary(), np.int32) if offsets[-1] < 2**31 - 1 else (pa.large_binary(), np.int64)
    column = pa.Array.from_buffers(kind, n, [None, pa.py_buffer(offsets.astype(width)), pa.py_buffer(blob)]) if keep else None
    state = np.full(n, CAP_OK, dtype=np.int8)
    issues: list[tuple[int, FieldIssue]] = []
    if not n:
        return column, state, issues
    data = np.frombuffer(blob, dtype=np.uint8)
    starts = offsets[:-1]
    first = data[starts]
    is_null = first == ord("n")
    is_string = first == ord('"')
    is_list = first == ord("[")
    state[is_null] = CAP_MISSING
    candidates = is_string & _BLANK_CANDIDATE_BYTES[data[np.minimum(starts + 1, len(data) - 1)]]
    for i in np.flatnonzero(candidates | ~(is_null | is_string | is_list)):
        code, message = caption_state(memoryview(blob)[starts[i]:offsets[i + 1]])
        state[i] = code
        if message is not None:
            issues.append((int(i), FieldIssue("wrong_type", "cap", message)))
    lists = np.flatnonzero(is_list)
    if len(lists):
        _check_caption_lists(values, lists, state, issues)
    return column, state, issues


_RAW_LISTS = msgspec.json.Decoder(list[list[msgspec.Raw]])


def _check_caption_lists(values: list[Any], lists: np.ndarray, state: np.ndarray,
                         issues: list[tuple[int, FieldIssue]]) -> None:
    """States of list captions, all lists at once: items must be strings, none blank, the list not empty."""
    nested = _RAW_LISTS.decode(b"".join((b"[", b",".join([values[i] for i in lists]), b"]")))
    sizes = np.fromiter(map(len, nested), dtype=np.int64, count=len(nested))
    state[lists[sizes == 0]] = CAP_BLANK
    items = list(chain.from_iterable(nested))
    if not items:
        return
    owner = np.repeat(lists, sizes)
    item_offsets = np.zeros(len(items) + 1, dtype=np.int64)
    np.cumsum(np.fromiter(map(len, items), dtype=np.int64, count=len(items)), out=item_offsets[1:])
    blob = b"".join(items)
    data = np.frombuffer(blob, dtype=np.uint8)
    first = data[item_offsets[:-1]]
    second = data[np.minimum(item_offsets[:-1] + 1, len(data) - 1)]
    for k in np.flatnonzero((first != ord('"')) | _BLANK_CANDIDATE_BYTES[second]):
        i = int(owner[k])
        if state[i] == CAP_WRONG_TYPE:
            continue
        code, message = caption_state(values[i])
        state[i] = code
        if message is not None:
            issues.append((i, FieldIssue("wrong_type", "cap", message)))


_INTEGER_FIELDS = ("num_frames", "height", "width")


def _any_fraction(*arrays: np.ndarray) -> bool:
    """Whether any finite value has a fractional part (x - floor(x) is NaN for NaN and infinities)."""
    with np.errstate(invalid="ignore"):
        return any(bool(np.any(values - np.floor(values) > 0)) for values in arrays)


def _integrality_issues(numbers: dict[str, np.ndarray], cut: np.ndarray, crop: np.ndarray) -> list[tuple[int, FieldIssue]]:
    """Issues for integer fields holding fractional numbers (all numbers decode as floats)."""
    issues: list[tuple[int, FieldIssue]] = []
    with np.errstate(invalid="ignore"):
        for name in _INTEGER_FIELDS:
            values = numbers[name]
            field_name = name if name == "num_frames" else f"resolution.{name}"
            for i in np.flatnonzero(np.isfinite(values) & (values != np.floor(values))):
                issues.append((int(i), FieldIssue("wrong_type", field_name,
                                                  f"{field_name} is {values[i]!r}, expected an integer")))
        for name, matrix, text in (("cut", cut, "[start_frame, end_frame]"), ("crop", crop, "[x0, x1, y0, y1]")):
            fractional = (np.isfinite(matrix) & (matrix != np.floor(matrix))).any(axis=1)
            for i in np.flatnonzero(fractional):
                shown = ", ".join(repr(float(v)) for v in matrix[i])
                issues.append((int(i), FieldIssue(f"bad_{name}", name,
                                                  f"{name} is [{shown}], expected {matrix.shape[1]} integers {text}")))
    return issues


def _bounded(numbers: dict[str, np.ndarray], cut: np.ndarray, crop: np.ndarray) -> list[tuple[str, np.ndarray]]:
    """Each bounded field (see :data:`osctl.data.records.PLAUSIBLE_MAX`) with its column (or columns)."""
    return [("num_frames", numbers["num_frames"]), ("resolution.height", numbers["height"]),
            ("resolution.width", numbers["width"]), ("fps", numbers["fps"]), ("cut", cut), ("crop", crop)]


def _implausible(name: str, values: np.ndarray) -> np.ndarray:
    """Mask of ``values`` larger in size than the field's plausible maximum, or positive but below its minimum.

    NaN compares false, so absent values pass; other zero and negative values are left to the checks
    that say "must be positive" (an image's ``num_frames`` is not checked, but it is indexed: -1e300
    is out of range too).
    """
    beyond = np.abs(values) > PLAUSIBLE_MAX[name]
    low = PLAUSIBLE_MIN.get(name)
    if low is not None:
        beyond |= (values > 0) & (values < low)
    return beyond


def _any_beyond(numbers: dict[str, np.ndarray], cut: np.ndarray, crop: np.ndarray) -> bool:
    """Whether any value lies outside its plausible bounds (see :data:`osctl.data.records.PLAUSIBLE_MAX`).

    Two NaN-skipping reductions per column (``fmax``/``fmin``) decide it for nearly every file; the exact
    mask of :func:`_implausible` is built only for a column whose extremes cross a bound. This runs on
    every slice of every file: about 10 ms per million records.
    """
    for name, values in _bounded(numbers, cut, crop):
        if not values.size:
            continue
        high, low = np.fmax.reduce(values, axis=None), np.fmin.reduce(values, axis=None)
        bound, floor = PLAUSIBLE_MAX[name], PLAUSIBLE_MIN.get(name)
        if high > bound or low < -bound or (floor is not None and low < floor and _implausible(name, values).any()):
            return True
    return False


def _range_issues(numbers: dict[str, np.ndarray], cut: np.ndarray, crop: np.ndarray) -> list[tuple[int, FieldIssue]]:
    """``out_of_range`` issues for values outside their plausible bounds (absurd numbers such as 1e30 frames)."""
    issues: list[tuple[int, FieldIssue]] = []
    for name, values in _bounded(numbers, cut, crop):
        beyond = _implausible(name, values)
        for i in np.flatnonzero(beyond.any(axis=1) if beyond.ndim == 2 else beyond):
            row = values[i]
            shown = f"[{', '.join(_number(v) for v in row)}]" if values.ndim == 2 else _number(row)
            high = bool(np.any(np.abs(row) > PLAUSIBLE_MAX[name]))
            bound = f"beyond the plausible maximum {_number(PLAUSIBLE_MAX[name])}" if high else \
                f"below the plausible minimum {_number(PLAUSIBLE_MIN[name])}"
            issues.append((int(i), FieldIssue("out_of_range", name, f"{name} is {shown}, {bound}")))
    return issues


def _number(value: float) -> str:
    """A number as written in a message: integral values without ``.0`` unless huge (``1e+30``)."""
    value = float(value)
    return str(int(value)) if value.is_integer() and abs(value) < 1e16 else repr(value)


def build_columns(records: list[Record], issues: list[tuple[int, FieldIssue]] | None = None, *,
                  captions: bool = True) -> RecordTable:
    """Gather typed records into a :class:`RecordTable` with a few C-speed passes.

    Numbers are read through their msgpack encoding when no value is ``None`` (see
    :func:`_numbers_fast`); integer fields with a fractional value become ``wrong_type`` (``bad_cut``,
    ``bad_crop``) issues and their values are ignored. ``captions=False`` keeps only the caption
    states, not their texts (``cap_json`` is None).
    """
    n = len(records)
    rows = list(map(_NUMBERS, records))
    decoded = _numbers_fast(rows) or _numbers_slow(rows)
    del rows
    scalars, cut, crop = decoded
    numbers = {name: scalars[k] for k, name in enumerate(NUMERIC_COLUMNS)}
    all_issues = list(issues or [])
    integral = (*(numbers[name] for name in _INTEGER_FIELDS), cut, crop)
    found = _integrality_issues(numbers, cut, crop) if _any_fraction(*integral) else []
    if found:
        all_issues = sorted(all_issues + found, key=lambda item: item[0])
        for index, issue in found:
            if issue.code == "wrong_type":
                key = "num_frames" if issue.field == "num_frames" else issue.field.split(".")[1]
                numbers[key][index] = np.nan
            else:
                (cut if issue.field == "cut" else crop)[index] = np.nan
    beyond = _range_issues(numbers, cut, crop) if _any_beyond(numbers, cut, crop) else []
    if beyond:
        all_issues = sorted(all_issues + beyond, key=lambda item: item[0])
        for index, issue in beyond:
            if issue.field in ("cut", "crop"):
                (cut if issue.field == "cut" else crop)[index] = np.nan
            else:
                numbers[issue.field.removeprefix("resolution.")][index] = np.nan
    cap_json, cap_state, cap_issues = _captions(list(map(attrgetter("cap"), records)), captions)
    if cap_issues:
        all_issues = sorted(all_issues + cap_issues, key=lambda item: item[0])
    return RecordTable(
        n=n, path=pa.array(list(map(attrgetter("path"), records)), type=pa.string()), cap_json=cap_json,
        cap_state=cap_state, cut=cut, crop=crop, issues=all_issues, **numbers,
    )


def read_annotation(source: DataSource, *, workers: int = 1, captions: bool = True,
                    checksum: bool = True) -> LoadedAnnotation:
    """Read one annotation file; never raises for bad content (problems are returned).

    ``workers > 1`` lets a large JSON array be decoded by that many processes (see
    :mod:`osctl.data.parallel_decode`). ``captions=False`` skips keeping the caption texts (their
    states are still computed) and ``checksum=False`` skips the file's SHA-256 (``sha256`` is None):
    checks need neither, only the sample index does. The SHA-256 of a file decoded in slices is
    computed on a background thread after decoding (it would slow the decoding processes down) and
    waited for on first use of ``sha256``.
    """
    return read_annotations([source], workers=workers, captions=captions, checksum=checksum)[0]


@dataclass
class _Opened:
    """An annotation file open for reading: its descriptor, its stat, and its slices when it is decoded in slices."""

    source: DataSource
    fd: int
    stat: os.stat_result
    stat_ns: int
    ranges: list[tuple[int, int]] | None


@contextlib.contextmanager
def _closing(opened: Sequence[_Opened | LoadedAnnotation]) -> Iterator[None]:
    """Close every file in ``opened`` on the way out, whether the reading succeeded or not."""
    try:
        yield
    finally:
        for item in opened:
            if isinstance(item, _Opened):
                os.close(item.fd)


def _open(source: DataSource) -> _Opened | LoadedAnnotation:
    """Open ``source`` and find its slices; a :class:`LoadedAnnotation` with the problem when it cannot be read."""
    path = source.annotation
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return LoadedAnnotation(source, None, FileProblem(
            "file_missing", f"{path} does not exist (data.txt line {source.line})"))
    except IsADirectoryError:
        return LoadedAnnotation(source, None, _folder_problem(path))
    except OSError as exc:
        return LoadedAnnotation(source, None, _unreadable(path, exc))
    try:
        stat_ns = time.time_ns()
        stat = os.fstat(fd)
        folder = S_ISDIR(stat.st_mode)
        ranges = _slice_ranges(fd, stat.st_size) if source.format == "json" and not folder else None
    except BaseException:
        os.close(fd)
        raise
    if folder:
        os.close(fd)
        return LoadedAnnotation(source, None, _folder_problem(path))
    return _Opened(source, fd, stat, stat_ns, ranges)


def _finish(opened: _Opened, table: RecordTable | None, captions: bool, checksum: bool) -> LoadedAnnotation:
    """The :class:`LoadedAnnotation` of an opened file (read whole here unless ``table`` came from its slices).

    A file decoded in slices gets a pending :class:`FileDigest` (hashed later, off the decoding, from
    its own descriptor); the caller closes ``opened`` (:func:`_closing`).
    """
    source, fd, stat = opened.source, opened.fd, opened.stat
    decoded: RecordTable | FileProblem
    if table is not None:
        decoded = table
        digest: str | Digest | None = FileDigest(fd) if checksum else None
    else:
        try:
            with open(fd, "rb", closefd=False) as handle:
                data = handle.read()
        except OSError as exc:
            return LoadedAnnotation(source, None, _unreadable(source.annotation, exc))
        hasher = BytesDigest(data) if checksum else None  # hashes while the data is decoded
        with _gc_paused():
            try:
                decoded = _READERS[source.format](source.name, data, captions)
            except RecursionError:  # msgspec, json and pickle give up on values nested thousands deep
                decoded = FileProblem("file_unreadable", f"{source.name}: values are nested too deeply to "
                                      "read (an annotation is a list of flat records)")
        del data
        digest = hasher.hexdigest() if hasher is not None else None  # no thread left running: forks may follow
    problem = decoded if isinstance(decoded, FileProblem) else None
    result = None if problem is not None else decoded
    return LoadedAnnotation(source, result, problem, stat.st_size, stat.st_mtime_ns, digest,  # type: ignore[arg-type]
                            stat.st_ctime_ns, stat.st_ino, stat.st_dev, opened.stat_ns)


def _nothing() -> None:
    """The default of ``meanwhile``: no work of the caller's own."""


MAX_PENDING_DIGESTS = 64
"""Files open at once: those decoded together, and those whose digest waits for the background thread
(each keeps a descriptor open)."""


class _Once:
    """Call ``fn`` the first time this is called, never again."""

    def __init__(self, fn: Callable[[], None]) -> None:
        self._fn: Callable[[], None] | None = fn

    def __call__(self) -> None:
        fn, self._fn = self._fn, None
        if fn is not None:
            fn()


def _folder_problem(path: os.PathLike[str]) -> FileProblem:
    return FileProblem("file_unreadable", f"{path} is a folder, not an annotation file")


def _unreadable(path: os.PathLike[str], exc: OSError) -> FileProblem:
    return FileProblem("file_unreadable", f"cannot read {path}: {exc.strerror}")


def read_annotations(sources: Sequence[DataSource], *, workers: int = 1, captions: bool = True,
                     checksum: bool = True, meanwhile: Callable[[], None] | None = None) -> list[LoadedAnnotation]:
    """Read every annotation file in order; a broken file does not stop the others.

    Files are opened up to :data:`MAX_PENDING_DIGESTS` at a time and the slices of all large JSON
    arrays among them are decoded together, by ``workers`` processes (see :func:`read_annotation`).
    ``meanwhile`` is called exactly once: while the first files read in slices are decoded, else after
    every file is read. The files decoded in slices are hashed on one background thread started once
    every file is read (no thread runs while workers fork).
    """
    once = _Once(meanwhile or _nothing)
    loaded: list[LoadedAnnotation] = []
    pending: list[FileDigest] = []
    try:
        _read_windows(sources, workers, captions, checksum, once, loaded, pending)
    except BaseException:
        for digest in pending:
            digest.discard()
        raise
    hash_in_background(pending)
    once()
    return loaded


def _read_windows(sources: Sequence[DataSource], workers: int, captions: bool, checksum: bool,
                  once: Callable[[], None], loaded: list[LoadedAnnotation], pending: list[FileDigest]) -> None:
    """The loop of :func:`read_annotations`: append to ``loaded``, and to ``pending`` the digests left to compute."""
    for first in range(0, len(sources), MAX_PENDING_DIGESTS):
        opened: list[_Opened | LoadedAnnotation] = []
        with _closing(opened):
            opened.extend(_open(source) for source in sources[first:first + MAX_PENDING_DIGESTS])
            sliced = [o for o in opened if isinstance(o, _Opened) and o.ranges is not None]
            with _gc_paused():
                tables = _decode_sliced([(o.fd, o.ranges) for o in sliced], workers, captions,  # type: ignore[misc]
                                        once) if sliced else []
            from_slices = {id(o): table for o, table in zip(sliced, tables, strict=True)}
            for o in opened:
                item = o if isinstance(o, LoadedAnnotation) else _finish(o, from_slices.get(id(o)), captions, checksum)
                loaded.append(item)
                if isinstance(item.digest, FileDigest):
                    pending.append(item.digest)
                if len(pending) >= MAX_PENDING_DIGESTS:  # each holds a descriptor: hash them here and now
                    for digest in pending:
                        digest.compute()
                    pending.clear()
