"""Registers the built-in parallel strategies (heavy imports stay inside the factories)."""

from __future__ import annotations

from typing import Any

import osctl


def _single(config: Any, **runtime: Any) -> Any:
    from osctl_builtin.strategies.torch_native import SingleStrategy

    return SingleStrategy(**runtime)


def _ddp(config: Any, **runtime: Any) -> Any:
    from osctl_builtin.strategies.torch_native import DDPStrategy

    return DDPStrategy(**runtime)


@osctl.hookimpl
def register_strategies(register: Any) -> None:
    """Register ``single`` and ``ddp``."""
    register(osctl.ComponentSpec(name="single", summary="one process, one device", factory=_single))
    register(osctl.ComponentSpec(name="ddp", summary="data parallel (torch DistributedDataParallel)", factory=_ddp,
                                 metadata={"multi_process": True}))
