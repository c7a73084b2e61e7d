"""The ``tensorboard`` tracker: ``torch.utils.tensorboard.SummaryWriter`` under ``<output_dir>/logs/tensorboard``.

What it writes, at the optimizer step of each call:

- every number of a logged record as a scalar: ``train/loss``, ``train/loss_avg``, ``train/lr``,
  ``train/grad_norm``, ``train/samples_per_s``, ... and the loader's counters as ``data/reads``,
  ``data/bad_reads``, ``data/bad_samples``, ``data/replaced``, ``data/epoch``;
- the resolved recipe as text (``recipe``);
- each validation sample as one image of evenly spaced frames side by side
  (``validation/model/0000-a-red-ball``); ``add_video`` is not used because it needs moviepy.

A resumed run passes ``purge_step``, so events a killed run wrote after its last checkpoint are hidden.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from pydantic import Field

from osctl.errors import ConfigError
from osctl.registry import ComponentConfig

INSTALL = 'pip install -c constraints.txt "osctl[tensorboard]"'


class TensorBoardConfig(ComponentConfig):
    """Options of the ``tensorboard`` tracker (keys of a ``train.trackers`` entry)."""

    log_dir: Path = Field(Path("logs/tensorboard"), description="event folder; a relative path is under train.output_dir")
    flush_secs: float = Field(30.0, gt=0, description="how often pending events are written to disk")
    video_frames: int = Field(8, ge=1, description="frames of each validation video shown side by side")


def summary_writer_class() -> Any:
    """``torch.utils.tensorboard.SummaryWriter``, or a ``ConfigError`` saying how to install tensorboard."""
    try:
        import tensorboard  # noqa: F401  (torch.utils.tensorboard may be cached even when the package is gone)
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:
        raise ConfigError(f"train.trackers: the tensorboard tracker needs the tensorboard package, which cannot be "
                          f"imported ({exc}); install it with `{INSTALL}`.") from None
    return SummaryWriter


class TensorBoardTracker:
    """Writes a run's scalars, recipe and validation frames as TensorBoard events (``osctl.protocols.Tracker``)."""

    def __init__(self, config: TensorBoardConfig, output_dir: Path, start_step: int = 0) -> None:
        writer_class = summary_writer_class()
        self.log_dir = config.log_dir if config.log_dir.is_absolute() else Path(output_dir) / config.log_dir
        self.video_frames = config.video_frames
        self.writer = writer_class(log_dir=str(self.log_dir), flush_secs=config.flush_secs,
                                   purge_step=start_step if start_step > 0 else None)

    def log_config(self, config: dict[str, Any]) -> None:
        """The resolved recipe as a YAML code block (text tab, tag ``recipe``)."""
        import yaml

        text = yaml.safe_dump(config, sort_keys=False, default_flow_style=None, width=100)
        self.writer.add_text("recipe", "\n".join(f"    {line}" for line in text.splitlines()), 0)

    def log_metrics(self, step: int, metrics: dict[str, Any]) -> None:
        """Every finite number of ``metrics`` except ``step`` as a scalar (``data_x`` -> ``data/x``, else ``train/x``)."""
        for key, value in metrics.items():
            if key == "step" or isinstance(value, bool) or not isinstance(value, int | float):
                continue
            if not math.isfinite(value):
                continue
            tag = f"data/{key[5:]}" if key.startswith("data_") else f"train/{key}"
            self.writer.add_scalar(tag, value, step)

    def log_videos(self, step: int, tag: str, paths: list[Path]) -> None:
        """One image per sample: up to ``video_frames`` evenly spaced frames side by side (a ``.png`` as is)."""
        import numpy as np

        from osctl.media.read import read_spread_frames

        for path in paths:
            frames = read_spread_frames(Path(path), self.video_frames)[0]
            strip = np.concatenate(list(frames), axis=1)
            self.writer.add_image(f"{tag}/{Path(path).stem}", strip, step, dataformats="HWC")
        self.writer.flush()

    def close(self) -> None:
        """Flush and close the event file."""
        self.writer.close()


def build_tensorboard(config: TensorBoardConfig, *, output_dir: Path, start_step: int = 0, **_: Any) -> TensorBoardTracker:
    """Factory of the ``tensorboard`` tracker (rank 0 only; fails with the install command if tensorboard is missing)."""
    return TensorBoardTracker(config, output_dir, start_step)
