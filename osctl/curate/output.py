"""The output folder of a curate command: annotations, ``data.txt``, problems and a manifest, written atomically.

Layout (every path relative to OUT)::

    OUT/data.txt                 one DATA_ROOT,annotations/NAME.json line per annotation file (roots absolute)
    OUT/annotations/NAME.json    the records (JSON array, one record per line)
    OUT/problems.jsonl           one {"path", "code", "severity", "message"} line per problem found
    OUT/osctl-curate.json        manifest: which command wrote the folder, with its summary
    OUT/.osctl-cache/            journals of finished work (see :mod:`osctl.curate.cache`)

A folder that is not empty and holds no manifest is refused, so no unrelated file is ever replaced.
Each file is written under a temporary name and renamed into place; ``data.txt`` and then the
manifest come last, so an interrupted run leaves the previous complete output readable.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from osctl.curate.problems import Problem
from osctl.curate.records_io import records_json
from osctl.errors import UsageError
from osctl.utils.atomic import atomic_write_bytes, atomic_write_text

MANIFEST = "osctl-curate.json"
DATA_TXT = "data.txt"
ANNOTATIONS = "annotations"
PROBLEMS = "problems.jsonl"
SCHEMA = "osctl.data.curate/1"


@dataclass
class AnnotationGroup:
    """Records that share one DATA_ROOT and go into one annotation file named after ``name``."""

    root: str
    name: str
    records: list[dict[str, Any]]


def prepare_out(out: Path, command: str) -> Path:
    """Create OUT (or accept an earlier curate output) and return it resolved; refuse unrelated folders."""
    out = Path(out).expanduser()
    if out.exists() and not out.is_dir():
        raise UsageError(f"{out} exists and is not a folder; choose a folder for the output.")
    manifest = out / MANIFEST
    if out.is_dir() and not manifest.is_file() and any(out.iterdir()):
        raise UsageError(f"{out} is not empty and holds no {MANIFEST}; choose an empty or new folder so no "
                         "unrelated file is overwritten.")
    out.mkdir(parents=True, exist_ok=True)
    root = out.resolve()
    if not manifest.is_file():
        atomic_write_bytes(root / MANIFEST, _json({"schema": SCHEMA, "command": command, "complete": False}), root=root)
    return root


def _unique_names(names: Sequence[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for name in names:
        clean = "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "records"
        count = seen.get(clean, 0)
        seen[clean] = count + 1
        out.append(clean if count == 0 else f"{clean}-{count + 1}")
    return out


def write_output(root: Path, groups: Sequence[AnnotationGroup], problems: Sequence[Problem], *, command: str,
                 summary: dict[str, Any], header: str) -> tuple[Path, list[Path]]:
    """Write the annotation files, ``problems.jsonl``, ``data.txt`` and the manifest; return data.txt and the files.

    Annotation files of an earlier run that this run no longer writes are removed (only those the
    manifest lists), so ``annotations/`` holds exactly what ``data.txt`` names.
    """
    names = _unique_names([g.name for g in groups])
    written: list[Path] = []
    lines = [f"# {header}", "# DATA_ROOT,ANNOTATION_FILE (annotation paths relative to this file)"]
    for group, name in zip(groups, names, strict=True):
        relative = f"{ANNOTATIONS}/{name}.json"
        written.append(atomic_write_bytes(root / relative, records_json(group.records), root=root))
        lines.append(f"{group.root},{relative}")
    _remove_stale(root, {p.name for p in written})
    atomic_write_bytes(root / PROBLEMS, b"".join(orjson.dumps(p.to_json()) + b"\n" for p in problems), root=root)
    data_txt = atomic_write_text(root / DATA_TXT, "\n".join(lines) + "\n", root=root)
    manifest = {"schema": SCHEMA, "command": command, "complete": True, "data_txt": DATA_TXT,
                "annotations": [f"{ANNOTATIONS}/{p.name}" for p in written], "problems": PROBLEMS, "summary": summary}
    atomic_write_bytes(root / MANIFEST, _json(manifest), root=root)
    return data_txt, written


def _remove_stale(root: Path, keep: set[str]) -> None:
    try:
        previous = orjson.loads((root / MANIFEST).read_bytes()).get("annotations") or []
    except (OSError, orjson.JSONDecodeError, AttributeError):
        return
    for relative in previous:
        if not isinstance(relative, str) or not relative.startswith(f"{ANNOTATIONS}/"):
            continue
        path = root / relative
        if path.name not in keep and path.parent == root / ANNOTATIONS and path.is_file():
            path.unlink()


def _json(payload: Any) -> bytes:
    return orjson.dumps(payload, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n"
