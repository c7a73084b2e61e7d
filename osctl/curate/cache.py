"""Remember finished per-file work, so a rerun does only what changed and an interrupted run resumes.

Each curate command keeps one journal in its output folder, ``.osctl-cache/<command>.jsonl``: one
line per finished item, ``{"key": ..., "result": ...}``, appended and flushed as results arrive. The
key names everything the result depends on (the file's absolute path, size and modification time,
the work's options); a changed file or option gives a new key, so its old line is simply not found.

A crash can at worst leave a torn last line, which is skipped when the journal is read. At the end
of a run :meth:`WorkCache.compact` rewrites the journal atomically with the lines of this run only.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import IO, Any

import orjson

from osctl.utils.atomic import atomic_write_bytes, ensure_inside

CACHE_DIR = ".osctl-cache"


def file_key(path: str, *parts: Any) -> str | None:
    """A key for work on the file at ``path``: its path, size, modification time and ``parts`` (None if missing).

    ``parts`` are any JSON-able values the result depends on (options, a format version, a span).
    """
    try:
        stat = os.stat(path)
    except OSError:
        return None
    payload = orjson.dumps([path, stat.st_size, stat.st_mtime_ns, *parts], option=orjson.OPT_SORT_KEYS, default=str)
    return hashlib.sha256(payload).hexdigest()


class WorkCache:
    """The journal of one command in one output folder (see the module docstring)."""

    def __init__(self, root: Path, command: str) -> None:
        self.root = Path(root)
        self.path = ensure_inside(self.root / CACHE_DIR / f"{command}.jsonl", self.root)
        self._known: dict[str, Any] = self._read()
        self._used: dict[str, Any] = {}
        self._handle: IO[bytes] | None = None

    def _read(self) -> dict[str, Any]:
        try:
            data = self.path.read_bytes()
        except OSError:
            return {}
        known: dict[str, Any] = {}
        for line in data.split(b"\n"):
            if not line.strip():
                continue
            try:
                entry = orjson.loads(line)
            except orjson.JSONDecodeError:  # a line torn by a crash
                continue
            if isinstance(entry, dict) and isinstance(entry.get("key"), str) and "result" in entry:
                known[entry["key"]] = entry["result"]
        return known

    def get(self, key: str | None) -> Any:
        """The result recorded under ``key`` (None when there is none); marks it as used by this run."""
        if key is None or key not in self._known:
            return None
        result = self._known[key]
        self._used[key] = result
        return result

    def put(self, key: str | None, result: Any) -> None:
        """Record ``result`` under ``key`` at once (appended and flushed)."""
        if key is None:
            return
        self._known[key] = result
        self._used[key] = result
        if self._handle is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._handle = open(self.path, "ab")  # noqa: SIM115 - kept open for the run, closed in compact/close
        self._handle.write(orjson.dumps({"key": key, "result": result}) + b"\n")
        self._handle.flush()

    def close(self) -> None:
        """Close the journal (lines already written stay; nothing is compacted)."""
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def compact(self) -> None:
        """Rewrite the journal atomically with only the entries this run used or added."""
        self.close()
        lines = b"".join(orjson.dumps({"key": k, "result": v}) + b"\n" for k, v in self._used.items())
        atomic_write_bytes(self.path, lines, root=self.root)
