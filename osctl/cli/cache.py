"""`osctl data cache` (build the latent and text-embedding cache) and `osctl data cache inspect DIR`.

The ``data`` group lives in :mod:`osctl.cli.data`; this module adds its ``cache`` sub-group through
:func:`register`. The library is :mod:`osctl.cache`.

``--json`` schema of the build, stable (rank 0 prints it): ``{"schema": "osctl.data.cache/1", "dir",
"samples", "ok", "bad", "missing", "texts", "views", "bytes", "shards": {"total", "built", "skipped"},
"encoded", "seconds", "samples_per_s", "world_size", "bad_examples", "complete"}``; of inspect: see
:mod:`osctl.cache.inspect`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from osctl.cli._options import JsonOpt, SetOpt
from osctl.cli._output import console, err_console, print_json, warn
from osctl.parallel.launch import reporting_errors_to_launcher

app = typer.Typer(invoke_without_command=True)  # its help: the docstring of `cache` below
Opt = typer.Option


@app.callback()
@reporting_errors_to_launcher()
def cache(
    ctx: typer.Context,
    recipe: Annotated[Path | None, Opt("--recipe", "-r", help="YAML recipe (its data, autoencoder and text encoder).",
                                       show_default=False)] = None,
    overrides: SetOpt = None,
    out: Annotated[Path | None, Opt("--out", help="Cache folder (default: data.cache.dir, else <index folder>/cache).",
                                    show_default=False)] = None,
    world_size: Annotated[int | None, Opt(
        "--world-size", min=1, help="Processes training will use, which the index's batch rules depend on "
                                    "(default: parallel.nproc_per_node x nnodes, else 1).")] = None,
    overwrite: Annotated[bool, Opt("--overwrite", help="Replace a cache built for another recipe or data.")] = False,
    as_json: JsonOpt = False,
    nproc_per_node: Annotated[int | None, Opt("--nproc-per-node", help="Start this many processes on this node.")] = None,
    nnodes: Annotated[int, Opt("--nnodes", help="Number of nodes.")] = 1,
    node_rank: Annotated[int, Opt("--node-rank", help="This node's rank.")] = 0,
    rdzv_endpoint: Annotated[str | None, Opt("--rdzv-endpoint", help="HOST:PORT shared by all nodes.")] = None,
) -> None:
    """Encode every sample of the index once: the autoencoder's latents of exactly the frames, crop and size the
    loader reads, and the text encoder's states of every caption variant. Resumes where a killed or failed
    build stopped; several processes (and nodes) share the shards.

    Examples:

      [bold]osctl data cache --recipe recipes/480p.yaml[/]

      [bold]osctl data cache --recipe recipes/480p.yaml --nproc-per-node 8[/]

      [bold]osctl data cache --recipe recipes/480p.yaml --nnodes 4 --node-rank 0 --rdzv-endpoint host:29500 --nproc-per-node 8[/]

      [bold]osctl data cache inspect out/index/cache[/]
    """
    if ctx.invoked_subcommand is not None:
        return
    if recipe is None:
        console.print(ctx.get_help())
        raise typer.Exit(0)
    from osctl.parallel.dist import shutdown, under_launcher
    from osctl.parallel.launch import LaunchOptions, relaunch
    from osctl.plugin_manager import default_registry
    from osctl.recipe.load import load_recipe
    from osctl.recipe.validate import check_recipe

    registry = default_registry()
    checked = check_recipe(load_recipe(recipe, list(overrides or [])), registry)
    launch = LaunchOptions(nproc_per_node, nnodes, node_rank, rdzv_endpoint)
    if launch.wanted and not under_launcher():
        raise typer.Exit(relaunch(launch))
    from osctl.cache.build import BuildOptions, build_cache

    main = _is_main()
    if main and not as_json:
        for message in checked.warnings:
            warn(message)
    progress = _Progress(live=main and not as_json and err_console.is_terminal)
    try:
        summary = build_cache(checked, registry, BuildOptions(out=out, world_size=world_size, overwrite=overwrite,
                                                              progress=progress.update))
    finally:
        progress.close()
    if main:
        if as_json:
            print_json(summary)
        else:
            _print_summary(summary)
    # several processes: leave the group and exit at once (gloo can abort during interpreter teardown)
    shutdown(0 if _world() > 1 else None)


@app.command("inspect")
def inspect(
    folder: Annotated[Path, typer.Argument(help="The cache folder.", show_default=False)],
    as_json: JsonOpt = False,
) -> None:
    """Show what a cache holds: for which index, recipe and components, how complete, how big.

    Example: [bold]osctl data cache inspect out/index/cache --json[/]
    """
    from osctl.cache.inspect import inspect_cache

    report = inspect_cache(folder)
    if as_json:
        print_json(report)
        return
    table = Table(title=f"data cache {'(complete)' if report['complete'] else '(incomplete)'}", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value", overflow="fold")
    samples, shards, size = report["samples"], report["shards"], report["bytes"]
    table.add_row("folder", escape(report["dir"]))
    table.add_row("index", f"{report['index'].get('samples')} samples (content {str(report['index'].get('content_sha256'))[:12]})")
    for part, identity in report["components"].items():
        table.add_row(part.replace("_", " "), escape(f"{identity['name']} in {identity['dtype']} (config "
                                                     f"{str(identity['config_sha256'])[:12]}, weights "
                                                     f"{str(identity['weights_sha256'])[:12]})"))
    storage = report["storage"]
    table.add_row("storage", f"{storage['dtype']}, {storage['views']} view(s) for random frames, "
                             f"{storage['shard_samples']} samples per shard")
    table.add_row("samples", f"{samples['ok']} stored, {samples['bad']} bad, {samples['missing']} not built; "
                             f"{samples['random_frames']} with random frames")
    table.add_row("shards", f"{shards['published']} of {shards['total']} published"
                            + (f", {shards['stale']} of another recipe" if shards["stale"] else "")
                            + (f", {shards['leftovers']} unfinished file(s)" if shards["leftovers"] else ""))
    table.add_row("stored", f"{report['stored']['views']} latent view(s), {report['stored']['texts']} caption "
                            f"variant(s), {report['stored']['prompts']} prompt(s)")
    table.add_row("size", f"{size['total'] / 1e9:.3f} GB ({size['per_sample'] / 1e6:.3f} MB per sample)")
    table.add_row("text states", _text_states_line(report["text_states"]))
    if not report["readable"]:
        table.add_row("format", f"version {report['version']}, which this osctl does not read: rebuild it with "
                                "`osctl data cache --recipe RECIPE --overwrite`")
    for line in report["bad_examples"]:
        table.add_row("bad", escape(line))
    console.print(table)


def _text_states_line(texts: dict[str, Any]) -> str:
    """Inspect's line on the caption variants' states: how they are stored, stored against padded size."""
    stored, padded = texts["bytes"]["stored"], texts["bytes"]["padded"]
    how = ("trimmed to each prompt" if texts["storage"] == "trimmed" else "whole") + \
        f", {texts['mean_length']} of {texts['padded_length']} tokens on average"
    if padded:
        return f"{how}: {stored / 1e9:.3f} GB stored, {padded / 1e9:.3f} GB padded ({stored / padded:.1%})"
    return f"{how}: {stored / 1e9:.3f} GB stored"


def _print_summary(summary: dict[str, Any]) -> None:
    table = Table(title="data cache", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value", overflow="fold")
    shards = summary["shards"]
    table.add_row("folder", escape(summary["dir"]))
    table.add_row("samples", f"{summary['ok']} stored, {summary['bad']} bad, {summary['missing']} not built "
                             f"({summary['views']} view(s) and {summary['texts']} caption variant(s) encoded now)")
    table.add_row("shards", f"{shards['built']} built, {shards['skipped']} already there, {shards['total']} in all")
    table.add_row("size", f"{summary['bytes'] / 1e9:.3f} GB")
    table.add_row("time", f"{summary['seconds']:.1f} s, {summary['samples_per_s']:.2f} samples/s on "
                          f"{summary['world_size']} process(es)")
    for line in summary["bad_examples"]:
        table.add_row("bad", escape(line))
    console.print(table)
    if summary["complete"]:
        console.print("training reads it with data.cache: auto (the default) or require")


class _Progress:
    """Rank 0's progress bar: samples done, samples/s and ETA (only on a terminal)."""

    def __init__(self, *, live: bool) -> None:
        self.live = live
        self.bar: Any = None
        self.task: Any = None

    def update(self, done: int, total: int) -> None:
        if not self.live:
            return
        if self.bar is None:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(TextColumn("encoding"), MofNCompleteColumn(), BarColumn(),
                                TextColumn("{task.fields[speed]}"),
                                TextColumn("ETA"), TimeRemainingColumn(), console=err_console)
            self.task = self.bar.add_task("cache", total=total, completed=done, speed="? samples/s")
            self.bar.start()
        speed = self.bar.tasks[0].speed
        self.bar.update(self.task, completed=done, speed=f"{speed:.2f} samples/s" if speed else "? samples/s")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None


def _is_main() -> bool:
    import os

    return os.environ.get("RANK", "0") == "0"


def _world() -> int:
    import os

    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def register(data_app: typer.Typer) -> None:
    """Attach the ``cache`` sub-group (``osctl data cache``, ``osctl data cache inspect``) to the ``data`` group."""
    data_app.add_typer(app, name="cache")
