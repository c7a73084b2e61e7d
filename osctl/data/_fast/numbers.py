"""Read the numbers of typed records through their msgpack encoding (a fast path of
:func:`osctl.data.columns.build_columns`).

``msgspec`` writes every Python float as a 9-byte float64, so rows without ``None`` share one fixed
binary layout that :func:`numpy.frombuffer` reads directly, several times faster than iterating over
the rows. Its specification is :func:`osctl.data.columns.numbers_plain`: the same arrays for the same
rows; :func:`numbers_from_msgpack` returns None for rows it cannot read (any ``None``), and the plain
path reads those.
"""

from __future__ import annotations

from typing import Any

import msgspec
import numpy as np

SCALARS_BEFORE_RESOLUTION = 6
"""A row is ``(num_frames, fps, aesthetic, aes, tech, motion, Resolution(height, width), cut, crop)``."""


def _row_dtype() -> np.dtype:
    """msgpack layout of one row as ``msgspec`` encodes it.

    A row is ``(6 floats, Resolution(height, width), (2 floats), (4 floats))``; a struct is written as
    a map with its field names, so every row without ``None`` has the same size and byte layout.
    """
    fields: list[tuple[str, str]] = [("row", "u1")]
    for k in range(SCALARS_BEFORE_RESOLUTION):
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


def numbers_from_msgpack(rows: list[Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
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
