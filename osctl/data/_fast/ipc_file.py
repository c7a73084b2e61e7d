"""Write an Arrow IPC file first and its schema metadata last.

The sample index keeps its fingerprint (the SHA-256 of every annotation file) in the schema
metadata, which the IPC file format stores at the start of the file and again in its footer.
Writing the columns with placeholder metadata of the same length, then rewriting only the metadata
bytes, lets the hashing (:mod:`osctl.data.checksum`) run while the columns are written instead of
before. The file is then byte for byte what ``pyarrow.ipc.new_file`` writes with the final metadata;
when the final metadata would change the layout (another length), the file is written again whole.

Typical use::

    layout = write_table(path, table, placeholder_metadata)
    ...  # finish computing the metadata
    rewrite_metadata(path, table, layout, final_metadata)
"""

from __future__ import annotations

import bisect
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

Metadata = dict[bytes, bytes]


@dataclass
class Layout:
    """Where each write of one IPC file went: ``(offset, length)`` per write, in order."""

    writes: list[tuple[int, int]] = field(default_factory=list)


class _TableBuffers:
    """Address ranges of a table's column buffers, to tell column data from metadata in the writes."""

    def __init__(self, table: pa.Table) -> None:
        ranges = sorted({(buf.address, buf.address + buf.size) for column in table.columns
                         for chunk in column.chunks for buf in chunk.buffers() if buf is not None})
        self._starts = [start for start, _ in ranges]
        self._ends = [end for _, end in ranges]

    def holds(self, data: Any) -> bool:
        """Whether ``data`` is (a part of) one of the table's buffers."""
        if not isinstance(data, pa.Buffer) or data.size == 0:
            return False
        k = bisect.bisect_right(self._starts, data.address) - 1
        return k >= 0 and data.address + data.size <= self._ends[k]


class _Sink:
    """A write-only file object for :class:`pyarrow.PythonFile`: writes through to ``fd`` (or nowhere)."""

    def __init__(self, fd: int | None, table: _TableBuffers) -> None:
        self._fd = fd
        self._table = table
        self.pos = 0
        self.layout = Layout()
        self.patches: list[tuple[int, bytes]] = []
        self.closed = False

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        size = view.nbytes
        self.layout.writes.append((self.pos, size))
        if not self._table.holds(data):
            self.patches.append((self.pos, bytes(view)))
        if self._fd is not None:
            _pwrite_all(self._fd, view, self.pos)
        self.pos += size
        return size

    def tell(self) -> int:
        return self.pos

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True


def _pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    """Write all of ``data`` at ``offset`` of ``fd`` (``os.pwrite`` may write less than asked)."""
    done = 0
    while done < data.nbytes:
        done += os.pwrite(fd, data[done:], offset + done)


def _write(sink: _Sink, table: pa.Table, metadata: Metadata) -> None:
    schema = table.schema.with_metadata(metadata)
    stream = pa.PythonFile(sink, mode="w")
    with pa.ipc.new_file(stream, schema) as writer:
        writer.write_table(table.replace_schema_metadata(metadata))


def write_table(path: Path, table: pa.Table, metadata: Metadata) -> Layout:
    """Write ``table`` with schema ``metadata`` as an Arrow IPC file at ``path`` (created or truncated)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        sink = _Sink(fd, _TableBuffers(table))
        _write(sink, table, metadata)
    finally:
        os.close(fd)
    return sink.layout


def rewrite_metadata(path: Path, table: pa.Table, layout: Layout, metadata: Metadata) -> None:
    """Make the file that :func:`write_table` wrote at ``path`` carry ``metadata`` instead.

    Only the bytes that are not column data are rewritten, when the layout is unchanged; otherwise
    the whole file is written again.
    """
    dry = _Sink(None, _TableBuffers(table))
    _write(dry, table, metadata)
    if dry.layout.writes != layout.writes:
        write_table(path, table, metadata)
        return
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        for offset, data in dry.patches:
            _pwrite_all(fd, memoryview(data), offset)
    finally:
        os.close(fd)
