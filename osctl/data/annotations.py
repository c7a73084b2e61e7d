"""Read annotation files (.json, .jsonl, .pkl, .parquet) into columns: :func:`read_annotations`.

Each file becomes a :class:`~osctl.data.table.RecordTable` (:mod:`osctl.data.table`); a broken file
becomes a :class:`~osctl.data.table.FileProblem` and the other files are still read.

The plain path, which is also the specification of the fast one: the whole file is read, decoded by
msgspec into typed structs (with the cyclic garbage collector paused) and gathered into columns
(:func:`osctl.data.columns.build_columns`). Only when the typed decode fails does the slow path run:
the file is split into raw records, each is decoded on its own, and those that still fail are read
leniently (:func:`osctl.data.records.inspect_record`) so that every problem is reported, not just the
first. Non-JSON formats go through :func:`msgspec.convert` with the same types; pickles are loaded
with :func:`osctl.utils.safe_pickle.safe_loads` only.

The fast path: a large JSON array is decoded in slices of whole records straight from the file,
shared between processes when there are several workers (:mod:`osctl.data._fast.slices`); any
slice that does not decode cleanly sends its file back to the plain path.

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
from dataclasses import dataclass
from stat import S_ISDIR
from typing import Any

import msgspec
import pyarrow as pa

from osctl.data._fast.slices import decode_sliced, slice_ranges
from osctl.data.checksum import BytesDigest, Digest, FileDigest, hash_in_background
from osctl.data.columns import build_columns
from osctl.data.datatxt import DataSource
from osctl.data.records import (
    ANY_JSON,
    RAW_LIST,
    RECORD,
    RECORD_LIST,
    FieldIssue,
    Issues,
    Record,
    inspect_record,
    records_from_objects,
    records_from_raws,
)
from osctl.data.table import FileProblem, LoadedAnnotation, RecordTable

_BYTE_POS = re.compile(r"\(byte (\d+)\)")


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


def _decode_json(name: str, data: bytes) -> tuple[list[Record], Issues] | FileProblem:
    """Whole-file JSON decoding (typed, then per record); exact syntax-error positions."""
    try:
        return RECORD_LIST.decode(data), []
    except msgspec.ValidationError:
        pass
    except msgspec.DecodeError:
        pass
    try:
        raws = RAW_LIST.decode(data)
    except msgspec.ValidationError:
        top = _top_level_type(data)
        return FileProblem("not_a_list", f"{name}: the top level is a JSON {top}, expected a list of records")
    except msgspec.DecodeError as exc:
        problem = _syntax_problem(name, data, exc)
        if problem is not None:
            return problem
        return _decode_json_stdlib(name, data)
    return records_from_raws(raws)


def _read_json(name: str, data: bytes, captions: bool = True) -> RecordTable | FileProblem:
    decoded = _decode_json(name, data)
    return decoded if isinstance(decoded, FileProblem) else build_columns(*decoded, captions=captions)


def _top_level_type(data: bytes) -> str:
    stripped = data.lstrip()[:1]
    return {b"{": "object", b'"': "string", b"": "nothing"}.get(stripped, "value")


def _decode_json_stdlib(name: str, data: bytes) -> tuple[list[Record], Issues] | FileProblem:
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
    return records_from_objects(obj)


def _decode_jsonl(name: str, data: bytes) -> tuple[list[Record], Issues] | FileProblem:
    try:
        return RECORD.decode_lines(data), []
    except (msgspec.ValidationError, msgspec.DecodeError):
        pass
    records: list[Record] = []
    issues: Issues = []
    for number, line in enumerate(data.split(b"\n"), start=1):
        if not line.strip():
            continue
        index = len(records)
        error: msgspec.DecodeError | None = None
        try:
            records.append(RECORD.decode(line))
            continue
        except msgspec.ValidationError:
            try:  # a wrong type can come before a NaN/Infinity token or a syntax error
                obj: Any = ANY_JSON.decode(line)
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


def _decode_pickle(name: str, data: bytes) -> tuple[list[Record], Issues] | FileProblem:
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
    return records_from_objects(obj)


def _decode_parquet(name: str, data: bytes) -> tuple[list[Record], Issues] | FileProblem:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(pa.BufferReader(data))
    except (pa.ArrowException, OSError) as exc:
        return FileProblem("file_unreadable", f"{name}: not a readable parquet file ({exc})")
    return records_from_objects(table.to_pylist())


def _as_table(decoder: Any) -> Any:
    def read(name: str, data: bytes, captions: bool = True) -> RecordTable | FileProblem:
        decoded = decoder(name, data)
        return decoded if isinstance(decoded, FileProblem) else build_columns(*decoded, captions=captions)

    return read


_READERS = {"json": _read_json, "jsonl": _as_table(_decode_jsonl), "pkl": _as_table(_decode_pickle),
            "parquet": _as_table(_decode_parquet)}




def read_annotation(source: DataSource, *, workers: int = 1, captions: bool = True,
                    checksum: bool = True) -> LoadedAnnotation:
    """Read one annotation file; never raises for bad content (problems are returned).

    ``workers > 1`` lets a large JSON array be decoded by that many processes (see
    :mod:`osctl.data._fast.pool`). ``captions=False`` skips keeping the caption texts (their
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
        ranges = slice_ranges(fd, stat.st_size) if source.format == "json" and not folder else None
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
                tables = decode_sliced([(o.fd, o.ranges) for o in sliced], workers, captions,  # type: ignore[misc]
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
