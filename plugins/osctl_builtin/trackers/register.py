"""Registers the built-in trackers (kind ``tracker``): ``tensorboard``.

Kept light: torch and tensorboard are imported only inside the factory.
"""

from __future__ import annotations

from typing import Any

import osctl
from osctl_builtin.trackers.tensorboard_tracker import INSTALL, TensorBoardConfig, build_tensorboard


@osctl.hookimpl
def register_trackers(register: Any) -> None:
    """Register the TensorBoard tracker (needs the optional ``tensorboard`` package)."""
    register(osctl.ComponentSpec(
        name="tensorboard", aliases=("tb",),
        summary="TensorBoard event files in <output_dir>/logs/tensorboard: scalars, the recipe, validation frames",
        factory=build_tensorboard, config=TensorBoardConfig, metadata={"requires": {"tensorboard": INSTALL}},
    ))
