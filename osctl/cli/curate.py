"""`osctl data import | split-scenes | caption | score`: from a folder of videos to a data set.

The ``data`` group lives in :mod:`osctl.cli.data`; :func:`register` adds these commands to it. Each
command is thin over :mod:`osctl.curate`: it builds the engine (``--engine local|ray``), shows
progress with an ETA on a terminal, and prints a summary (or ``--json``). Every command writes a new
data set (annotations + data.txt) under ``--out`` and reports per-file problems; it exits 0 when the
data set was written (files with errors are left out and listed), 1 when nothing usable was found,
2 on bad input.

``--json`` schemas, stable: ``osctl.data.import/1`` (see :mod:`osctl.curate.importer`) and, for
split-scenes, caption and score, ``{"schema": "osctl.data.<command>/1", "out", "data_txt",
"annotations", "source", "records", "written", "worked", "reused", "untouched", "errors", "warnings",
"engine", "workers", "seconds", "problems": [{"path", "code", "severity", "message"}]}``.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from osctl.cli._options import JsonOpt
from osctl.cli._output import console, err_console, print_json
from osctl.errors import DataError

OutOpt = Annotated[Path, typer.Option("--out", "-o", help="Output folder (created; empty, or an earlier output of "
                                                          "these commands).", show_default=False)]
EngineOpt = Annotated[str, typer.Option(
    "--engine", help='Where the per-file work runs: local (processes on this machine) or ray (Ray tasks on a Ray '
                     'cluster; pip install "osctl[ray]").')]
AddressOpt = Annotated[str | None, typer.Option(
    "--address", help="Ray cluster to join (e.g. ray://head:10001 or auto); default: RAY_ADDRESS, else a local "
                      "Ray instance started for the command.", show_default=False)]
WorkersOpt = Annotated[int | None, typer.Option(
    "--workers", "-w", min=1, help="Processes (local) or concurrent tasks (ray); default: the CPUs.",
    show_default=False)]
DataTxtArg = Annotated[Path, typer.Argument(help="data.txt listing DATA_ROOT,ANNOTATION_FILE lines.", show_default=False)]
SetOpt = Annotated[list[str] | None, typer.Option(
    "--set", "-s", metavar="KEY=VALUE", help="An option of the plugin (value read as YAML).", show_default=False)]
MAX_SHOWN = 10


@contextlib.contextmanager
def _progress(label: str, quiet: bool) -> Iterator[Callable[[int, int], None] | None]:
    """A progress bar with ETA on a terminal's stderr (refreshed by the caller: no thread beside forked workers)."""
    if quiet or not err_console.is_terminal:
        yield None
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    bar = Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("ETA"),
                   TimeRemainingColumn(), console=err_console, transient=True, auto_refresh=False)
    last = 0.0
    with bar:
        task = bar.add_task(label, total=None)

        def update(done: int, total: int) -> None:
            nonlocal last
            bar.update(task, completed=done, total=total)
            now = time.monotonic()
            if now - last >= 0.1 or done >= total:
                bar.refresh()
                last = now

        yield update


@contextlib.contextmanager
def _engine(name: str, workers: int | None, address: str | None) -> Iterator[Any]:
    from osctl.curate.engines import make_engine

    engine = make_engine(name, workers=workers, address=address)
    try:
        yield engine
    finally:
        engine.close()


def _problems(problems: list[Any], out: Path) -> None:
    if not problems:
        return
    table = Table(header_style="bold", title="problems", title_justify="left")
    for column in ("file", "severity", "code", "message"):
        table.add_column(column, overflow="fold")
    for problem in problems[:MAX_SHOWN]:
        style = "red" if problem.severity == "error" else "yellow"
        table.add_row(escape(problem.path), f"[{style}]{problem.severity}[/]", problem.code, escape(problem.message))
    console.print(table)
    if len(problems) > MAX_SHOWN:
        console.print(f"... and {len(problems) - MAX_SHOWN} more in {escape(str(out / 'problems.jsonl'))}")


