"""Decode a large JSON array file in slices of whole records, straight from the file (a fast path of
:mod:`osctl.data.annotations`).

A large JSON array file is decoded in slices of about :data:`CHUNK_BYTES`, cut at top-level record
boundaries (``}`` ``,`` ``{`` with optional whitespace) and read from the file one at a time: the file
is never held in memory as a whole, columns are gathered while each slice's objects are still in the
CPU cache, and only one slice of Python objects is alive at a time. The slices of all files of a
data.txt are shared between processes when there are several workers (:mod:`osctl.data._fast.pool`).

Its specification is the plain path, reading the whole file in one piece
(:func:`osctl.data.annotations.read_annotations` on a file of at most one slice): the same table.
A cut that falls inside a string or a nested value always leaves its slice unbalanced, so that slice
fails to decode (:class:`SliceFailed`) and the whole file is read by the plain path instead; so does
a slice with a syntax error or NaN tokens. The result never depends on where the cuts fall. 1 MiB
slices (about 3,600 records) stay in a core's cache better than larger or smaller ones
(benchmarks/README.md, "Defaults measured").
"""

from __future__ import annotations

import mmap
import os
import re
from collections.abc import Callable
from functools import partial
from typing import Any

import msgspec

from osctl.data._fast import pool
from osctl.data.columns import build_columns
from osctl.data.records import RAW_LIST, RECORD_LIST, records_from_raws
from osctl.data.table import RecordTable, concat_tables

CHUNK_BYTES = 1 << 20
PARALLEL_MIN_BYTES = 64 << 20
_WHITESPACE = frozenset(b" \t\r\n")
_RECORD_SEPARATOR = re.compile(rb"\}\s*,\s*\{")
_OPEN, _CLOSE = ord("["), ord("]")


class SliceFailed(Exception):
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
    """Columns of ``piece`` (``[`` records ``]``); raises :class:`SliceFailed` when it is not such a list."""
    try:
        return build_columns(RECORD_LIST.decode(piece), captions=captions)
    except (msgspec.DecodeError, RecursionError):
        raise SliceFailed from None
    except msgspec.ValidationError:
        pass
    try:
        raws = RAW_LIST.decode(piece)
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
        raise SliceFailed from None
    return build_columns(*records_from_raws(raws), captions=captions)


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
            raise SliceFailed
        done += got
    del view
    return _decode_piece(piece, captions)


def read_slice_or_none(fd: int, start: int, stop: int, *, captions: bool = True) -> RecordTable | None:
    """:func:`read_slice`, or None when the slice does not decode (what the decoding processes run)."""
    try:
        return read_slice(fd, start, stop, captions=captions)
    except SliceFailed:
        return None


def _split_file(fd: int, size: int) -> list[tuple[int, int]] | None:
    """:func:`split_array` on the open file ``fd`` through a read-only memory map (None when not an array)."""
    if size <= 1:
        return None
    with mmap.mmap(fd, size, prot=mmap.PROT_READ) as view:
        return split_array(view)


def slice_ranges(fd: int, size: int) -> list[tuple[int, int]] | None:
    """Slices of an open JSON file worth decoding apart (None: read it whole: small, not an array, one slice)."""
    if size <= CHUNK_BYTES:
        return None
    try:
        ranges = _split_file(fd, size)
    except (OSError, ValueError):
        return None
    return ranges if ranges is not None and len(ranges) >= 2 else None


def decode_sliced(files: list[tuple[int, list[tuple[int, int]]]], workers: int, captions: bool,
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
        items = [(fd, start, stop) for fd, ranges in files for start, stop in ranges]
        tables = pool.decode_slices_parallel(items, workers, partial(read_slice_or_none, captions=captions),
                                             start_background)
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
        except SliceFailed:
            out.append(None)
    return out

