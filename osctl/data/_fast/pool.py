"""Decode the slices of large JSON array files in several processes (Linux ``fork``).

msgspec holds the GIL while it decodes, so threads cannot share the work; forked children can. The
work is a list of items ``(fd, start, stop)``: byte ranges of whole records of one or more open files
(a data.txt's files are decoded together, so many medium files keep every core busy too). Items are
handed out through a pipe that holds one 4-byte token per run of items: every process, the parent
included, takes the next token when it is free (a pipe read of 4 bytes is atomic, so no lock is
needed), which keeps the processes equally busy even when one of them is slowed down by other work.
Each process reads its items from the files itself (``os.preadv`` on the inherited descriptors); no
file is ever held in memory as a whole.

A child writes every item it decodes into its own anonymous shared memory area as one Arrow IPC
record batch, followed by a trailer listing the items done, their per-record issues, and the items
that did not decode (msgpack). The parent maps the children's batches without copying them.

Anything unexpected in a child (a crash, a killed process, a full area) only leaves some items
without a result; the parent decodes those itself, so the result is always the sequential result.
An item that does not decode cleanly comes back as None (its file is then read whole by the caller,
which reports problems exactly).
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

from osctl.data.records import FieldIssue
from osctl.data.table import NUMERIC_COLUMNS, RecordTable

Items = list[tuple[int, int, int]]
"""``(fd, start, stop)``: bytes ``start:stop`` of the open file ``fd``, whole records of a JSON array."""
SliceDecoder = Callable[[int, int, int], RecordTable | None]
"""Decodes one item; None when it does not decode cleanly."""

_EXIT_OK, _EXIT_CRASHED = 0, 4
_HEADER = struct.Struct("<QQQ")  # done flag, IPC stream bytes, trailer bytes
_TOKEN = struct.Struct("<I")
MAX_TOKENS = 1024
"""Tokens in the work pipe: 4 KiB, the smallest capacity a Linux pipe can have, so writing never blocks."""
_RESERVE = 1 << 20


def _token_runs(n_items: int) -> list[tuple[int, int]]:
    """Runs of consecutive item numbers, one per token (one item each unless there are very many)."""
    per = max(1, -(-n_items // MAX_TOKENS))
    return [(k, min(k + per, n_items)) for k in range(0, n_items, per)]


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


def _child(area: mmap.mmap, queue: int, items: Items, runs: list[tuple[int, int]], decode: SliceDecoder) -> None:
    """Take tokens until none is left; leave ``header | IPC stream | trailer`` in the shared ``area``.

    Stops early (leaving the rest of the work to the parent) when the area would overflow.
    """
    code = _EXIT_OK
    try:
        body = memoryview(area)[_HEADER.size:]
        sink = pa.FixedSizeBufferWriter(pa.py_buffer(body))
        writer: pa.ipc.RecordBatchStreamWriter | None = None
        done: list[tuple[int, list[tuple[int, str, str, str]]]] = []
        failed: list[int] = []
        full = False
        while not full and (token := _take(queue)) is not None:
            for k in range(*runs[token]):
                table = decode(*items[k])
                if table is None:
                    failed.append(k)
                    continue
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
        trailer = msgspec.msgpack.encode([done, failed])
        if ipc_size + len(trailer) <= len(body):
            body[ipc_size:ipc_size + len(trailer)] = trailer
            area[:_HEADER.size] = _HEADER.pack(1, ipc_size, len(trailer))
    except BaseException:
        code = _EXIT_CRASHED
    finally:
        os._exit(code)


def _results(area: mmap.mmap) -> tuple[dict[int, RecordTable], list[int]]:
    """The items a child decoded, by item number, and those that did not decode (nothing when it left nothing usable)."""
    flag, ipc_size, trailer_size = _HEADER.unpack(area[:_HEADER.size])
    if flag != 1:
        return {}, []
    view = memoryview(area)[_HEADER.size:]
    done, failed = msgspec.msgpack.decode(view[ipc_size:ipc_size + trailer_size])
    if not done:
        return {}, failed
    reader = pa.ipc.open_stream(pa.py_buffer(view[:ipc_size]))
    return {k: _table(reader.read_next_batch(), issues) for k, issues in done}, failed


def decode_slices_parallel(items: Items, workers: int, decode: SliceDecoder,
                           start_background: Callable[[], None] | None = None) -> list[RecordTable | None]:
    """Decode every item with ``decode`` in up to ``workers`` processes; one table per item, None where it failed
    (``decode`` returned None).

    Same result as decoding the items one after the other. ``start_background`` is called once the
    children are forked (a thread started earlier would be running during the fork).
    """
    runs = _token_runs(len(items))
    processes = min(workers, len(runs))
    if processes < 2 or not sys.platform.startswith("linux"):
        if start_background is not None:
            start_background()
        return [decode(*item) for item in items]
    queue, feed = os.pipe()
    try:
        os.write(feed, b"".join(_TOKEN.pack(t) for t in range(len(runs))))
    finally:
        os.close(feed)
    # Generous: untouched pages of an anonymous mapping cost nothing.
    capacity = 2 * sum(stop - start for _, start, stop in items) + (64 << 20)
    children: list[tuple[int, mmap.mmap]] = []
    try:
        for _ in range(processes - 1):
            area = mmap.mmap(-1, capacity, flags=mmap.MAP_SHARED)
            pid = os.fork()
            if pid == 0:  # pragma: no cover - runs in the child, which always leaves through os._exit
                _child(area, queue, items, runs, decode)
            children.append((pid, area))
        if start_background is not None:
            start_background()
        results: dict[int, RecordTable | None] = {}
        while (token := _take(queue)) is not None:
            for k in range(*runs[token]):
                results[k] = decode(*items[k])
        while children:
            pid, area = children[0]
            _, status = os.waitpid(pid, 0)
            children.pop(0)
            if os.waitstatus_to_exitcode(status) == _EXIT_OK:
                done, failed = _results(area)
                results.update(done)
                results.update(dict.fromkeys(failed))
        for k, item in enumerate(items):  # whatever a child left undone
            if k not in results:
                results[k] = decode(*item)
        return [results[k] for k in range(len(items))]
    finally:
        os.close(queue)
        for pid, _ in children:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(OSError):
                os.waitpid(pid, 0)
