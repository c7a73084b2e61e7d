"""Model FLOPs of a training or sampling step, and model FLOPs utilisation (MFU) against a device's peak.

FLOPs are counted, not estimated from a formula: the model runs forward (and backward) on the meta device under
torch's ``FlopCounterMode``, which adds up every matmul, convolution and attention kernel by its shapes. So the
count follows the actual attention pattern (Skiparse's grouped attention, a family's joint text-video
attention, padding) at no memory or compute cost. Model FLOPs exclude activation checkpointing's recomputation
(the usual MFU convention: recomputation is overhead, not useful work), so the count runs with checkpointing off.

MFU = model FLOPs per second / the device's dense peak. :data:`DENSE_BF16_TFLOPS` lists the bf16 dense
(no structured sparsity) tensor-core peaks of common training GPUs from their vendors' data sheets; a device not
listed needs ``peak_tflops`` given.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

#: dense bf16 peak TFLOP/s by device name fragment, most specific first (vendors' data sheets)
DENSE_BF16_TFLOPS: tuple[tuple[str, float], ...] = (
    ("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.4), ("H200", 989.4), ("H20", 148.0),
    ("B200", 2250.0), ("GH200", 989.4), ("A100", 312.0), ("A800", 312.0), ("L40S", 362.0), ("L40", 181.0),
    ("A10G", 70.0), ("A10", 125.0), ("RTX 4090", 165.2), ("RTX 6000 Ada", 364.2), ("MI300X", 1307.0),
)


def device_peak_tflops(name: str) -> float | None:
    """The dense bf16 peak of a device called ``name`` (``torch.cuda.get_device_name``), None when unknown."""
    for fragment, peak in DENSE_BF16_TFLOPS:
        if fragment.lower() in name.lower():
            return peak
    return None


def count_flops(run: Callable[[], Any]) -> int:
    """FLOPs of everything ``run`` computes (forward, and backward when it calls it), by ``FlopCounterMode``."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        run()
    return int(counter.get_total_flops())


def model_step_flops(model: torch.nn.Module, inputs: Callable[[], tuple[tuple[Any, ...], dict[str, Any]]], *,
                     backward: bool) -> int:
    """Model FLOPs of one call of ``model`` on ``inputs()`` (positional and keyword arguments, built inside
    the count so they can live on the meta device), with its backward when ``backward``; checkpointing is
    switched off for the count (see the module docstring) and back on afterwards."""
    checkpointed = [m for m in model.modules() if getattr(m, "gradient_checkpointing", False) is True]
    for module in checkpointed:
        module.gradient_checkpointing = False

    def run() -> None:
        args, kwargs = inputs()
        with torch.set_grad_enabled(backward):
            out = model(*args, **kwargs)
            out = out[0] if isinstance(out, tuple) else out
            if backward:
                out.float().sum().backward()

    try:
        return count_flops(run)
    finally:
        for module in checkpointed:
            module.gradient_checkpointing = True


def mfu(flops: float, seconds: float, peak_tflops: float) -> float:
    """Model FLOPs utilisation: ``flops`` done in ``seconds`` as a fraction of ``peak_tflops``."""
    return flops / seconds / (peak_tflops * 1e12)
