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


def _fsdp(config: Any, **runtime: Any) -> Any:
    from osctl_builtin.strategies.fsdp import FSDPStrategy

    return FSDPStrategy(**runtime)


def _deepspeed(config: Any, **runtime: Any) -> Any:
    from osctl_builtin.strategies.deepspeed_engine import DeepSpeedStrategy

    return DeepSpeedStrategy(**runtime)


@osctl.hookimpl
def register_strategies(register: Any) -> None:
    """Register ``single``, ``ddp``, ``fsdp`` and ``deepspeed``."""
    register(osctl.ComponentSpec(name="single", summary="one process, one device", factory=_single,
                                 metadata={"multi_process": False}))  # refused when several processes run
    register(osctl.ComponentSpec(name="ddp", summary="data parallel (torch DistributedDataParallel)", factory=_ddp,
                                 metadata={"multi_process": True}))
    register(osctl.ComponentSpec(name="fsdp", summary="fully sharded data parallel (torch FSDP2 fully_shard)",
                                 factory=_fsdp, metadata={"multi_process": True}))
    register(osctl.ComponentSpec(name="deepspeed", summary="DeepSpeed ZeRO stage 2/3 (parallel.zero_stage), CPU offload",
                                 factory=_deepspeed, metadata={"multi_process": True, "requires": {
                                     "deepspeed": 'pip install -c constraints.txt "osctl[deepspeed]"'}}))
