"""PNG charts for people: a training run's loss/learning-rate curves and a data index's bucket histogram.

Why PNGs: a curve or a histogram is read at a glance where a table of numbers is not, and a PNG opens
anywhere (a file browser, a notebook, an issue). matplotlib is imported here only, inside the functions
that draw, with the Agg canvas (no display, no global backend change), so the CLI starts without it.
Every chart is written atomically (a temporary file renamed into place): a viewer refreshing the file
never sees half a picture.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

CURVES_SIZE = (1000, 600)
"""Width x height in pixels of ``logs/curves.png``."""

BUCKETS_SIZE = (1200, 700)
"""Width x height in pixels of the ``osctl data bucket --plot`` histogram."""

MAX_BUCKET_BARS = 40
"""Buckets drawn one bar each; the smaller rest are summed into one "other" bar so labels stay readable."""

_DPI = 100


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The records of a ``logs/metrics.jsonl``, one per logged step, in step order.

    A resumed run appends to the same file and may log a step again (it went past its last checkpoint
    before it stopped): the newest record of a step wins. A line that is not a JSON object (the half
    line a kill can leave) is skipped.
    """
    by_step: dict[int, dict[str, Any]] = {}
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), int):
            by_step[record["step"]] = record
    return [by_step[step] for step in sorted(by_step)]


