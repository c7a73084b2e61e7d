"""`osctl data`: check annotation files and build the sample index that training reads.

``validate`` JSON schema (``--json``), stable: ``{"schema": "osctl.data.validate/1", "data_txt", "ok",
"probe", "totals": {"files", "records", "errors", "warnings", "by_code": {code: {severity: n}}},
"files": [{"file", "format", "records", "problem"}], "findings": [{"severity", "code", "file", "index",
"field", "message"}]}``.

``bucket`` JSON schema, stable: ``{"schema": "osctl.data.bucket/1", "data_txt", "index", "report",
"records", "kept", "reasons": {code: n}, "buckets": [{"key", "t", "h", "w", "count", "share",
"latent_tokens", "batches", "lost"}], "minority": {"threshold", "rule", "buckets": [{"key", "count"}],
"records"}, "batch": {"global_batch", "world_size", "train_batch_size", "grad_accum", "sp_size",
"train_sp_batch_size", "group_data", "dp_size", "stream_batch", "micro_batch", "leftover"},
"batches_per_epoch", "micro_batches_per_epoch", "samples_lost", "samples_duplicated", "resolution_mode",
"fingerprint"}``. ``batch`` describes the parallel layout (:class:`osctl.parallel.layout.ParallelLayout`):
``global_batch`` samples per optimizer step = ``dp_size`` replicas x ``stream_batch`` x ``grad_accum``;
``buckets[].batches`` and ``micro_batches_per_epoch`` count batches of ``micro_batch`` samples (what the
loader yields); ``batches_per_epoch`` counts optimizer steps (what training runs in an epoch).
"""

from __future__ import annotations

import os
import sys
from functools import partial
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from osctl.cli._options import JsonOpt, RecipeOpt, SetOpt
from osctl.cli._output import console, escape, print_json, warn
from osctl.errors import UsageError

app = typer.Typer(help="Check annotation files and build the sample index.", no_args_is_help=True)

DataTxtArg = Annotated[Path, typer.Argument(help="data.txt listing DATA_ROOT,ANNOTATION_FILE lines.", show_default=False)]
OptionalDataTxtArg = Annotated[
    Path | None,
    typer.Argument(help="data.txt listing DATA_ROOT,ANNOTATION_FILE lines (default: the recipe's data.data).",
                   show_default=False),
]
EXAMPLES_PER_CHECK = 3


def _default_workers() -> int:
    from osctl.data import default_workers  # the package itself imports nothing heavy

    return default_workers()


def _no_blas_threads() -> None:
    """Ask numpy's OpenBLAS for no worker threads (unless OPENBLAS_NUM_THREADS is set); call before numpy loads.

    OpenBLAS starts one busy-waiting thread per core when numpy is imported, which costs these
    commands (they never multiply matrices) about 0.05 s of CPU and a slower import.
    """
    if "numpy" not in sys.modules:
        os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


def _tune_memory() -> None:
    """Allocate the columns of a data command with ordinary pages (each default is kept when set by the user).

    These commands build a few hundred megabytes of short-lived columns once. numpy asks for
    transparent huge pages for every array of 4 MiB or more, and Arrow's default allocator
    (mimalloc) serves large buffers from huge-page-backed arenas; a huge page's first touch is slow
    on virtual machines (2 MiB zeroed and backed at once), and nothing here lives long enough to profit
    from larger pages (measured: benchmarks/README.md, "Defaults measured").
    """
    if not os.environ.get("ARROW_DEFAULT_MEMORY_POOL"):
        import pyarrow as pa

        pa.set_memory_pool(pa.system_memory_pool())
    if os.environ.get("NUMPY_MADVISE_HUGEPAGE") is None:
        from numpy._core import multiarray

        set_hugepage = getattr(multiarray, "_set_madvise_hugepage", None)  # what NUMPY_MADVISE_HUGEPAGE=0 sets
        if set_hugepage is not None:
            set_hugepage(False)


