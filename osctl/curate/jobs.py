"""Run one per-record job over the records of a ``data.txt`` and write the results as a new data set.

``split-scenes``, ``caption`` and ``score`` share this frame: read every annotation file the
``data.txt`` lists (every key of every record kept), pick the records the job applies to, send one
item per record to the engine, journal each result under the media file's identity and the job's
options (:mod:`osctl.curate.cache`: a rerun redoes only what changed, an interrupted run resumes),
merge the results into the records and write annotations, ``data.txt`` and ``problems.jsonl`` under
OUT (:mod:`osctl.curate.output`). Records keep their order; a record whose work failed is kept as
it was and reported.

A task returns ``{"ok": value}`` or ``{"error": [code, message]}``; only successes are journalled,
so a file that failed is tried again next time.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from osctl.curate.cache import WorkCache, file_key
from osctl.curate.clip import Clip, clip_from_record
from osctl.curate.engines import Engine, LocalEngine, Task
from osctl.curate.output import AnnotationGroup, prepare_out, write_output
from osctl.curate.problems import ERROR, WARNING, Problem, count
from osctl.curate.records_io import read_records
from osctl.data.datatxt import load_data_txt
from osctl.errors import DataError

Progress = Callable[[int, int], None]
Merged = list[tuple[str | None, dict[str, Any]]]
"""Records replacing one input record, each with the DATA_ROOT it belongs under (None: the input's own)."""


@dataclass(frozen=True)
class Job:
    """What a command does per record.

    ``wants(record)`` says whether the record needs the work; ``task(context, clip)`` runs on a worker
    and returns ``{"ok": ...}`` or ``{"error": [code, message]}``; ``merge(record, value)`` turns a
    success into the output records. ``options`` are everything else the result depends on (part of
    the journal key).
    """

    command: str
    task: Task
    context: Any
    options: Any
    wants: Callable[[dict[str, Any]], bool]
    merge: Callable[[dict[str, Any], Any], Merged]


@dataclass
class JobResult:
    """What :func:`run_job` wrote and found."""

    command: str
    out: Path
    data_txt: Path
    annotations: list[Path]
    source: Path
    records: int
    written: int
    worked: int
    reused: int
    untouched: int
    problems: list[Problem]
    engine: str
    workers: int
    seconds: float

    def to_json(self, schema: str) -> dict[str, Any]:
        """The ``--json`` payload of the command (``schema`` names it)."""
        return {"schema": schema, "out": str(self.out), "data_txt": str(self.data_txt),
                "annotations": [str(p) for p in self.annotations], "source": str(self.source),
                "records": self.records, "written": self.written, "worked": self.worked, "reused": self.reused,
                "untouched": self.untouched, "errors": count(self.problems, ERROR),
                "warnings": count(self.problems, WARNING), "engine": self.engine, "workers": self.workers,
                "seconds": round(self.seconds, 3), "problems": [p.to_json() for p in self.problems]}


def run_job(data_txt: Path, out: Path, job: Job, *, engine: Engine | None = None,
            progress: Progress | None = None) -> JobResult:
    """Apply ``job`` to the records of ``data_txt`` and write the result under ``out`` (see the module docstring)."""
    started = time.perf_counter()
    engine = engine if engine is not None else LocalEngine()
    sources = load_data_txt(Path(data_txt))
    tables = [(source, read_records(source.annotation, source.format)) for source in sources]
    out_root = prepare_out(out, job.command)
    cache = WorkCache(out_root, job.command)
    problems: list[Problem] = []
    outcome: dict[tuple[int, int], Any] = {}
    todo: list[tuple[tuple[int, int], Clip, str | None]] = []
    for number, (source, records) in enumerate(tables):
        for index, record in enumerate(records):
            if not job.wants(record):
                continue
            try:
                clip = clip_from_record(source.root, record)
            except DataError as exc:
                problems.append(Problem(_where(source.root, record, source.annotation.name, index), "bad_record",
                                        ERROR, f"{exc.message}; the record is kept as it was"))
                continue
            key = file_key(clip.path, job.command, job.options, clip.start, clip.end, clip.crop)
            cached = cache.get(key)
            if cached is not None:
                outcome[(number, index)] = {"ok": cached}
            else:
                todo.append(((number, index), clip, key))
    reused = len(outcome)
    total = len(outcome) + len(todo)
    done = reused
    if progress is not None:
        progress(done, total)

    def finished(position: int, result: dict[str, Any]) -> None:
        nonlocal done
        where, _, key = todo[position]
        outcome[where] = result
        if "ok" in result:
            cache.put(key, result["ok"])
        done += 1
        if progress is not None:
            progress(done, total)

    try:
        engine.map(job.task, [clip for _, clip, _ in todo], context=job.context, on_result=finished)
    finally:
        cache.close()

    groups: list[AnnotationGroup] = []
    written = 0
    for number, (source, records) in enumerate(tables):
        by_root: dict[str, list[dict[str, Any]]] = {source.root: []}
        for index, record in enumerate(records):
            result = outcome.get((number, index))
            merged: Merged = [(None, record)]
            if result is not None and "error" in result:
                code, message = result["error"]
                problems.append(Problem(_where(source.root, record, source.annotation.name, index), str(code), ERROR,
                                        f"{message}; the record is kept as it was"))
            elif result is not None:
                merged = job.merge(record, result["ok"])
            for root, new in merged:
                by_root.setdefault(root or source.root, []).append(new)
        for root, new_records in by_root.items():
            if new_records or root == source.root:
                suffix = "" if root == source.root else "-" + Path(root).name
                groups.append(AnnotationGroup(root, source.annotation.stem + suffix, new_records))
                written += len(new_records)
    records_in = sum(len(records) for _, records in tables)
    summary = {"source": str(data_txt), "records": records_in, "written": written, "worked": len(todo),
               "reused": reused, "engine": engine.name}
    data_path, files = write_output(out_root, groups, problems, command=job.command, summary=summary,
                                    header=f"osctl data {job.command} {data_txt}")
    cache.compact()
    return JobResult(command=job.command, out=out_root, data_txt=data_path, annotations=files, source=Path(data_txt),
                     records=records_in, written=written, worked=len(todo), reused=reused,
                     untouched=records_in - total, problems=problems, engine=engine.name,
                     workers=int(getattr(engine, "workers", 1)), seconds=time.perf_counter() - started)


def _where(root: str, record: dict[str, Any], annotation: str, index: int) -> str:
    path = record.get("path")
    return str(Path(root) / path) if isinstance(path, str) and path else f"{annotation} record {index}"


def task_error(exc: BaseException) -> dict[str, Any]:
    """The ``{"error": [code, message]}`` result of a task whose clip failed (``code`` from a MediaError)."""
    code = getattr(exc, "code", None)
    message = getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"
    return {"error": [f"media_{code}" if isinstance(code, str) else "failed", message]}
