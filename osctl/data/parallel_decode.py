"""Decode the slices of one large JSON array file in several processes (Linux ``fork``).

msgspec holds the GIL while it decodes, so threads cannot share the work; forked children can. The
slices are handed out through a pipe that holds one 4-byte token per run of slices: every process,
the parent included, takes the next token when it is free (a pipe read of 4 bytes is atomic, so no
lock is needed), which keeps the processes equally busy even when one of them is slowed down by other
work. Each process reads its slices from the file itself (``os.preadv``); the file is never held in
memory as a whole.

A child writes every slice it decodes into its own anonymous shared memory area as one Arrow IPC
record batch, followed by a trailer listing the slices and their per-record issues (msgpack). The
parent maps the children's batches without copying them and joins all slices in file order.

Anything unexpected in a child (a crash, a killed process, a full area) only leaves some slices
without a result; the parent decodes those itself, so the result is always the sequential result. A
slice that does not decode cleanly is reported by raising the caller's fallback exception, exactly as
the sequential path does.
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
SliceDecoder = Callable[[int, int, int], RecordTable]

_EXIT_OK, _EXIT_SLICE_FAILED, _EXIT_CRASHED = 0, 3, 4
_HEADER = struct.Struct("<QQQ")  # done flag, IPC stream bytes, trailer bytes
_TOKEN = struct.Struct("<I")
MAX_TOKENS = 1024
"""Tokens in the work pipe: 4 KiB, the smallest capacity a Linux pipe can have, so writing never blocks."""
_RESERVE = 1 << 20


def _token_runs(n_slices: int) -> list[tuple[int, int]]:
    """Runs of consecutive slice numbers, one per token (one slice each unless there are very many)."""
    per = max(1, -(-n_slices // MAX_TOKENS))
    return [(k, min(k + per, n_slices)) for k in range(0, n_slices, per)]


def _take(queue: int) -> int | None:
    """The next token from the work pipe, None when every token is taken."""
    raw = os.read(queue, _TOKEN.size)
    return _TOKEN.unpack(raw)[0] if len(raw) == _TOKEN.size else None


def _batch(table: RecordTable) -> pa.RecordBatch:
    columns: dict[str, pa.Array] = {"path": _combined(table.path), "cap_state": pa.array(table.cap_state)}
    if table.cap_json is not None:
        columns["cap_json"] = _combined(table.cap_json)
    for name in NUMERIC_COLUMNS:
        columns[name] = pa.array(getattr(table, name))
    columns["cut"] = pa.FixedSizeListArray.from_arrays(pa.array(np.ascontiguousarray(table.cut).reshape(-1)), 2)
    columns["crop"] = pa.FixedSizeListArray.from_arrays(pa.array(np.ascontiguousarray(table.crop).reshape(-1)), 4)
    return pa.record_batch(columns)


def _combined(array: pa.Array | pa.ChunkedArray) -> pa.Array:
    return array.combine_chunks() if isinstance(array, pa.ChunkedArray) else array


def _table(batch: pa.RecordBatch, issues: list[tuple[int, str, str, str]]) -> RecordTable:
    """The :class:`RecordTable` of one batch written by :func:`_batch`, without copying its columns."""
    column = batch.column
    n = batch.num_rows
    numbers = {name: column(name).to_numpy(zero_copy_only=False) for name in NUMERIC_COLUMNS}
    cut = column("cut").values.to_numpy(zero_copy_only=False).reshape(n, 2)
    crop = column("crop").values.to_numpy(zero_copy_only=False).reshape(n, 4)
    cap_json = column("cap_json") if "cap_json" in batch.schema.names else None
    return RecordTable(n=n, path=column("path"), cap_json=cap_json,
                       cap_state=column("cap_state").to_numpy(zero_copy_only=False), cut=cut, crop=crop,
                       issues=[(int(i), FieldIssue(code, fld, message)) for i, code, fld, message in issues],
                       **numbers)


def _child(area: mmap.mmap, fd: int, queue: int, ranges: Ranges, runs: list[tuple[int, int]],
           decode: SliceDecoder) -> None:
    """Take tokens until none is left; leave ``header | IPC stream | trailer`` in the shared ``area``.

    Stops early (leaving the rest of the work to the parent) when the area would overflow.
    """
    code = _EXIT_OK
    try:
        body = memoryview(area)[_HEADER.size:]
        sink = pa.FixedSizeBufferWriter(pa.py_buffer(body))
        writer: pa.ipc.RecordBatchStreamWriter | None = None
        done: list[tuple[int, list[tuple[int, str, str, str]]]] = []
        full = False
        while not full and (token := _take(queue)) is not None:
            for k in range(*runs[token]):
                table = decode(fd, *ranges[k])
                batch = _batch(table)
                if sink.tell() + pa.ipc.get_record_batch_size(batch) + _RESERVE > len(body):
                    full = True
                    break
                if writer is None:
                    writer = pa.ipc.new_stream(sink, batch.schema)
                writer.write_batch(batch)
                done.append((k, [(i, issue.code, issue.field, issue.message) for i, issue in table.issues]))
        if writer is not None:
            writer.close()
        ipc_size = sink.tell()
        trailer = msgspec.msgpack.encode(done)
        if ipc_size + len(trailer) <= len(body):
            body[ipc_size:ipc_size + len(trailer)] = trailer
            area[:_HEADER.size] = _HEADER.pack(1, ipc_size, len(trailer))
    except _SliceFailed:
        code = _EXIT_SLICE_FAILED
    except BaseException:
        code = _EXIT_CRASHED
    finally:
        os._exit(code)


def _results(area: mmap.mmap) -> dict[int, RecordTable]:
    """The slices a child finished, by slice number (empty when it left nothing usable)."""
    flag, ipc_size, trailer_size = _HEADER.unpack(area[:_HEADER.size])
    if flag != 1:
        return {}
    view = memoryview(area)[_HEADER.size:]
    done = msgspec.msgpack.decode(view[ipc_size:ipc_size + trailer_size])
    if not done:
        return {}
    reader = pa.ipc.open_stream(pa.py_buffer(view[:ipc_size]))
    return {k: _table(reader.read_next_batch(), issues) for k, issues in done}


def decode_slices_parallel(fd: int, ranges: Ranges, workers: int, decode: SliceDecoder,
                           start_background: Callable[[], None] | None = None) -> RecordTable:
    """Decode ``ranges`` of the open file ``fd`` with ``decode`` in up to ``workers`` processes.

    Same result as decoding the slices one after the other. ``start_background`` is called once the
    children are forked (a thread started earlier would be running during the fork).
    """
    runs = _token_runs(len(ranges))
    processes = min(workers, len(runs))
    if processes < 2 or not sys.platform.startswith("linux"):
        if start_background is not None:
            start_background()
        return concat_tables([decode(fd, a, b) for a, b in ranges])
    queue, feed = os.pipe()
    try:
        os.write(feed, b"".join(_TOKEN.pack(t) for t in range(len(runs))))
    finally:
        os.close(feed)
    # Generous: untouched pages of an anonymous mapping cost nothing.
    capacity = 2 * (ranges[-1][1] - ranges[0][0]) + (64 << 20)
    children: list[tuple[int, mmap.mmap]] = []
    try:
        for _ in range(processes - 1):
            area = mmap.mmap(-1, capacity, flags=mmap.MAP_SHARED)
            pid = os.fork()
            if pid == 0:  # pragma: no cover - runs in the child, which always leaves through os._exit
                _child(area, fd, queue, ranges, runs, decode)
            children.append((pid, area))
        if start_background is not None:
            start_background()
        results: dict[int, RecordTable] = {}
        while (token := _take(queue)) is not None:
            for k in range(*runs[token]):
                results[k] = decode(fd, *ranges[k])
        while children:
            pid, area = children[0]
            _, status = os.waitpid(pid, 0)
            children.pop(0)
            code = os.waitstatus_to_exitcode(status)
            if code == _EXIT_SLICE_FAILED:
                raise _SliceFailed
            if code == _EXIT_OK:
                results.update(_results(area))
        for k, (a, b) in enumerate(ranges):  # whatever a child left undone
            if k not in results:
                results[k] = decode(fd, a, b)
        return concat_tables([results[k] for k in range(len(ranges))], threads=processes)
    finally:
        os.close(queue)
        for pid, _ in children:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(OSError):
                os.waitpid(pid, 0)
