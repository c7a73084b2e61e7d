"""Recipe -> components: the one place (with recipe validation) that looks plugins up and builds them.

Training and sampling both call these, so a checkpoint's model is built the same way everywhere. Each
component is checked against its kind's contract in :mod:`osctl.protocols` as it is built.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import torch

from osctl.errors import ConfigError
from osctl.protocols import (
    Autoencoder,
    DiffusionModel,
    Refiner,
    Strategy,
    TextEncoder,
    Tracker,
    check_contract,
)
from osctl.recipe.validate import CheckedRecipe
from osctl.registry import Registry

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def build_model(checked: CheckedRecipe, registry: Registry, *, device: torch.device | str = "cpu",
                dtype: torch.dtype | None = None, meta: bool = False, empty: bool = False) -> DiffusionModel:
    """The diffusion transformer named by the recipe's ``model`` section.

    ``empty``: the architecture that would be loaded, its parameters on the meta device and its buffers made as
    usual, not placed; :mod:`osctl.train.lean_load` fills it from weight files. A factory that does not know the
    argument builds the model normally."""
    section = checked.loaded.recipe.model
    extra = {"empty": True} if empty else {}
    model = registry.build("model", section.name, checked.components["model"], device=device, dtype=dtype, meta=meta,
                           **extra)
    return check_contract(model, "model", section.name)


def build_autoencoder(checked: CheckedRecipe, registry: Registry, *, device: torch.device | str = "cpu",
                      dtype: torch.dtype | None = None, meta: bool = False) -> Autoencoder:
    """The frozen autoencoder named by the recipe's ``autoencoder`` section (eval, no grad).

    ``meta``: built on the meta device from its configuration alone, for a plan (see :func:`_meta`).
    """
    section = checked.loaded.recipe.autoencoder
    ae = registry.build("autoencoder", section.name, checked.components["autoencoder"], device=device, dtype=dtype,
                        **_meta(meta))
    check_contract(ae, "autoencoder", section.name)
    _freeze(ae)
    return ae


def build_text_encoder(checked: CheckedRecipe, registry: Registry, *, device: torch.device | str = "cpu",
                       dtype: torch.dtype | None = None, meta: bool = False) -> TextEncoder:
    """The frozen text encoder named by the recipe's ``text_encoder`` section (``meta``: for a plan)."""
    section = checked.loaded.recipe.text_encoder
    encoder = registry.build("text_encoder", section.name, checked.components["text_encoder"], device=device,
                             dtype=dtype, **_meta(meta))
    return check_contract(encoder, "text_encoder", section.name)


def _meta(meta: bool) -> dict[str, Any]:
    """The ``meta=True`` runtime argument, passed only when asked.

    A factory given ``meta=True`` builds its component on the meta device from the configuration alone:
    no weight file, no network, nothing written (plugins/README.md). Older factories without the
    argument keep working for real builds.
    """
    return {"meta": True} if meta else {}


def build_refiner(checked: CheckedRecipe, registry: Registry, *, device: torch.device | str = "cpu") -> Refiner:
    """The caption refiner named by the recipe's ``refiner`` section."""
    section = checked.loaded.recipe.refiner
    refiner = registry.build("refiner", section.name, checked.components["refiner"], device=device)
    return check_contract(refiner, "refiner", section.name)


def sampler_options(recipe: Any, recorded: dict[str, Any] | None = None) -> dict[str, Any]:
    """Sampler options: the training noise settings (recorded in a checkpoint, else the recipe's
    ``diffusion`` section) overridden by ``sample.sampler_options``."""
    diffusion = recorded or recipe.diffusion.model_dump()
    options = {key: diffusion[key] for key in ("prediction_type", "rescale_betas_zero_snr", "num_train_timesteps",
                                                "beta_schedule", "beta_start", "beta_end", "snr_shift_scale")
               if diffusion.get(key) is not None}
    if diffusion.get("objective") == "flow_matching":
        options["prediction_type"] = "flow"
    options.update(recipe.sample.sampler_options)
    return options


def build_sampler(recipe: Any, registry: Registry, name: str | None = None,
                  recorded: dict[str, Any] | None = None) -> Any:
    """The sampler (noise scheduler) named by ``sample.sample_method`` (or ``name``)."""
    return registry.build("sampler", name or recipe.sample.sample_method, sampler_options(recipe, recorded))


def strategy_name(recipe: Any, registry: Registry, world_size: int, *,
                  processes: str = "{n} processes were started") -> str:
    """The strategy plugin a run of ``world_size`` processes uses: ``auto`` means ``single`` for one process
    and ``ddp`` otherwise.

    A strategy registered as one-process (``metadata={"multi_process": False}``, as ``single`` is) is
    refused for several processes (``ConfigError``): each process would train its own unsynchronised
    copy and only rank 0's would be saved. ``processes`` words the count for the message (``{n}``).
    """
    name = recipe.parallel.strategy
    if name == "auto":
        return "ddp" if world_size > 1 else "single"
    if world_size > 1 and registry.get("strategy", name).spec.metadata.get("multi_process") is False:
        raise ConfigError(f"parallel.strategy is {name!r} but {processes.format(n=world_size)}; use 'auto' or 'ddp' "
                          "(or fsdp/deepspeed), or start one process.")
    return name


def build_strategy(recipe: Any, registry: Registry, *, world_size: int, device: torch.device) -> Strategy:
    """The parallel strategy named by the recipe for ``world_size`` processes (see :func:`strategy_name`)."""
    name = strategy_name(recipe, registry, world_size)
    strategy = registry.build("strategy", name, None, mixed_precision=recipe.train.mixed_precision, device=device,
                              parallel=recipe.parallel, train=recipe.train)
    return check_contract(strategy, "strategy", name)


def build_trackers(checked: CheckedRecipe, registry: Registry, *, output_dir: Path,
                   start_step: int = 0) -> list[tuple[str, Tracker]]:
    """(name, tracker) for each entry of ``train.trackers``, in recipe order (call on rank 0 only).

    A tracker that fails to build closes the ones already built, so no writer is left open.
    """
    built: list[tuple[str, Tracker]] = []
    try:
        for name, config in checked.trackers:
            tracker = registry.build("tracker", name, config, output_dir=output_dir, start_step=start_step)
            built.append((name, tracker))
            check_contract(tracker, "tracker", name)
    except BaseException:
        for _, tracker in built:
            with contextlib.suppress(Exception):
                tracker.close()
        raise
    return built


def _freeze(component: Any) -> None:
    module = component if isinstance(component, torch.nn.Module) else getattr(component, "module", None)
    if isinstance(module, torch.nn.Module):
        module.eval()
        module.requires_grad_(False)
