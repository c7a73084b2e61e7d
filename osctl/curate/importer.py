"""``osctl data import``: probe every media file of a folder, list or annotation and write OSP annotations.

Each file is probed once (:mod:`osctl.curate.probe`) on the chosen engine; the result is journalled
under the file's path, size and modification time (:mod:`osctl.curate.cache`), so running the import
again on a grown folder probes only the new or changed files and an interrupted import resumes where
it stopped. Captions are read again on every run (they are cheap, and editing one must count).

Records get ``path`` (relative to the group's DATA_ROOT), ``cap`` when there is a caption,
``resolution``, and for videos ``num_frames``, ``fps``, ``duration`` (seconds) and ``codec`` (the
last two are extra keys that annotation readers ignore). Re-probing an annotation keeps every other
key; a ``cut`` stays and ``num_frames`` becomes its length. Files that cannot be used are reported and
left out; files with a warning (variable frame rate, a display rotation, an empty caption) are written
and reported.

``--json`` schema, stable: ``{"schema": "osctl.data.import/1", "out", "data_txt", "annotations": [path],
"source", "source_kind", "files", "written", "skipped", "warnings", "probed", "reused", "engine",
"workers", "seconds", "problems": [{"path", "code", "severity", "message"}]}`` (paths absolute).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from osctl.curate.cache import WorkCache, file_key
from osctl.curate.engines import Engine, LocalEngine
from osctl.curate.output import AnnotationGroup, prepare_out, write_output
from osctl.curate.probe import PROBE_FORMAT, MediaProbe, probe_file
from osctl.curate.problems import ERROR, WARNING, Problem, count
from osctl.curate.sources import CAPTION_SEVERITY, SourceItem, read_source

SCHEMA = "osctl.data.import/1"
VIDEO_FIELDS: tuple[str, ...] = ("path", "cap", "resolution", "num_frames", "fps", "duration", "codec")
"""Keys an import owns, in the order records carry them; other keys of a re-probed record follow."""

Progress = Callable[[int, int], None]


@dataclass
class ImportResult:
    """What :func:`import_media` wrote and found."""

    out: Path
    data_txt: Path
    annotations: list[Path]
    source: Path
    source_kind: str
    files: int
    written: int
    probed: int
    reused: int
    problems: list[Problem]
    engine: str
    workers: int
    seconds: float

    @property
    def skipped(self) -> int:
        """Files left out of the output (each has an error problem)."""
        return self.files - self.written

    def to_json(self) -> dict[str, Any]:
        """The stable ``--json`` payload (see the module docstring)."""
        return {"schema": SCHEMA, "out": str(self.out), "data_txt": str(self.data_txt),
                "annotations": [str(p) for p in self.annotations], "source": str(self.source),
                "source_kind": self.source_kind, "files": self.files, "written": self.written,
                "skipped": self.skipped, "warnings": count(self.problems, WARNING), "probed": self.probed,
                "reused": self.reused, "engine": self.engine, "workers": self.workers,
                "seconds": round(self.seconds, 3), "problems": [p.to_json() for p in self.problems]}


def probe_task(context: Any, path: str) -> dict[str, Any]:
    """The per-file work of an import (runs on an engine's worker): the probe of ``path`` as a dict."""
    return probe_file(path).to_json()


def import_media(src: Path, out: Path, *, captions: str = "auto", path_column: str = "path",
                 caption_column: str = "caption", root: Path | None = None, engine: Engine | None = None,
                 progress: Progress | None = None) -> ImportResult:
    """Import the media of ``src`` into annotation files and a ``data.txt`` under ``out``.

    ``captions`` is one of :data:`osctl.curate.sources.CAPTION_MODES`; ``path_column`` and
    ``caption_column`` name a list's columns; ``root`` is the folder relative paths of a list (or the
    DATA_ROOT of an annotation file) are relative to. ``progress(done, total)`` follows the probes.
    """
    started = time.perf_counter()
    engine = engine if engine is not None else LocalEngine()
    source = read_source(src, captions=captions, path_column=path_column, caption_column=caption_column,
                         root=root, exclude=Path(out).expanduser().resolve())
    out_root = prepare_out(out, "import")
    items = source.items
    cache = WorkCache(out_root, "import")
    keys = [file_key(item.path, PROBE_FORMAT) for item in items]
    probes: list[MediaProbe | None] = [None] * len(items)
    todo: list[int] = []
    for index, key in enumerate(keys):
        cached = cache.get(key)
        if cached is not None:
            probes[index] = MediaProbe.from_json(cached)
        elif key is not None:
            todo.append(index)
    done = len(items) - len(todo)
    if progress is not None:
        progress(done, len(items))

    def finished(position: int, result: dict[str, Any]) -> None:
        nonlocal done
        index = todo[position]
        cache.put(keys[index], result)
        probes[index] = MediaProbe.from_json(result)
        done += 1
        if progress is not None:
            progress(done, len(items))

    try:
        engine.map(probe_task, [items[i].path for i in todo], on_result=finished)
    finally:
        cache.close()

    problems = list(source.problems)
    groups: list[AnnotationGroup] = []
    written = 0
    position = 0
    for group in source.groups:
        records = []
        for item in group.items:
            probe = probes[position]
            position += 1
            record = _record(item, probe, problems)
            if record is not None:
                records.append(record)
        written += len(records)
        groups.append(AnnotationGroup(group.root, group.name, records))
    summary = {"source": str(source.origin), "source_kind": source.kind, "files": len(items), "written": written,
               "probed": len(todo), "reused": len(items) - len(todo) - keys.count(None), "engine": engine.name}
    data_txt, files = write_output(out_root, groups, problems, command="import", summary=summary,
                                   header=f"osctl data import {source.origin}")
    cache.compact()
    return ImportResult(out=out_root, data_txt=data_txt, annotations=files, source=source.origin,
                        source_kind=source.kind, files=len(items), written=written, probed=len(todo),
                        reused=summary["reused"], problems=problems, engine=engine.name,
                        workers=int(getattr(engine, "workers", 1)), seconds=time.perf_counter() - started)


def _record(item: SourceItem, probe: MediaProbe | None, problems: list[Problem]) -> dict[str, Any] | None:
    """The record of one probed file, or None (with an error problem) when it is left out."""
    if probe is None:
        problems.append(Problem(item.path, "media_missing", ERROR, "the file does not exist (or cannot be read); "
                                                                    "fix the path or remove the entry"))
        return None
    if probe.error is not None:
        problems.append(Problem(item.path, probe.error[0], ERROR, probe.error[1]))
        return None
    skip = False
    if item.caption_problem is not None:
        code, message = item.caption_problem
        severity = CAPTION_SEVERITY.get(code, ERROR)
        problems.append(Problem(item.path, code, severity, message))
        skip = severity == ERROR
    base = item.base or {}
    record: dict[str, Any] = {"path": item.rel}
    caption = item.caption if item.caption is not None else base.get("cap")
    if caption is not None:
        record["cap"] = caption
    record["resolution"] = {"height": probe.height, "width": probe.width}
    owned: set[str] = set(VIDEO_FIELDS)
    if probe.kind == "video":
        frames = int(probe.num_frames or 0)
        cut = base.get("cut")
        length = frames
        if _is_span(cut):
            start, end = int(cut[0]), int(cut[1])
            if end > frames:
                problems.append(Problem(item.path, "cut_beyond_media", ERROR,
                                        f"its cut {cut} ends after the file's {frames} frames; fix the cut"))
                return None
            length = end - start
        record["num_frames"] = length
        record["fps"] = probe.fps
        record["duration"] = probe.duration
        record["codec"] = probe.codec
    for code, message in probe.warnings:
        problems.append(Problem(item.path, code, WARNING, message))
    if skip:
        return None
    for key, value in base.items():
        if key not in owned:
            record[key] = value
    return record


def _is_span(value: Any) -> bool:
    return (isinstance(value, list | tuple) and len(value) == 2
            and all(type(v) is int or (type(v) is float and v.is_integer()) for v in value)
            and 0 <= value[0] < value[1])
