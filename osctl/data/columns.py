"""Gather typed records into a :class:`~osctl.data.table.RecordTable` with a few C-speed passes.

:func:`build_columns` is where every reader ends: the numbers become float64 columns (NaN = absent),
integer fields holding fractions and values beyond the plausible bounds
(:data:`osctl.data.records.PLAUSIBLE_MAX`) become per-record issues, and the captions become one
Arrow binary column of their JSON texts with a state per record (missing, blank, wrong type).
"""

from __future__ import annotations

from itertools import chain
from operator import attrgetter
from typing import Any

import msgspec
import numpy as np
import pyarrow as pa

from osctl.data._fast.numbers import numbers_from_msgpack
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
    Record,
    caption_state,
)
from osctl.data.table import NUMERIC_COLUMNS, RecordTable

ROW = attrgetter("num_frames", "fps", "aesthetic", "aes", "tech", "motion", "resolution", "cut", "crop")
"""The numeric fields of a record as one tuple: what :func:`numbers_plain` and the msgpack fast path read."""


_SCALAR_COUNT = len(NUMERIC_COLUMNS)


def numbers_plain(rows: list[Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every number of every row: ``(8 x n scalars in NUMERIC_COLUMNS order, n x 2 cut, n x 4 crop)``, NaN for
    absent values (the specification of :func:`osctl.data._fast.numbers.numbers_from_msgpack`)."""
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
    :func:`osctl.data._fast.numbers.numbers_from_msgpack`); integer fields with a fractional value become ``wrong_type`` (``bad_cut``,
    ``bad_crop``) issues and their values are ignored. ``captions=False`` keeps only the caption
    states, not their texts (``cap_json`` is None).
    """
    n = len(records)
    rows = list(map(ROW, records))
    decoded = numbers_from_msgpack(rows) or numbers_plain(rows)
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


