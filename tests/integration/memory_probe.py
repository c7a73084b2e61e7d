"""Measure the peak host memory of a training step on CPU and print it beside osctl's estimate (one JSON line).

Run as ``python memory_probe.py '[{"sets": [...], "batch": 2, "size": 64}, ...]' FOLDER`` in a fresh process with
``MALLOC_MMAP_THRESHOLD_=65536``: every tensor buffer of 64 KiB or more is then its own mapping that glibc
returns to the system when torch frees it, so the resident set follows the tensors alive. The peak is
read from the kernel's high-water mark (``VmHWM``), reset (``/proc/self/clear_refs``) before the measured
step; what was resident before the model existed (interpreter, libraries, kernels warmed up by a throwaway
step) is subtracted. That is the quantity the estimate models: weights, gradients, optimizer state, EMA,
frozen components, saved activations and the transient peak of backward, as ``max_memory_allocated``
measures on a GPU.
"""

from __future__ import annotations

import gc
import json
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def rss(field: str = "VmRSS") -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(field)


def reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")


def main(specs: list[dict], folder: Path) -> list[dict]:
    """Measure and estimate each configuration in turn (after one throwaway step that warms everything up)."""
    from osctl.train.loop import micro_step
    from tests.integration.train_worker import setup

    torch.set_num_threads(1)
    warm = setup({"name": "warm", "sets": ["train.lora={rank: 2}"], "batch": 1}, folder, 0, 1)
    micro_step(warm, next(iter(warm.data)), sync=True, scale=1.0)  # loads every kernel and library once
    warm.strategy.optimizer_step()
    del warm
    return [measure(spec, folder / str(i)) for i, spec in enumerate(specs)]


def measure(spec: dict, folder: Path) -> dict:
    """One configuration: its measured peak (resident set above the baseline) and osctl's estimate."""
    from osctl.train.loop import micro_step
    from tests.integration.train_worker import setup

    gc.collect()
    baseline = rss()
    size = spec.get("size", 16)
    sets = [*spec["sets"], f"data.max_height={size}", f"data.max_width={size}", "train.max_steps=2"]
    parts = setup({"name": "run", "sets": sets, "batch": spec.get("batch", 2)}, folder, 0, 1)
    batches = iter(parts.data)
    micro_step(parts, next(batches), sync=True, scale=1.0)  # step 1 creates the optimizer state
    parts.strategy.optimizer_step()
    if parts.ema is not None:
        parts.ema.update(p for _, p in parts.strategy.local_parameters())
    gc.collect()
    reset_peak()
    micro_step(parts, next(batches), sync=True, scale=1.0)
    peak = rss("VmHWM") - baseline
    memory = estimate(spec, folder, parts)
    del parts, batches
    return {"measured": peak, "estimated": memory.total, "line": memory.line()}



def estimate(spec: dict, folder: Path, parts: object) -> int:
    """osctl's estimate for the same recipe (meta device only)."""
    from osctl.plugin_manager import default_registry
    from osctl.train.memory import planned_model, recipe_step_memory

    registry = default_registry()
    checked = parts.checked  # type: ignore[attr-defined]
    model = planned_model(checked, registry)
    geometry = checked.geometry
    recipe = checked.loaded.recipe
    frozen = sum(p.numel() * p.element_size() for c in (parts.autoencoder, parts.text_encoder)  # type: ignore[attr-defined]
                 for p in (c.parameters() if hasattr(c, "parameters") else []))
    size = spec.get("size", 16)
    offload = recipe.train.offload.blocks if recipe.train.offload is not None else 0
    memory = recipe_step_memory(checked, model, geometry, bucket=(recipe.data.num_frames, size, size),
                                batch=spec.get("batch", 2), text_tokens=parts.text_encoder.max_length,  # type: ignore[attr-defined]
                                strategy="single", world_size=1, frozen_components=frozen,
                                offload_blocks=offload if isinstance(offload, int) else 0, device_type="cpu")
    return memory


if __name__ == "__main__":
    print(json.dumps(main(json.loads(sys.argv[1]), Path(sys.argv[2]))))