def _job_summary(result: Any, what: str, schema: str, as_json: bool) -> None:
    if as_json:
        print_json(result.to_json(schema))
    else:
        console.print(f"{what}: {result.records} records read, {result.written} written; {result.worked} worked on, "
                      f"{result.reused} reused from an earlier run, {result.untouched} left as they were "
                      f"({result.engine} engine, {result.workers} workers, {result.seconds:.1f} s).")
        _problems(result.problems, result.out)
        console.print(f"data.txt: {escape(str(result.data_txt))}")
    if result.records and not result.written:
        raise DataError("no record was written; see the problems above.")


def import_command(
    src: Annotated[Path, typer.Argument(help="A folder of videos/images, a CSV/TSV/JSONL/Parquet list, or an "
                                             "annotation (.json/.pkl/data.txt) to probe again.", show_default=False)],
    out: OutOpt = ...,  # type: ignore[assignment]
    captions: Annotated[str, typer.Option(
        "--captions", help="Where captions come from: auto (NAME.txt/.caption or captions.jsonl for a folder, the "
                           "caption column for a list, `cap` for an annotation), txt, caption-column, none.")] = "auto",
    path_column: Annotated[str, typer.Option("--path-column", help="Column of a list holding the media paths.")] = "path",
    caption_column: Annotated[str, typer.Option("--caption-column", help="Column of a list holding the captions.")] = "caption",
    root: Annotated[Path | None, typer.Option(
        "--root", help="Folder relative paths of a list (or of an annotation file) are relative to; default: the "
                       "file's own folder.", show_default=False)] = None,
    engine: EngineOpt = "local",
    address: AddressOpt = None,
    workers: WorkersOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Probe every video and image of SRC and write Open-Sora-Plan annotations and a data.txt.

    Each file is opened (PyAV: frame count, fps, size, duration, codec; Pillow for images) in parallel;
    unreadable, empty, truncated and EXIF-rotated files are reported and left out, variable-frame-rate
    and display-rotated videos are written and reported. Running it again probes only new or changed
    files (an interrupted import resumes). The data.txt works as it is with validate, bucket and train.

    Examples:

      [bold]osctl data import my_videos/ -o data/imported[/]

      [bold]osctl data import clips.csv -o data/imported --caption-column text --workers 8 --json[/]

      [bold]osctl data import my_videos/ -o data/imported --engine ray --address auto[/]
    """
    from osctl.curate.importer import import_media

    with _engine(engine, workers, address) as runner, _progress("probing", as_json) as progress:
        result = import_media(src, out, captions=captions, path_column=path_column, caption_column=caption_column,
                              root=root, engine=runner, progress=progress)
    if as_json:
        print_json(result.to_json())
    else:
        warnings = sum(1 for p in result.problems if p.severity == "warning")
        console.print(f"Imported {result.files} files from {escape(str(result.source))} ({result.source_kind}): "
                      f"[bold]{result.written}[/] written, {result.skipped} left out, {warnings} warning(s); probed "
                      f"{result.probed}, reused {result.reused} ({result.engine} engine, {result.workers} workers, "
                      f"{result.seconds:.1f} s).")
        _problems(result.problems, result.out)
        console.print(f"data.txt: {escape(str(result.data_txt))}")
        console.print(f"next: [bold]osctl data validate {escape(str(result.data_txt))} --probe[/]")
    if result.files and not result.written:
        raise DataError(f"none of the {result.files} files of {result.source} could be imported; see the problems "
                        "above.")


def split_scenes_command(
    data_txt: DataTxtArg,
    out: OutOpt = ...,  # type: ignore[assignment]
    threshold: Annotated[float, typer.Option("--threshold", help="Content change that makes a cut (PySceneDetect "
                                                                 "ContentDetector; lower finds more cuts).")] = 27.0,
    min_scene_len: Annotated[int, typer.Option("--min-scene-len", min=1, help="Shortest shot in frames (shorter ones "
                                                                              "merge into a neighbour).")] = 15,
    min_seconds: Annotated[float, typer.Option("--min-seconds", min=0.0, help="Drop scenes shorter than this.")] = 0.0,
    max_seconds: Annotated[float | None, typer.Option(
        "--max-seconds", help="Split scenes longer than this into equal parts.", show_default=False)] = None,
    extract: Annotated[bool, typer.Option("--extract", help="Also write each scene as its own clip under OUT/clips "
                                                            "(re-encoded, H.264).")] = False,
    engine: EngineOpt = "local",
    address: AddressOpt = None,
    workers: WorkersOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Find the shot changes of every video and write one record per scene.

    Records point at the original file with cut: [start, end] (nothing re-encoded) unless --extract.
    Quality scores of the whole clip are dropped from its scenes; captions are kept.

    Example: [bold]osctl data split-scenes data/imported/data.txt -o data/scenes --min-seconds 1 --max-seconds 10[/]
    """
    from osctl.curate.scenes import SCHEMA, split_scenes

    with _engine(engine, workers, address) as runner, _progress("scenes", as_json) as progress:
        result = split_scenes(data_txt, out, threshold=threshold, min_scene_len=min_scene_len, min_seconds=min_seconds,
                              max_seconds=max_seconds, extract=extract, engine=runner, progress=progress)
    _job_summary(result, "split-scenes", SCHEMA, as_json)


def caption_command(
    data_txt: DataTxtArg,
    out: OutOpt = ...,  # type: ignore[assignment]
    captioner: Annotated[str, typer.Option("--captioner", "-c", help="Captioner plugin (osctl plugins list --kind "
                                                                     "captioner).")] = "vlm",
    options: SetOpt = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Caption every record, also those with a caption.")] = False,
    engine: EngineOpt = "local",
    address: AddressOpt = None,
    workers: WorkersOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Caption the records that have no caption yet (all with --overwrite) with a captioner plugin.

    Example: [bold]osctl data caption data/scenes/data.txt -o data/captioned --set model=/models/blip-large[/]
    """
    from osctl.curate.apply import CAPTION_SCHEMA, caption_data, parse_options

    settings = parse_options(options, scoped=False)
    with _engine(engine, workers, address) as runner, _progress("captioning", as_json) as progress:
        result = caption_data(data_txt, out, captioner=captioner, options=settings, overwrite=overwrite,
                              engine=runner, progress=progress)
    _job_summary(result, "caption", CAPTION_SCHEMA, as_json)


def score_command(
    data_txt: DataTxtArg,
    out: OutOpt = ...,  # type: ignore[assignment]
    scorers: Annotated[list[str] | None, typer.Option(
        "--scorer", help="Scorer plugin; repeat for several (default: motion and tech).", show_default=False)] = None,
    options: Annotated[list[str] | None, typer.Option(
        "--set", "-s", metavar="SCORER.KEY=VALUE", help="An option of a scorer, e.g. motion.pairs=8 (value read as "
                                                        "YAML).", show_default=False)] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Score every record, replacing existing values.")] = False,
    engine: EngineOpt = "local",
    address: AddressOpt = None,
    workers: WorkersOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Add quality scores (the fields data.filters filters on: aesthetic, tech, motion) with scorer plugins.

    Example: [bold]osctl data score data/captioned/data.txt -o data/scored --scorer motion --scorer tech[/]
    """
    from osctl.curate.apply import SCORE_SCHEMA, parse_options, score_data

    settings = parse_options(options, scoped=True)
    with _engine(engine, workers, address) as runner, _progress("scoring", as_json) as progress:
        result = score_data(data_txt, out, scorers=scorers or ["motion", "tech"], options=settings,
                            overwrite=overwrite, engine=runner, progress=progress)
    _job_summary(result, "score", SCORE_SCHEMA, as_json)


def register(data_app: typer.Typer) -> None:
    """Add ``import``, ``split-scenes``, ``caption`` and ``score`` to the ``data`` command group."""
    data_app.command("import")(import_command)
    data_app.command("split-scenes")(split_scenes_command)
    data_app.command("caption")(caption_command)
    data_app.command("score")(score_command)
