"""Annotation records as plain dicts: read every key of an existing file, write the JSON the curate commands emit.

:mod:`osctl.data.annotations` reads annotation files into typed columns for checking and indexing and
drops keys it does not know; curate commands instead rewrite records, so they keep every key of every
record (``synth`` ground truth, a user's own fields) and only add or change the ones they own.

Written annotation files are one JSON array with one record per line: readable, diff-friendly and
byte-identical for the same records, whatever engine produced them.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson

from osctl.errors import DataError


def read_records(path: Path, fmt: str) -> list[dict[str, Any]]:
    """Every record of the annotation file ``path`` (``fmt``: json, jsonl, pkl or parquet) as a dict.

    Raises :class:`DataError` naming the file when it cannot be read or is not a list of objects.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read annotation file {path}: {exc.strerror or exc}.") from None
    if fmt == "json":
        items = _json_list(path, data)
    elif fmt == "jsonl":
        items = []
        for number, line in enumerate(data.split(b"\n"), start=1):
            if line.strip():
                try:
                    items.append(orjson.loads(line))
                except orjson.JSONDecodeError as exc:
                    raise DataError(f"{path}:{number}: JSON syntax error ({exc}); fix the line or remove it.") from None
    elif fmt == "pkl":
        from osctl.utils.safe_pickle import UnsafePickleError, safe_loads

        try:
            items = safe_loads(data)
        except UnsafePickleError as exc:
            raise DataError(f"{path}: {exc}; save the records as plain lists and dicts (or as JSON).") from None
        except Exception as exc:  # the unpickler raises many types for a damaged file
            raise DataError(f"{path} is not a readable pickle ({type(exc).__name__}: {exc}).") from None
    elif fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            items = pq.read_table(pa.BufferReader(data)).to_pylist()
        except (pa.ArrowException, OSError) as exc:
            raise DataError(f"{path} is not a readable parquet file ({exc}).") from None
    else:
        raise DataError(f"{path}: unknown annotation format {fmt!r}; use .json, .jsonl, .pkl or .parquet.")
    if not isinstance(items, list | tuple):
        raise DataError(f"{path} holds a {type(items).__name__}, expected a list of records.")
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise DataError(f"{path}: record {index} is a {type(item).__name__}, expected an object; "
                            f"run `osctl data validate` on its data.txt.")
    return list(items)


def _json_list(path: Path, data: bytes) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        pass
    try:  # Python's parser accepts the NaN/Infinity tokens json.dump writes
        return json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path} is not valid JSON ({exc}); run `osctl data validate` on its data.txt.") from None


def records_json(records: Iterable[dict[str, Any]]) -> bytes:
    """A JSON array with one record per line (keys in the records' own order)."""
    lines = [orjson.dumps(record) for record in records]
    if not lines:
        return b"[]\n"
    return b"[\n" + b",\n".join(lines) + b"\n]\n"
