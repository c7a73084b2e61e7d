"""`osctl eval`: measure how well generated samples follow their prompts.

``osctl eval shapes SAMPLES_DIR`` scores samples of the shapes dataset's prompts (see
:mod:`osctl.eval.shapes` for the method). Exit codes: 0 evaluated; 1 no samples to evaluate, or an
accuracy below a ``--min-accuracy`` bound; 2 usage error.

``--json`` schema, stable: ``{"schema": "osctl.eval.shapes/1", "samples_dir", "settings":
{"still_threshold", "max_frames"}, "totals": {"samples", "evaluated", "found", "color"|"shape"|"motion":
{"correct", "total", "accuracy", "chance"}}, "prompts": [{"prompt", "expected": {"color", "shape", "motion"},
"samples", "color"|"shape"|"motion": {"correct", "total", "accuracy", "chance"}, "most_common_prediction"}],
"samples": [{"file", "prompt", "prompt_source", "expected", "predicted", "correct", "found", "reason",
"measurements": {"frames", "frames_analysed", "frames_with_object", "background", "object_rgb",
"fill_ratio", "displacement"}}], "checks": [{"attribute", "minimum", "accuracy", "ok"}]}``.
Accuracies are ``null`` when no prompt names the attribute; ``chance`` is the accuracy of random guessing
(1 / number of classes: colour 0.2, shape 0.3333, motion 0.2).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from osctl.cli._options import JsonOpt
from osctl.cli._output import console, print_json
from osctl.errors import CheckFailed, UsageError
from osctl.eval import STILL_THRESHOLD

app = typer.Typer(help="Measure how well generated samples follow their prompts.", no_args_is_help=True)

_ATTRIBUTES = ("color", "shape", "motion")


@app.command("shapes")
def shapes(
    samples_dir: Annotated[Path, typer.Argument(help="Folder of samples (the --output-dir of osctl sample).",
                                                show_default=False)],
    still_threshold: Annotated[float, typer.Option(
        "--still-threshold", help="Displacement (fraction of the frame) below which an object is still.")] = STILL_THRESHOLD,
    min_accuracy: Annotated[list[str] | None, typer.Option(
        "--min-accuracy", metavar="ATTR=VALUE",
        help="Exit 1 when an accuracy is below VALUE, e.g. --min-accuracy color=0.9 (repeatable).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Score colour, shape and motion of shapes samples against their prompts, by image analysis.

    Reads each .mp4/.png/.jpg in SAMPLES_DIR, takes the prompt from its .json sidecar (or the file
    name), finds the object on the plain background and compares its colour, shape (fill ratio)
    and motion (centroid track) with the prompt.

    Examples:

      [bold]osctl eval shapes demo_out/samples[/]

      [bold]osctl eval shapes demo_out/samples --json --min-accuracy color=0.9 --min-accuracy motion=0.8[/]
    """
    bounds = _parse_bounds(min_accuracy or [])
    from osctl.eval.shapes import evaluate_dir

    report = evaluate_dir(samples_dir, still_threshold=still_threshold)
    totals = report.totals()
    checks = [{"attribute": a, "minimum": v, "accuracy": totals[a]["accuracy"],
               "ok": totals[a]["accuracy"] is not None and totals[a]["accuracy"] >= v} for a, v in bounds.items()]
    if as_json:
        print_json({**report.to_json(), "checks": checks})
    else:
        _print_report(report, totals)
    failed = [c for c in checks if not c["ok"]]
    if failed:
        text = "; ".join(f"{c['attribute']} accuracy {c['accuracy']} < {c['minimum']}" for c in failed)
        raise CheckFailed(f"{samples_dir}: {text}.", hint="look at the per-prompt table for the failing prompts.")


def _parse_bounds(items: list[str]) -> dict[str, float]:
    bounds: dict[str, float] = {}
    for item in items:
        name, sep, value = item.partition("=")
        name = name.strip().lower().replace("colour", "color")
        try:
            number = float(value)
        except ValueError:
            number = -1.0
        if not sep or name not in _ATTRIBUTES or not 0 <= number <= 1:
            raise UsageError(f"--min-accuracy {item!r} is not ATTR=VALUE with ATTR one of "
                             f"{', '.join(_ATTRIBUTES)} and VALUE in [0, 1]; e.g. --min-accuracy color=0.9.")
        bounds[name] = number
    return bounds


def _fmt(score: dict[str, Any]) -> str:
    if score["accuracy"] is None:
        return "-"
    return f"{score['accuracy']:.2f} ({score['correct']}/{score['total']})"


def _print_report(report: Any, totals: dict[str, Any]) -> None:
    summary = Table(title=f"prompt adherence: {totals['samples']} samples in {escape(str(report.samples_dir))}")
    for column in ("attribute", "correct", "total", "accuracy", "chance"):
        summary.add_column(column, justify="left" if column == "attribute" else "right")
    for a in _ATTRIBUTES:
        s = totals[a]
        summary.add_row(a, str(s["correct"]), str(s["total"]), "-" if s["accuracy"] is None else f"{s['accuracy']:.3f}",
                        f"{s['chance']:.3f}")
    console.print(summary)
    table = Table(title="per prompt")
    chances = {a: f"{a} (chance {totals[a]['chance']:.2f})" for a in _ATTRIBUTES}
    for column in ("prompt", "n", *chances.values(), "most common prediction"):
        table.add_column(column, overflow="fold")
    for row in report.per_prompt():
        table.add_row(escape(row["prompt"]), str(row["samples"]), _fmt(row["color"]), _fmt(row["shape"]),
                      _fmt(row["motion"]), escape(row["most_common_prediction"]))
    console.print(table)
    missing = [s for s in report.samples if not s.measurement.found]
    if missing:
        shown = ", ".join(f"{s.file} ({s.error or s.measurement.reason})" for s in missing[:3])
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        console.print(f"[yellow]{len(missing)} sample(s) with no object found[/] (counted wrong): {escape(shown)}{more}")
    unparsed = [s.file for s in report.samples if s.expected.empty]
    if unparsed:
        console.print(f"[yellow]{len(unparsed)} sample(s) whose prompt names no colour, shape or motion[/] "
                      f"(not scored): {escape(', '.join(unparsed[:3]))}")
