"""Where a training run's numbers go: ``logs/metrics.jsonl`` always, plus the recipe's ``train.trackers``.

Only rank 0 tracks (other ranks get an empty :class:`Trackers`). Each call is handed to every tracker
in turn; a tracker that raises is reported once (a warning naming it and the error) and disabled for
the rest of the run, so a broken tracker never ends training. ``close`` is called once, from a
``finally`` in ``osctl.train.run``: after a normal end, an error, or a stop signal's checkpoint-exit.
"""

from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path
from typing import Any

from osctl.protocols import Tracker

log = logging.getLogger("osctl.train.tracking")

METRICS_FILE = Path("logs") / "metrics.jsonl"
CURVES_FILE = Path("logs") / "curves.png"


class MetricsFile:
    """The always-on tracker: one JSON line per logged step appended to ``<output_dir>/logs/metrics.jsonl``.

    The file is opened on the first record (a run that fails before its first step leaves none) and
    appended to, so a resumed run continues the same file.
    """

    def __init__(self, output_dir: Path) -> None:
        self.path = Path(output_dir) / METRICS_FILE
        self.handle: Any = None

    def log_config(self, config: dict[str, Any]) -> None:
        """Nothing: the resolved recipe is in ``plan.json`` and every checkpoint's ``recipe.yaml``."""

    def log_metrics(self, step: int, metrics: dict[str, Any]) -> None:
        """Append ``metrics`` (which holds ``step``) as one line and flush, so the file is current after a kill."""
        if self.handle is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.handle = self.path.open("a", encoding="utf-8")
        self.handle.write(json.dumps(metrics) + "\n")
        self.handle.flush()

    def log_videos(self, step: int, tag: str, paths: list[Path]) -> None:
        """Nothing: the metrics file holds numbers only; the videos are under ``output_dir/validation``."""

    def close(self) -> None:
        """Close the file."""
        if self.handle is not None:
            self.handle.close()
            self.handle = None


class Trackers:
    """Fans every call out to named trackers; one that raises is warned about once and dropped."""

    def __init__(self, trackers: list[tuple[str, Tracker]] | None = None) -> None:
        self.active: list[tuple[str, Tracker]] = list(trackers or [])
        self.disabled: list[str] = []
        self.closed = False

    @property
    def names(self) -> list[str]:
        """Names of the trackers still receiving calls."""
        return [name for name, _ in self.active]

    def log_config(self, config: dict[str, Any]) -> None:
        """Hand the resolved recipe to every tracker."""
        self._each("log_config", config)

    def log_metrics(self, step: int, metrics: dict[str, Any]) -> None:
        """Hand one logged step's record to every tracker."""
        self._each("log_metrics", step, metrics)

    def log_videos(self, step: int, tag: str, paths: list[Path]) -> None:
        """Hand the validation samples of ``step`` (under ``tag``, e.g. ``validation/model_ema``) to every tracker."""
        if paths:
            self._each("log_videos", step, tag, list(paths))

    def close(self) -> None:
        """Close every tracker once; a failing close is reported and does not stop the others."""
        if self.closed:
            return
        self.closed = True
        self._each("close")
        self.active = []

    def _each(self, method: str, *args: Any) -> None:
        for entry in list(self.active):
            name, tracker = entry
            try:
                getattr(tracker, method)(*args)
            except Exception as exc:
                log.warning("tracker %r failed in %s and is disabled for the rest of this run: %s: %s",
                            name, method, type(exc).__name__, exc)
                self.active.remove(entry)
                self.disabled.append(name)
                if method != "close":
                    with contextlib.suppress(Exception):
                        tracker.close()


def write_curves(output_dir: Path) -> Path | None:
    """Redraw ``<output_dir>/logs/curves.png`` (loss, its moving average and the learning rate against the
    step) from ``logs/metrics.jsonl``; rank 0 calls it after each checkpoint, so the picture is as current
    as the newest checkpoint. Nothing is drawn before the first logged step.

    A failure (no matplotlib, a full disk) is a warning naming the error, never the end of training.
    """
    metrics = Path(output_dir) / METRICS_FILE
    try:
        if not metrics.is_file():
            return None
        from osctl.plots import read_metrics, training_curves

        records = read_metrics(metrics)
        return training_curves(records, Path(output_dir) / CURVES_FILE) if records else None
    except Exception as exc:
        log.warning("could not draw %s (training goes on): %s: %s", Path(output_dir) / CURVES_FILE,
                    type(exc).__name__, exc)
        return None


def open_trackers(checked: Any, registry: Any, *, output_dir: Path, start_step: int, is_main: bool) -> Trackers:
    """Rank 0: the metrics file plus the recipe's trackers, built now (before the first step); other ranks: none."""
    if not is_main:
        return Trackers()
    from osctl.build import build_trackers

    return Trackers([("metrics.jsonl", MetricsFile(output_dir)),
                     *build_trackers(checked, registry, output_dir=output_dir, start_step=start_step)])
