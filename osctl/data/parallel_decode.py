"""Decode the slices of one large JSON array in several processes (Linux ``fork``).

msgspec holds the GIL while it decodes, so threads cannot share the work; forked children can, and
they inherit the file's bytes without a copy. Each child decodes a contiguous group of slices into
columns and leaves them in an anonymous shared memory area as one Arrow IPC stream (plus its
per-record issues as msgpack); the parent decodes the first group meanwhile, then maps the children's
columns without copying them and joins the parts in file order.

Anything unexpected in a child (a crash, a killed process) makes the parent decode that group
itself, so the result is always the sequential result. A slice that does not decode cleanly is
reported by raising the caller's fallback exception, exactly as the sequential path does.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import signal
import struct
import sys
from collections.abc import Callable

import msgspec
import numpy as np
import pyarrow as pa

from osctl.data.annotations import NUMERIC_COLUMNS, RecordTable, _SliceFailed, concat_tables
from osctl.data.records import FieldIssue

Ranges = list[tuple[int, int]]
Decoder = Callable[[bytes, Ranges], RecordTable]

_EXIT_OK, _EXIT_SLICE_FAILED, _EXIT_CRASHED = 0, 3, 4
_HEADER = struct.Struct("<QQ")


def _groups(ranges: Ranges, workers: int) -> list[Ranges]:
    """Cut ``ranges`` into at most ``workers`` contiguous groups of similar byte size."""
    total = sum(b - a for a, b in ranges)
    groups: list[Ranges] = [[]]
    target = total / workers
    size = 0
    for item in ranges:
        if size >= target * len(groups) and len(groups) < workers:
            groups.append([])
        groups[-1].append(item)
        size += item[1] - item[0]
    return [g for g in groups if g]


def _serialise(table: RecordTable) -> tuple[bytes, pa.Buffer]:
    columns: dict[str, pa.Array] = {"path": _combined(table.path), "cap_json": _combined(table.cap_json),
                                    "cap_state": pa.array(table.cap_state)}
    for name in NUMERIC_COLUMNS:
        columns[name] = pa.array(getattr(table, name))
    for j in range(2):
        columns[f"cut{j}"] = pa.array(np.ascontiguousarray(table.cut[:, j]))
    for j in range(4):
        columns[f"crop{j}"] = pa.array(np.ascontiguousarray(table.crop[:, j]))
    batch = pa.record_batch(columns)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, batch.schema) as writer:
        writer.write_batch(batch)
    issues = msgspec.msgpack.encode([(i, issue.code, issue.field, issue.message) for i, issue in table.issues])
    return issues, sink.getvalue()


def _combined(array: pa.Array | pa.ChunkedArray) -> pa.Array:
    return array.combine_chunks() if isinstance(array, pa.ChunkedArray) else array


def _deserialise(issues_blob: bytes, ipc: memoryview) -> RecordTable:
    batch = pa.ipc.open_stream(pa.py_buffer(ipc)).read_next_batch()
    column = batch.column
    n = batch.num_rows
    numbers = {name: column(name).to_numpy(zero_copy_only=False) for name in NUMERIC_COLUMNS}
    cut = np.column_stack([column(f"cut{j}").to_numpy(zero_copy_only=False) for j in range(2)]) if n else np.zeros((0, 2))
    crop = np.column_stack([column(f"crop{j}").to_numpy(zero_copy_only=False) for j in range(4)]) if n else np.zeros((0, 4))
    issues = [(int(i), FieldIssue(code, fld, message)) for i, code, fld, message in msgspec.msgpack.decode(issues_blob)]
    return RecordTable(n=n, path=column("path"), cap_json=column("cap_json"),
                       cap_state=column("cap_state").to_numpy(zero_copy_only=False), cut=cut, crop=crop,
                       issues=issues, **numbers)


def _child(area: mmap.mmap, data: bytes, group: Ranges, decode: Decoder) -> None:
    """Decode ``group`` and leave ``header | issues | Arrow IPC stream`` in the shared ``area``."""
    code = _EXIT_OK
    try:
        issues, ipc = _serialise(decode(data, group))
        end = _HEADER.size + len(issues) + ipc.size
        if end > len(area):
            code = _EXIT_CRASHED
        else:
            area[_HEADER.size:_HEADER.size + len(issues)] = issues
            area[_HEADER.size + len(issues):end] = memoryview(ipc)
            area[:_HEADER.size] = _HEADER.pack(len(issues), ipc.size)
    except _SliceFailed:
        code = _EXIT_SLICE_FAILED
    except BaseException:
        code = _EXIT_CRASHED
    finally:
        os._exit(code)


def decode_slices_parallel(data: bytes, ranges: Ranges, workers: int, decode: Decoder) -> RecordTable:
    """Decode ``ranges`` of ``data`` with ``decode`` in up to ``workers`` processes; same result as sequential.

    Each child writes its columns into an anonymous shared memory area sized generously from its
    share of bytes (untouched pages cost nothing); the parent reads them in place, without a copy.
    """
    groups = _groups(ranges, workers)
    if len(groups) < 2 or not sys.platform.startswith("linux"):
        return decode(data, ranges)
    children: list[tuple[int, mmap.mmap, Ranges]] = []
    try:
        for group in groups[1:]:
            size = 3 * sum(b - a for a, b in group) + (64 << 20)
            area = mmap.mmap(-1, size, flags=mmap.MAP_SHARED)
            pid = os.fork()
            if pid == 0:  # pragma: no cover - runs in the child, which always leaves through os._exit
                _child(area, data, group, decode)
            children.append((pid, area, group))
        parts = [decode(data, groups[0])]
        while children:
            pid, area, group = children.pop(0)
            _, status = os.waitpid(pid, 0)
            code = os.waitstatus_to_exitcode(status)
            if code == _EXIT_SLICE_FAILED:
                raise _SliceFailed
            if code != _EXIT_OK:
                parts.append(decode(data, group))  # the child died: do its share here
                continue
            issues_size, ipc_size = _HEADER.unpack(area[:_HEADER.size])
            view = memoryview(area)
            start = _HEADER.size + issues_size
            parts.append(_deserialise(bytes(view[_HEADER.size:start]), view[start:start + ipc_size]))
        return concat_tables(parts)
    finally:
        for pid, _, _ in children:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(OSError):
                os.waitpid(pid, 0)
