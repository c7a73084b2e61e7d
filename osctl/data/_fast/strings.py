"""Vectorised facts about Arrow string columns, computed with numpy on their buffers.

Used by the path checks of :mod:`osctl.data.validate`: per-string 64-bit hashes (to find repeated
paths without hashing a million strings in a dictionary), the byte position of the last ``/``, and
which strings could hold ``.``/``..`` segments or doubled slashes. Every function takes a string
array or a chunked one and returns one numpy value per string; null strings count as empty.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

_SLASH, _DOT = ord("/"), ord(".")
_MULTIPLIER = np.uint64(0x9E3779B97F4A7C15)
_MIX = np.uint64(0xBF58476D1CE4E5B9)
_SHIFT_A, _SHIFT_B = np.uint64(31), np.uint64(29)


def _chunks(array: pa.Array | pa.ChunkedArray) -> list[pa.Array]:
    return list(array.chunks) if isinstance(array, pa.ChunkedArray) else [array]


def layout(chunk: pa.Array) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(data, starts, ends)`` of one string/binary chunk: its bytes and each string's byte range.

    ``data`` covers only this chunk's strings (``data[starts[i]:ends[i]]`` is string ``i``); a null
    string has ``starts[i] == ends[i]``.
    """
    n = len(chunk)
    if n == 0:
        return np.zeros(0, np.uint8), np.zeros(0, np.int64), np.zeros(0, np.int64)
    large = pa.types.is_large_string(chunk.type) or pa.types.is_large_binary(chunk.type)
    buffers = chunk.buffers()
    offsets = np.frombuffer(buffers[1], dtype=np.int64 if large else np.int32)[chunk.offset:chunk.offset + n + 1]
    offsets = offsets.astype(np.int64)
    first = int(offsets[0])
    data = np.frombuffer(buffers[2], dtype=np.uint8)[first:int(offsets[-1])] if buffers[2] is not None else \
        np.zeros(0, np.uint8)
    starts, ends = offsets[:-1] - first, offsets[1:] - first
    if chunk.null_count:
        valid = chunk.is_valid().to_numpy(zero_copy_only=False)
        ends = np.where(valid, ends, starts)
    return data, starts, ends


def hashes(array: pa.Array | pa.ChunkedArray, lengths: np.ndarray | None = None) -> np.ndarray:
    """A 64-bit hash (uint64) of every string; equal strings have equal hashes.

    ``lengths`` (one per string, optional) hashes only each string's first ``lengths[i]`` bytes.
    Different strings can share a hash (rarely): callers compare the strings themselves to be sure.
    """
    out = []
    done = 0
    for chunk in _chunks(array):
        data, starts, ends = layout(chunk)
        if lengths is not None:
            ends = starts + lengths[done:done + len(chunk)]
        done += len(chunk)
        out.append(_hash_ranges(data, starts, ends))
    return np.concatenate(out) if out else np.zeros(0, np.uint64)


def _words(data: np.ndarray) -> np.ndarray:
    """``words[p]``: the 8 bytes starting at byte ``p`` of ``data`` as one little-endian uint64 (zero-padded)."""
    padded = np.zeros(len(data) + 8, dtype=np.uint8)
    padded[:len(data)] = data
    return np.ndarray((len(data) + 1,), dtype="<u8", buffer=padded, strides=(1,))


def _low_bytes(word: np.ndarray, left: np.ndarray) -> np.ndarray:
    """``word`` with only its first ``left`` bytes kept where ``left < 8``."""
    short = left < 8
    if short.any():
        keep = np.where(short, (np.uint64(1) << (left.clip(0, 7).astype(np.uint64) * np.uint64(8))) - np.uint64(1),
                        np.uint64(0xFFFFFFFFFFFFFFFF))
        word = word & keep
    return word


