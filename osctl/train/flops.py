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

import time
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


class StepFlops:
    """Model FLOPs of a run's training micro-steps, counted once per batch shape on a meta-device copy of the model,
    and the achieved TFLOP/s and MFU of the steps since the last logged record (``train``'s logs on a GPU).

    ``meta_model`` is the model as it trains (LoRA adapter, frozen base) on the meta device
    (:func:`osctl.train.memory.planned_model`); under sequence parallelism each rank of a group of ``sp_size``
    computes a ``1/sp_size`` share of every sample. A model whose forward cannot run on the meta device is
    reported once and counted no further (training goes on).
    """

    def __init__(self, meta_model: torch.nn.Module, *, sp_size: int = 1, peak_tflops: float | None = None) -> None:
        self.model = meta_model
        self.sp_size = max(1, int(sp_size))
        self.peak_tflops = peak_tflops
        self.per_shape: dict[tuple[tuple[int, ...], tuple[int, ...]], int] = {}
        self.done = 0.0  # FLOPs of the micro-steps since the last record
        self.counting_s = 0.0  # seconds spent counting since then (a new shape's meta run, not training)
        self.failed: str | None = None

    def count(self, latent_shape: tuple[int, ...], text_shape: tuple[int, ...]) -> int:
        """Model FLOPs of one micro-step (forward and backward) on this rank for latents ``B x C x T x H x W`` and
        text states ``B x L x D`` (counted at the first use of the shapes)."""
        key = (tuple(latent_shape), tuple(text_shape))
        if key not in self.per_shape:
            batch = latent_shape[0]

            def inputs() -> tuple[tuple[Any, ...], dict[str, Any]]:
                meta = torch.device("meta")
                hidden = torch.empty(latent_shape, device=meta)
                text = torch.empty((batch, 1, *text_shape[1:]), device=meta)
                return (hidden, torch.zeros(batch, dtype=torch.long, device=meta), text), {
                    "attention_mask": torch.ones((batch, *latent_shape[2:]), device=meta),
                    "encoder_attention_mask": torch.ones((batch, 1, text_shape[1]), device=meta),
                    "return_dict": False}

            self.per_shape[key] = model_step_flops(self.model, inputs, backward=True) // self.sp_size
        return self.per_shape[key]

    def add(self, latent_shape: tuple[int, ...], text_shape: tuple[int, ...]) -> None:
        """Count one micro-step of these shapes (nothing after a failed count)."""
        if self.failed is not None:
            return
        started = time.perf_counter()
        try:
            self.done += self.count(latent_shape, text_shape)
            self.counting_s += time.perf_counter() - started
        except Exception as exc:  # a forward that needs real values: no figure, never a failed run
            import logging

            self.failed = f"{type(exc).__name__}: {exc}"
            logging.getLogger(__name__).warning("model FLOPs are not counted for this model (its forward did not run "
                                                "on the meta device: %s); logs carry no tflops/mfu", self.failed)

    def take(self, seconds: float) -> dict[str, float]:
        """``tflops`` (model TFLOP/s per process) and ``mfu`` (with a known peak) of the micro-steps counted since
        the last call, done in ``seconds`` (the time spent counting is taken off); empty when nothing was counted."""
        done, counting = self.done, self.counting_s
        self.done = self.counting_s = 0.0
        seconds -= counting
        if not done or seconds <= 0:
            return {}
        record = {"tflops": done / seconds / 1e12}
        if self.peak_tflops:
            record["mfu"] = mfu(done, seconds, self.peak_tflops)
        return record
