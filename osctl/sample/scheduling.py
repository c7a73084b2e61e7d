"""A uniform way to drive any diffusers-style scheduler, whatever optional arguments it supports.

Schedulers differ in small ways (flow-matching ones have no ``init_noise_sigma`` or
``scale_model_input``; PNDM/DEIS/Heun take no ``generator``; only DDIM-like ones take ``eta``).
These helpers hide that so the pipeline's loop is the same for every sampler.
"""

from __future__ import annotations

import inspect
from functools import lru_cache
from typing import Any


@lru_cache(maxsize=64)
def _step_parameters(cls: type) -> frozenset[str]:
    return frozenset(inspect.signature(cls.step).parameters)


def set_timesteps(scheduler: Any, num_inference_steps: int, device: Any, options: dict[str, Any] | None = None) -> None:
    """``scheduler.set_timesteps(num_inference_steps, device=...)`` with those of ``options`` it accepts (a family's
    schedule: e.g. LTX-Video's ``sigmas`` and the token-dependent ``mu`` of a dynamically shifted flow sampler);
    ``sigmas`` replace the step count, as diffusers' pipelines pass them."""
    accepted = frozenset(inspect.signature(scheduler.set_timesteps).parameters)
    extra = {k: v for k, v in (options or {}).items() if k in accepted and v is not None}
    if "sigmas" in extra:
        scheduler.set_timesteps(device=device, **extra)
    else:
        scheduler.set_timesteps(num_inference_steps, device=device, **extra)


def init_noise_sigma(scheduler: Any) -> float:
    """The factor initial Gaussian latents are multiplied by (1.0 when the scheduler has none)."""
    return float(getattr(scheduler, "init_noise_sigma", 1.0))


def scale_model_input(scheduler: Any, sample: Any, timestep: Any) -> Any:
    """``scheduler.scale_model_input`` when the scheduler defines it, else the sample unchanged."""
    scale = getattr(scheduler, "scale_model_input", None)
    return sample if scale is None else scale(sample, timestep)


def step(scheduler: Any, model_output: Any, timestep: Any, sample: Any, *, generator: Any = None,
         eta: float = 0.0) -> Any:
    """One scheduler step returning the previous sample; passes ``generator``/``eta`` only where accepted."""
    accepted = _step_parameters(type(scheduler))
    extra: dict[str, Any] = {}
    if "generator" in accepted:
        extra["generator"] = generator
    if "eta" in accepted:
        extra["eta"] = eta
    return scheduler.step(model_output, timestep, sample, return_dict=False, **extra)[0]