@app.command("validate")
def validate(
    data_txt: DataTxtArg,
    probe: Annotated[bool, typer.Option("--probe", help="Also open every media file (decord for video, Pillow for images).")] = False,
    workers: Annotated[int, typer.Option("--workers", "-w", min=1, help="Processes for large files and parallel probes.")] = _default_workers(),
    as_json: JsonOpt = False,
) -> None:
    """Check every record of every annotation file and report all problems, not just the first.

    Exits 0 when no error was found (warnings allowed), 1 when at least one error was found, and 2
    when DATA_TXT itself cannot be read.

    Example: [bold]osctl data validate data.txt --probe --workers 8[/]
    """
    _no_blas_threads()
    from osctl.data.validate import checks_run, validate_data

    _tune_memory()
    report = validate_data(data_txt, probe=probe, workers=workers)
    base = Path(data_txt).resolve().parent
    if as_json:
        from osctl.data.datatxt import display_name

        print_json({
            "schema": "osctl.data.validate/1",
            "data_txt": str(data_txt),
            "ok": report.errors == 0,
            "probe": probe,
            "totals": {"files": len(report.files), "records": report.n_records, "errors": report.errors,
                       "warnings": report.warnings, "by_code": report.counts()},
            "files": [{"file": display_name(item.source.annotation, base), "format": item.source.format,
                       "records": item.n, "problem": item.problem.code if item.problem else None}
                      for item in report.files],
            "findings": [f.as_dict() for f in report.findings()],
        })
    else:
        files = len(report.files)
        console.print(f"Checked {files} annotation file{'s' if files != 1 else ''} with {report.n_records} records "
                      f"listed in {escape(data_txt)}{' (media probed)' if probe else ''}.")
        table = Table(show_lines=False, header_style="bold")
        table.add_column("check")
        table.add_column("severity")
        table.add_column("count", justify="right")
        table.add_column("examples (file:record field: message)", overflow="fold")
        counts = report.counts()
        for check in checks_run(probe):
            found = counts.get(check.code, {})
            total = sum(found.values())
            if not total:
                table.add_row(f"[dim]{check.code}[/]", f"[dim]{check.severity}[/]", "[green]0[/]", f"[dim]{check.title}[/]")
                continue
            severity = "/".join(s for s in ("error", "warning") if s in found)
            colour = "red" if "error" in found else "yellow"
            examples = "\n".join(escape(f.short()) for f in report.examples(check.code, EXAMPLES_PER_CHECK))
            if total > EXAMPLES_PER_CHECK:
                examples += f"\n... and {total - EXAMPLES_PER_CHECK} more"
            table.add_row(f"[{colour}]{check.code}[/]", f"[{colour}]{severity}[/]", f"[{colour}]{total}[/]", examples)
        console.print(table)
        if report.errors:
            console.print(f"[bold red]{report.errors} error(s)[/] and {report.warnings} warning(s); fix the errors "
                          "(see the examples above, or rerun with --json for every finding).")
        elif report.warnings:
            console.print(f"[green]no errors[/], [yellow]{report.warnings} warning(s)[/].")
        else:
            console.print("[green]ok[/]: no problems found.")
    if report.errors:
        raise typer.Exit(1)


class _RecipeTarget:
    """Where ``data bucket`` writes and with which settings, from the recipe, loaded once, when first asked.

    The recipe and the latent geometry of its autoencoder and model (which loads plugins) cost a few
    tenths of a second, mostly imports; :func:`osctl.data.build.build_index` asks for the target while
    other processes decode the annotations, which takes that off the command's critical path.
    """

    def __init__(self, recipe: Path, overrides: list[str], world_size: int | None, out: Path | None) -> None:
        self._args = (recipe, overrides, world_size, out)
        self._recipe: Any = None
        self._target: Any = None

    def recipe(self) -> Any:
        """The loaded recipe (:class:`osctl.recipe.load.LoadedRecipe`)."""
        if self._recipe is None:
            from osctl.recipe.load import load_recipe

            self._recipe = load_recipe(self._args[0], self._args[1])
        return self._recipe

    def __call__(self) -> Any:
        """The :class:`osctl.data.build.IndexTarget`: the bucket settings with the latent geometry of the recipe's
        components (:func:`osctl.recipe.validate.recipe_geometry`: a plugin that declares none is a
        ``ConfigError``) and the folder: ``--out``, else ``data.index_dir``, else ``<train.output_dir>/index``."""
        if self._target is None:
            from osctl.data.bucket import BucketSettings
            from osctl.data.build import IndexTarget, index_folder
            from osctl.plugin_manager import default_registry
            from osctl.recipe.validate import recipe_geometry

            loaded = self.recipe()
            geometry = recipe_geometry(loaded, default_registry())
            settings = BucketSettings.from_recipe(loaded.recipe, geometry=geometry, world_size=self._args[2])
            out = self._args[3]
            self._target = IndexTarget(settings, Path(out) if out is not None else index_folder(loaded.recipe))
        return self._target