def _hash_ranges(data: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Hash of every ``data[starts[i]:ends[i]]``, 8 bytes at a time for all strings together."""
    size = ends - starts
    h = size.astype(np.uint64) * _MULTIPLIER
    if not len(data):
        return _finish(h)
    words = _words(data)
    active = np.flatnonzero(size > 0)
    step = 0
    while len(active):
        left = size[active] - step
        word = _low_bytes(words[starts[active] + step], left)
        mixed = (h[active] ^ word) * _MIX
        h[active] = mixed ^ (mixed >> _SHIFT_A)
        step += 8
        active = active[left > 8]
    return _finish(h)


def same_as_previous(array: pa.Array | pa.ChunkedArray, lengths: np.ndarray) -> np.ndarray:
    """Whether the first ``lengths[i]`` bytes of string ``i`` equal those of string ``i - 1`` (exactly).

    ``lengths[i]`` must not exceed the length of string ``i``. The first string of every chunk counts
    as different from its predecessor.
    """
    out = []
    done = 0
    for chunk in _chunks(array):
        data, starts, _ = layout(chunk)
        n = len(chunk)
        size = lengths[done:done + n]
        done += n
        same = np.zeros(n, dtype=bool)
        if n > 1:
            pairs = np.flatnonzero(size[1:] == size[:-1]) + 1
            equal = np.ones(len(pairs), dtype=bool)
            words = _words(data) if len(data) else None
            live = np.flatnonzero(size[pairs] > 0)
            step = 0
            while len(live) and words is not None:
                row = pairs[live]
                left = size[row] - step
                differ = _low_bytes(words[starts[row] + step], left) != _low_bytes(words[starts[row - 1] + step], left)
                equal[live[differ]] = False
                live = live[~differ & (left > 8)]
                step += 8
            same[pairs[equal]] = True
        out.append(same)
    return np.concatenate(out) if out else np.zeros(0, bool)


def _finish(h: np.ndarray) -> np.ndarray:
    h = h ^ (h >> _SHIFT_A)
    h *= _MULTIPLIER
    return h ^ (h >> _SHIFT_B)


def last_slash(array: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Byte position of the last ``/`` inside every string, -1 when there is none (int64)."""
    out = []
    for chunk in _chunks(array):
        data, starts, ends = layout(chunk)
        slashes = np.flatnonzero(data == _SLASH)
        k = np.searchsorted(slashes, ends, side="left") - 1  # the last slash before each string's end
        position = slashes[np.maximum(k, 0)] if len(slashes) else np.zeros(len(ends), np.int64)
        out.append(np.where((k >= 0) & (position >= starts), position - starts, -1))
    return np.concatenate(out) if out else np.zeros(0, np.int64)


def first_byte_is(array: pa.Array | pa.ChunkedArray, byte: int) -> np.ndarray:
    """Whether every string starts with ``byte`` (False for empty and null strings)."""
    out = []
    for chunk in _chunks(array):
        data, starts, ends = layout(chunk)
        nonempty = ends > starts
        first = data[np.minimum(starts, max(len(data) - 1, 0))] if len(data) else np.zeros(len(starts), np.uint8)
        out.append(nonempty & (first == byte))
    return np.concatenate(out) if out else np.zeros(0, bool)


def may_have_dot_segments(array: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Strings that may hold a segment starting with ``.`` (``./``, ``../``) or a doubled ``//``.

    A superset: every string where a ``.`` follows a ``/`` or opens the string, or ``//`` occurs. The
    exact test (a regular expression) then only runs on these few.
    """
    out = []
    for chunk in _chunks(array):
        data, starts, ends = layout(chunk)
        flag = np.zeros(len(starts), dtype=bool)
        if len(data):
            opens = np.zeros(len(data) + 1, dtype=bool)
            opens[starts[ends > starts]] = True
            dots = np.flatnonzero(data == _DOT)
            after_slash = np.zeros(len(dots), dtype=bool)
            inner = dots > 0
            after_slash[inner] = data[dots[inner] - 1] == _SLASH
            hits = dots[after_slash | opens[dots]]
            slash = data == _SLASH
            doubled = np.flatnonzero(slash[:-1] & slash[1:] & ~opens[1:-1]) if len(data) > 1 else np.zeros(0, np.int64)
            for positions in (hits, doubled):
                if len(positions):
                    flag[np.minimum(np.searchsorted(ends, positions, side="right"), len(flag) - 1)] = True
        out.append(flag)
    return np.concatenate(out) if out else np.zeros(0, bool)
