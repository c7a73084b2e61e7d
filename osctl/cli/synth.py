"""`osctl data synth shapes`: write the built-in shapes dataset (real media files + OSP annotations).

The ``data`` group lives in :mod:`osctl.cli.data`; this module adds its ``synth`` sub-group through
:func:`register`, so the two can change independently.

``--json`` schema, stable: ``{"schema": "osctl.data.synth.shapes/1", "out", "data_txt",
"annotations": [path, ...], "held_out_prompts", "videos", "images", "files", "bytes", "reused",
"held_out": [[color, shape, motion], ...], "seconds"}`` (paths absolute).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from osctl.cli._options import JsonOpt
from osctl.cli._output import console, err_console, print_json
from osctl.synth import DEFAULT_IMAGES, DEFAULT_LANE_SPREAD, DEFAULT_VIDEOS

app = typer.Typer(help="Write synthetic datasets: real media files with Open-Sora-Plan annotations.",
                  no_args_is_help=True)


@app.command("shapes")
def shapes(
    out: Annotated[Path, typer.Argument(help="Output folder (created; must be empty or an earlier shapes dataset).",
                                        show_default=False)],
    videos: Annotated[int, typer.Option("--videos", min=0, help="Number of mp4 clips.")] = DEFAULT_VIDEOS,
    images: Annotated[int, typer.Option("--images", min=0, help="Number of jpg/png images.")] = DEFAULT_IMAGES,
    seed: Annotated[int, typer.Option("--seed", min=0, help="Seed of every random choice.")] = 0,
    hold_out: Annotated[bool, typer.Option("--hold-out/--no-hold-out",
                                           help="Leave the held-out colour/shape/motion combinations out.")] = True,
    video_background: Annotated[list[str] | None, typer.Option(
        "--video-background", help="Background of the clips (repeat for several: black, grey); default black. "
                                   "Images use every background.", show_default=False)] = None,
    lane_spread: Annotated[float, typer.Option(
        "--lane-spread", min=0.0, max=1.0,
        help="How far from the middle a clip's shape may be, as a fraction of the free range: 0 (default) = "
             "moving shapes cross through the middle and still ones sit there, 1 = anywhere.")] = DEFAULT_LANE_SPREAD,
    force: Annotated[bool, typer.Option("--force", help="Rewrite even when OUT already holds this dataset.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Write a dataset of coloured circles, squares and triangles moving left/right/up/down or still.

    Writes mp4 clips (12/24/30 fps, 1-2 s, three aspect ratios; on black unless --video-background
    says otherwise; shapes move through or sit in the middle of the frame unless --lane-spread says
    otherwise), jpg/png images (on black and grey), a JSON and a pickle annotation file (with
    aesthetic, cut, crop, tech and motion on some records), data.txt joining the two roots, and
    held_out_prompts.txt. Running it again with the same options reuses the files.

    Examples:

      [bold]osctl data synth shapes demo_out/data[/]

      [bold]osctl data synth shapes /tmp/shapes --videos 12 --images 6 --seed 1 --json[/]
    """
    from osctl.synth.shapes import DEFAULT_VIDEO_BACKGROUNDS, synth_shapes

    backgrounds = tuple(video_background) if video_background else DEFAULT_VIDEO_BACKGROUNDS

    progress = None
    if not as_json and err_console.is_terminal:
        from rich.progress import Progress

        progress = Progress(console=err_console, transient=True)
    if progress is not None:
        with progress:
            task = progress.add_task("writing media", total=videos + images)
            result = synth_shapes(out, videos=videos, images=images, seed=seed, hold_out=hold_out,
                                  video_backgrounds=backgrounds, lane_spread=lane_spread, force=force,
                                  progress=lambda done, total: progress.update(task, completed=done))
    else:
        result = synth_shapes(out, videos=videos, images=images, seed=seed, hold_out=hold_out,
                              video_backgrounds=backgrounds, lane_spread=lane_spread, force=force)
    if as_json:
        print_json(result.to_json())
        return
    table = Table(title="shapes dataset" + (" (already written, reused)" if result.reused else ""),
                  show_header=False)
    table.add_column("item", style="bold")
    table.add_column("value", overflow="fold")
    table.add_row("folder", escape(str(result.out)))
    table.add_row("data.txt", escape(str(result.data_txt)))
    for path in result.annotation_files:
        table.add_row("annotations", escape(str(path)))
    table.add_row("videos / images", f"{result.videos} / {result.images}")
    held = ", ".join(" ".join(c) for c in result.held_out) or "none (--no-hold-out)"
    table.add_row("held out", escape(held))
    table.add_row("held-out prompts", escape(str(result.held_out_prompts)))
    table.add_row("size", f"{len(result.files)} files, {result.bytes / 1e6:.2f} MB")
    table.add_row("time", f"{result.seconds:.1f} s")
    console.print(table)
    console.print(f"next: [bold]osctl data validate {escape(str(result.data_txt))} --probe[/]")


def register(data_app: typer.Typer) -> None:
    """Attach the ``synth`` sub-group (``osctl data synth shapes``) to the ``data`` command group."""
    data_app.add_typer(app, name="synth")