@app.command("bucket")
def bucket(
    data_txt: OptionalDataTxtArg = None,
    recipe: RecipeOpt = ...,  # type: ignore[assignment]
    overrides: SetOpt = None,
    world_size: Annotated[int | None, typer.Option(
        "--world-size", min=1, help="Processes training will use (default: parallel.nproc_per_node x nnodes, else 1).")] = None,
    out: Annotated[Path | None, typer.Option(
        "--out", "-o", help="Folder for the index (default: data.index_dir, else <train.output_dir>/index).")] = None,
    report: Annotated[Path | None, typer.Option("--report", help="Write one JSON line per record (kept/dropped, reason, bucket, frames).")] = None,
    plot: Annotated[Path | None, typer.Option("--plot", help="Write a PNG histogram: samples per bucket, dropped records by reason.")] = None,
    workers: Annotated[int, typer.Option("--workers", "-w", min=1, help="Processes used to decode large annotation files.")] = _default_workers(),
    rehash: Annotated[bool, typer.Option(
        "--rehash", help="Hash every annotation file, even those the index already in --out recorded as unchanged.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Apply the recipe's frame and resolution rules to every record and write the sample index.

    Nothing is decoded: sizes and frame counts come from the annotations. Every dropped record is
    counted under its reason; buckets smaller than data.min_bucket_batches x global batch are dropped
    and reported. Exits 1 when an annotation file is unreadable or nothing survives, 2 on usage errors.
    Rebuilding an index in the same folder reuses the recorded SHA-256 of annotation files that have
    not changed since (same size, times, inode); --rehash hashes them all again.

    Example: [bold]osctl data bucket data.txt --recipe recipes/480p.yaml --world-size 8 --report drops.jsonl --plot buckets.png[/]
    """
    _no_blas_threads()
    from osctl.data.build import build_index

    target = _RecipeTarget(recipe, overrides or [], world_size, out)
    if data_txt is None:
        rec = target.recipe().recipe
        if rec.data.data is None:
            raise UsageError("no data.txt given: pass DATA_TXT or set data.data in the recipe.")
        data_txt = Path(rec.data.data)
    _tune_memory()
    built = build_index(data_txt, target, workers=workers, rehash=rehash, report=report,
                        before_write=None if plot is None else partial(_plot, plot))
    if as_json:
        _print_bucket_json(built, data_txt, report, target.recipe().recipe)
    else:
        _print_bucket(built, data_txt, report, plot)


def _plot(path: Path, result: Any) -> None:
    from osctl.plots import plot_buckets

    plot_buckets(result, path)


def _minority_rule(settings: Any) -> str:
    layout = settings.layout
    return (f"buckets with fewer than {settings.min_bucket_batches:g} x global batch {layout.global_batch} = "
            f"{settings.minority_threshold} samples are dropped")


def _print_bucket_json(built: Any, data_txt: Path, report: Path | None, rec: Any) -> None:
    """``data bucket --json`` (the schema in the module docstring)."""
    from osctl.data.bucket import Reason
    from osctl.data.index import read_meta

    result, settings = built.result, built.target.settings
    layout, reasons = settings.layout, result.reason_counts()
    print_json({
        "schema": "osctl.data.bucket/1", "data_txt": str(data_txt), "index": str(built.index_path),
        "report": str(report) if report else None, "records": result.n_records, "kept": result.n_kept,
        "reasons": reasons,
        "buckets": [{"key": b.key, "t": b.t, "h": b.h, "w": b.w, "count": b.count, "share": round(b.share, 6),
                     "latent_tokens": b.latent_tokens, "batches": b.batches, "lost": b.lost} for b in result.buckets],
        "minority": {"threshold": settings.minority_threshold, "rule": _minority_rule(settings),
                     "records": reasons.get(Reason.MINORITY_BUCKET.code, 0),
                     "buckets": [{"key": k, "count": c} for k, c in result.minority]},
        "batch": {**layout.as_dict(), "train_batch_size": rec.train.train_batch_size,
                  "train_sp_batch_size": rec.parallel.train_sp_batch_size, "group_data": settings.group_data,
                  "leftover": settings.leftover},
        "batches_per_epoch": result.batches_per_epoch, "micro_batches_per_epoch": result.micro_batches_per_epoch,
        "samples_lost": result.samples_lost, "samples_duplicated": result.samples_duplicated,
        "resolution_mode": settings.resolution.mode, "fingerprint": read_meta(built.index_path)["fingerprint"]["sha256"],
    })


def _print_bucket(built: Any, data_txt: Path, report: Path | None, plot: Path | None) -> None:
    """``data bucket``'s tables: buckets, records by outcome, the minority rule and the batches per epoch."""
    from osctl.data.bucket import REASON_HELP, Reason

    result, settings = built.result, built.target.settings
    layout, reasons = settings.layout, result.reason_counts()
    invalid = reasons.get(Reason.INVALID_RECORD.code, 0)
    if invalid:
        warn(f"{invalid} record(s) have fields of the wrong type or implausible values and were dropped; "
             f"run `osctl data validate {data_txt}`.")
    rule = _minority_rule(settings)
    minority_records = reasons.get(Reason.MINORITY_BUCKET.code, 0)
    fr, rr = settings.frames, settings.resolution
    console.print(f"Read {result.n_records} records from {built.files} annotation file(s); kept "
                  f"[bold]{result.n_kept}[/] samples in {len(result.buckets)} bucket(s).")
    console.print(f"[dim]rules: {rr.mode} resolution, {fr.num_frames} frames at {fr.train_fps:g} fps, "
                  f"drop_short_ratio {fr.drop_short_ratio:g}, sp_size {fr.sp_size}, min_frames {fr.min_frames}[/]")
    table = Table(header_style="bold", title="buckets", title_justify="left")
    for name, justify in (("T x H x W", "left"), ("samples", "right"), ("share", "right"), ("latent tokens", "right"),
                          ("batches", "right"), ("lost to rounding", "right")):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for b in result.buckets:
        table.add_row(b.key, str(b.count), f"{b.share:.1%}", str(b.latent_tokens), str(b.batches), str(b.lost))
    console.print(table)
    drops = Table(header_style="bold", title="records by outcome", title_justify="left")
    drops.add_column("reason")
    drops.add_column("records", justify="right")
    drops.add_column("meaning")
    for reason in Reason:
        if reasons.get(reason.code):
            style = "green" if reason == Reason.KEPT else "yellow"
            drops.add_row(f"[{style}]{reason.code}[/]", str(reasons[reason.code]), REASON_HELP[reason])
    console.print(drops)
    console.print(f"minority rule: {rule}; {len(result.minority)} bucket(s) with {minority_records} record(s) dropped.")
    accounting = "per bucket (group_data)" if settings.group_data else "over all samples"
    steps = (f"{result.batches_per_epoch} optimizer steps of {layout.global_batch} samples ({layout.describe()})"
             if layout.grad_accum > 1 else f"{result.batches_per_epoch} of {layout.global_batch} samples "
             f"({layout.describe().rsplit(' = ', 1)[0]})")
    rounding = (f"samples lost to rounding: {result.samples_lost}" if settings.leftover == "drop" else
                f"duplicates filling last batches: {result.samples_duplicated}")
    micro = f"{result.micro_batches_per_epoch} batches of {layout.micro_batch} = " if layout.grad_accum > 1 else ""
    console.print(f"batches per epoch: {micro}{steps}, counted {accounting}; {rounding}.")
    if report is not None:
        console.print(f"report: {escape(report)}")
    if plot is not None:
        console.print(f"plot: {escape(plot)}")
    console.print(f"[green]index written[/] to {escape(built.index_path)}")