def moving_average(values: list[float], window: int) -> list[float]:
    """Trailing mean over at most ``window`` values (shorter at the start, so no point is lost)."""
    out: list[float] = []
    total = 0.0
    for i, value in enumerate(values):
        total += value
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def training_curves(records: Iterable[Mapping[str, Any]], path: Path) -> Path:
    """Draw loss (each logged value and a moving average) and the learning rate (second axis) against the
    step, and write them as a PNG of :data:`CURVES_SIZE` pixels at ``path``.

    ``records`` are ``metrics.jsonl`` records (``step``, ``loss``, ``loss_avg``, ``lr``); records without a
    loss are skipped. The average runs over ``loss_avg`` where records have it (the mean of every step
    since the previous record, so it is an average of steps even with few records), else over ``loss``,
    with a window of a twentieth of the records (at least 1, at most 200): the trend shows on 50 logged
    steps and on 50,000.
    """
    rows = [r for r in records if isinstance(r.get("loss"), int | float) and isinstance(r.get("step"), int)]
    steps = [int(r["step"]) for r in rows]
    losses = [float(r["loss"]) for r in rows]
    means = [float(r["loss_avg"]) if isinstance(r.get("loss_avg"), int | float) else float(r["loss"]) for r in rows]
    fig, canvas = _figure(CURVES_SIZE, constrained=False)  # fixed margins: a third of the drawing time
    fig.subplots_adjust(left=0.08, right=0.9, bottom=0.09, top=0.88)
    ax = fig.add_subplot()
    ax.plot(steps, losses, color="tab:blue", alpha=0.35, linewidth=1, label="loss")
    if rows:
        ax.plot(steps, moving_average(means, max(1, min(200, len(rows) // 20))), color="tab:blue", linewidth=2,
                label="loss, moving average")
    ax.set_xlabel("step")
    ax.set_ylabel("loss", color="tab:blue")
    ax.grid(True, alpha=0.3)
    lr_rows = [(int(r["step"]), float(r["lr"])) for r in rows if isinstance(r.get("lr"), int | float)]
    handles, labels = ax.get_legend_handles_labels()
    if lr_rows:
        lr_ax = ax.twinx()
        lr_ax.plot([s for s, _ in lr_rows], [v for _, v in lr_rows], color="tab:orange", linewidth=1.5,
                   label="learning rate")
        lr_ax.set_ylabel("learning rate", color="tab:orange")
        lr_ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
        more_handles, more_labels = lr_ax.get_legend_handles_labels()
        handles, labels = handles + more_handles, labels + more_labels
    if handles:  # above the axes, where it hides no curve
        ax.legend(handles, labels, loc="lower left", bbox_to_anchor=(0.0, 1.0), ncols=len(handles),
                  frameon=False, fontsize=9)
    last = f"step {steps[-1]}, loss {losses[-1]:.4g}" if rows else "no steps logged yet"
    fig.suptitle(f"training loss and learning rate: {last}")
    return _save(canvas, path)


def bucket_histogram(buckets: Iterable[tuple[int, int, int, int]], dropped: Mapping[str, int], path: Path) -> Path:
    """Draw the samples per bucket (bars labelled frames×height×width, largest first) above the records
    dropped per reason, and write them as a PNG of :data:`BUCKETS_SIZE` pixels at ``path``.

    ``buckets`` are ``(frames, height, width, samples)``; ``dropped`` maps a reason code (as
    ``osctl data bucket`` prints it) to its record count; zero counts are left out.
    """
    ordered = sorted(buckets, key=lambda b: (-b[3], b[0], b[1], b[2]))
    labels = [f"{t}×{h}×{w}" for t, h, w, _ in ordered[:MAX_BUCKET_BARS]]
    counts = [count for *_, count in ordered[:MAX_BUCKET_BARS]]
    rest = ordered[MAX_BUCKET_BARS:]
    if rest:
        labels.append(f"other ({len(rest)} buckets)")
        counts.append(sum(count for *_, count in rest))
    drops = sorted(((code, n) for code, n in dropped.items() if n), key=lambda item: -item[1])
    fig, canvas = _figure(BUCKETS_SIZE)
    top, bottom = fig.subplots(2, 1, gridspec_kw={"height_ratios": [3, 2]})
    bars = top.bar(range(len(counts)), counts, color="tab:blue")
    top.bar_label(bars, fontsize=7)
    top.set_xticks(range(len(labels)), labels, rotation=60, ha="right", fontsize=8)
    top.set_ylabel("samples")
    top.set_title(f"{sum(counts)} samples in {len(ordered)} bucket(s) (frames×height×width)")
    if drops:
        rows = bottom.barh(range(len(drops)), [n for _, n in drops], color="tab:orange")
        bottom.bar_label(rows, fontsize=7)
        bottom.set_yticks(range(len(drops)), [code for code, _ in drops], fontsize=8)
        bottom.invert_yaxis()
        bottom.set_xlabel("records")
        bottom.set_title(f"{sum(n for _, n in drops)} record(s) dropped, by reason")
    else:
        bottom.set_axis_off()
        bottom.set_title("no record dropped")
    return _save(canvas, path)


def plot_buckets(result: Any, path: Path) -> Path:
    """:func:`bucket_histogram` of a :class:`osctl.data.bucket.BucketResult`: its buckets, and its records
    by drop reason (the reason codes ``osctl data bucket`` prints; kept records are the buckets)."""
    from osctl.data.bucket import Reason

    dropped = {code: n for code, n in result.reason_counts().items() if code != Reason.KEPT.code}
    return bucket_histogram([(b.t, b.h, b.w, b.count) for b in result.buckets], dropped, path)


def _figure(size: tuple[int, int], *, constrained: bool = True) -> tuple[Any, Any]:
    """A figure of ``size`` pixels on its own Agg canvas (no pyplot, so nothing global changes);
    ``constrained`` lays the axes out around their labels (long rotated bucket labels need it)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(size[0] / _DPI, size[1] / _DPI), dpi=_DPI, layout="constrained" if constrained else None)
    return fig, FigureCanvasAgg(fig)


def _save(canvas: Any, path: Path) -> Path:
    """Write the canvas as PNG through a temporary file in ``path``'s folder, then rename it into place."""
    from osctl.utils.atomic import atomic_file

    path = Path(path)
    with atomic_file(path, root=path.parent) as tmp:
        canvas.print_png(str(tmp))
    return path
