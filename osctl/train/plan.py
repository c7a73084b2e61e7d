"""A training plan from configurations alone (``osctl train --dry-run``), and the weights a run needs.

The dry run builds every component on the meta device from its configuration — the model from its
preset or folder ``config.json``, the text encoder and autoencoder from their local or shipped released
configurations — so parameters and memory are counted without a byte of weights, and plans the data
in memory (:mod:`osctl.data.dry_run`). It writes nothing and opens no network connection; the plan
lists the weights that are missing and where they are expected.

Training itself refuses to start without those weights (:func:`require_training_weights`), with one
sentence, before the data index or any component is built.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from osctl.availability import MissingWeights, component_missing_weights, require_weights
from osctl.errors import ConfigError, OsctlError
from osctl.train import checkpoint as ckpt

if TYPE_CHECKING:  # torch is imported by plan_training only: the weights check runs before any launch
    import torch

    from osctl.parallel.layout import ParallelLayout
    from osctl.recipe.validate import CheckedRecipe
    from osctl.registry import Registry

#: recipe sections whose components a training run builds (the refiner is used by sampling only)
TRAINING_SECTIONS = ("model", "autoencoder", "text_encoder")


def training_missing_weights(checked: CheckedRecipe) -> list[MissingWeights]:
    """Weights training needs that are not on this machine: the components' and ``train.pretrained``
    (unless a checkpoint to resume from exists, which wins over it). File-system checks only."""
    missing = component_missing_weights(checked.components, TRAINING_SECTIONS)
    train_cfg = checked.loaded.recipe.train
    if train_cfg.pretrained and not Path(train_cfg.pretrained).expanduser().exists():
        try:
            resuming = ckpt.resolve_resume(train_cfg.resume_from_checkpoint, Path(train_cfg.output_dir)) is not None
        except OsctlError:
            resuming = False  # reported by the run itself
        if not resuming:
            missing.append(MissingWeights(
                "train.pretrained", f"{train_cfg.pretrained!r} does not exist", str(train_cfg.pretrained),
                "put the weights there (a diffusers folder or a .safetensors file) or drop train.pretrained"))
    return missing


def require_training_weights(checked: CheckedRecipe) -> None:
    """Refuse (``ConfigError``, exit 2) to train without the weights the recipe names, before building anything."""
    require_weights(training_missing_weights(checked), what="training")


def stop_step(train_cfg: Any, layout: ParallelLayout, steps_per_epoch: int | None) -> int:
    """The optimizer step the run ends at: ``train.max_steps``, else ``num_epochs`` whole passes over the data
    (``steps_per_epoch`` counts the loader's micro-batches; the layout turns them into optimizer steps)."""
    if train_cfg.max_steps is not None:
        return int(train_cfg.max_steps)
    if train_cfg.num_epochs is not None and steps_per_epoch:
        return layout.optimizer_steps(train_cfg.num_epochs * steps_per_epoch)
    raise ConfigError("train.max_steps or train.num_epochs must be set to know when to stop.")


def validation_line(train_cfg: Any, output_dir: Path) -> tuple[str, str] | None:
    """The plan's validation line: what is sampled when, or why nothing is."""
    if train_cfg.validation_steps and train_cfg.validation_prompts:
        return ("validation", f"{len(train_cfg.validation_prompts)} prompts every {train_cfg.validation_steps} "
                f"steps -> {output_dir / 'validation'}")
    if train_cfg.validation_steps:
        return ("note", "train.validation_steps is set but train.validation_prompts is empty: no validation")
    return None


def frozen_lines(recipe: Any, text_encoder: Any, autoencoder: Any) -> tuple[list[tuple[str, str]], float]:
    """Plan lines of the frozen components (parameters, dtype, memory) and their GB per process together.

    A component that could not be built for the plan is given as the reason instead (counted as 0).
    """
    lines, total_gb = [], 0.0
    for label, section, component in (("text encoder", recipe.text_encoder, text_encoder),
                                      ("autoencoder", recipe.autoencoder, autoencoder)):
        if isinstance(component, str):
            lines.append((label, f"{section.name}: parameters unknown ({component})"))
            continue
        count, size, dtype = _weights_size(component)
        total_gb += size / 1024**3
        amount = f"{count / 1e9:.2f} B" if count >= 1e8 else f"{count / 1e6:.2f} M"
        lines.append((label, f"{section.name}: {amount} parameters, frozen, {dtype}: {size / 1024**3:.2f} GB "
                             "per process"))
    return lines, total_gb


def _weights_size(component: Any) -> tuple[int, int, str]:
    """(parameters, bytes, dtype name) of a component's parameters (a module or anything with ``parameters()``)."""
    parameters = list(component.parameters()) if callable(getattr(component, "parameters", None)) else []
    count = sum(p.numel() for p in parameters)
    size = sum(p.numel() * p.element_size() for p in parameters)
    dtypes = sorted({str(p.dtype).removeprefix("torch.") for p in parameters}) or ["no weights"]
    return count, size, "/".join(dtypes)


def memory_plan(checked: CheckedRecipe, model: Any, options: Any, layout: Any, strategy: str, world: int,
                frozen: list[Any], frozen_gb: float, *, index: Any = None) -> Any:
    """The per-bucket memory plan (:mod:`osctl.train.memory`) of ``model`` (the planned model on the meta device,
    as :func:`osctl.train.memory.planned_model` builds it): the index's buckets, else the recipe's largest shape."""
    from osctl.train.memory import device_memory, plan_memory

    recipe = checked.loaded.recipe
    data = recipe.data
    buckets = [(int(b["t"]), int(b["h"]), int(b["w"])) for b in (index.buckets if index is not None else [])]
    if not buckets:
        side = int(data.max_hxw ** 0.5) if data.max_hxw and not data.max_height else None
        buckets = [(data.num_frames, data.max_height or side or 1, data.max_width or side or 1)]
    text_encoder = frozen[0]
    text_tokens = int(getattr(text_encoder, "max_length", None) or 512) if not isinstance(text_encoder, str) else 512
    return plan_memory(checked, model, buckets=buckets, batch=layout.stream_batch, strategy=strategy,
                       world_size=world, sp_size=layout.sp_size, text_tokens=text_tokens,
                       frozen_components=int(frozen_gb * 1024**3), device_bytes=device_memory(
                           getattr(options, "device_memory", None)))


@dataclass
class _PlannedStrategy:
    """What the plan reads from a strategy, for a model that is not wrapped (it lives on the meta device)."""

    name: str
    module: torch.nn.Module


def plan_training(checked: CheckedRecipe, registry: Registry, options: Any) -> Any:
    """The plan of ``osctl train`` (a :class:`osctl.train.run.Plan`) from configurations alone; writes nothing."""
    import torch

    from osctl.build import DTYPES, build_autoencoder, build_text_encoder, strategy_name
    from osctl.data.dry_run import plan_index
    from osctl.data.stream.loader import plan_stream
    from osctl.parallel import dist as pdist
    from osctl.parallel.groups import ParallelGroups
    from osctl.parallel.layout import ParallelLayout
    from osctl.quiet import quiet_libraries
    from osctl.train.compile import check_compile
    from osctl.train.run import (
        _check_recipe_change,
        _check_sequence_parallel_model,
        _plan,
        memory_estimate_gb,
        parameter_counts,
    )
    from osctl.train.state import TrainState

    quiet_libraries()
    recipe = checked.loaded.recipe
    train_cfg, parallel = recipe.train, recipe.parallel
    info = pdist.init_distributed(parallel.timeout_s)
    layout = ParallelLayout.from_recipe(recipe, world_size=info.world_size)
    groups = ParallelGroups(layout.world_size, info.rank, layout.sp_size)
    output_dir = Path(train_cfg.output_dir)

    # 1. data: the batches of this replica, over the fresh index or one bucketed in memory
    data_summary: dict[str, Any] = {}
    index = None
    if options.data_source is not None:
        steps_per_epoch = getattr(options.data_source, "steps_per_epoch", None)
    else:
        index, settings, note = plan_index(recipe, layout, checked.geometry)
        stream = plan_stream(recipe, index, settings, note, layout=layout, dp_rank=groups.dp_rank)
        steps_per_epoch, data_summary = stream.sampler.steps_per_epoch, stream.summary
    try:
        max_steps: Any = stop_step(train_cfg, layout, steps_per_epoch)
    except ConfigError as exc:  # the plan says so (the run itself stops with this error)
        max_steps = f"? ({exc.message.rstrip('.')})"

    # 2. components on the meta device: shapes and parameter counts, no weights, no memory
    precision = DTYPES[train_cfg.mixed_precision]
    from osctl.train.memory import planned_model

    model = planned_model(checked, registry)  # as it will train: a LoRA run's adapter counted as the trainable part
    if layout.sequence_parallel:
        _check_sequence_parallel_model(model, layout)
    frozen: list[Any] = []
    for build, dtype in ((build_text_encoder, precision),
                         (build_autoencoder, torch.float32 if train_cfg.vae_fp32 else precision)):
        try:
            frozen.append(build(checked, registry, device="meta", dtype=dtype, meta=True))
        except OsctlError as exc:
            frozen.append(exc.message.rstrip("."))

    # 3. where the run starts: the checkpoint it would resume (read only), else step 0
    state = TrainState(seed=train_cfg.seed, rank=info.rank, stream=groups.dp_rank)
    notes: list[str] = []
    resume_dir = ckpt.resolve_resume(train_cfg.resume_from_checkpoint, output_dir)
    if resume_dir is not None:
        state.step = int(ckpt.read_json(resume_dir / ckpt.TRAINER_STATE).get("step", 0))
        _check_recipe_change(resume_dir, checked.loaded.resolved(), options.allow_recipe_change, notes)
        notes.append(f"resumes from {resume_dir}" + (f": train.pretrained ({train_cfg.pretrained}) is ignored"
                                                     if train_cfg.pretrained else ""))
    elif train_cfg.pretrained:
        notes.append(f"starts from the weights in {train_cfg.pretrained}")
    elif train_cfg.resume_from_checkpoint == "latest":
        notes.append(f"no checkpoint in {output_dir} yet: starting from step 0")

    name = strategy_name(recipe, registry, info.world_size)
    check_compile(train_cfg.compile, strategy=name, offload=train_cfg.offload)
    plan = _plan(checked, _PlannedStrategy(name, model), layout, state, max_steps, steps_per_epoch, data_summary,
                 output_dir, notes)
    line = validation_line(train_cfg, output_dir)
    if line is not None:
        plan.add(*line)
    if options.data_source is None:
        from osctl.cache.training import dry_run_line

        plan.add(*dry_run_line(recipe))

    # 4. memory with the frozen components, and the weights still to fetch
    lines, frozen_gb = frozen_lines(recipe, *frozen)
    for key, value in lines:
        plan.add(key, value)
    total, trainable = parameter_counts(model)
    model_gb = memory_estimate_gb(trainable, total, train_cfg.use_ema, name, info.world_size)
    plan.add("memory with frozen components", f"{model_gb + frozen_gb:.2f} GB per process (activations extra)")
    try:
        memory = memory_plan(checked, model, options, layout, name, info.world_size, frozen, frozen_gb,
                             index=index if options.data_source is None else None)
    except OsctlError as exc:
        plan.add("memory peak", f"not estimated ({exc.message.rstrip('.')})")
    except Exception as exc:  # a model whose forward cannot run on the meta device: the plan goes on without it
        plan.add("memory peak", f"not estimated (the model's forward did not run on the meta device: "
                                f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})")
    else:
        for key, value in memory.lines(recipe):
            plan.add(key, value)
        plan.memory = memory
    missing = training_missing_weights(checked)
    for item in missing:
        plan.add(f"missing weights {item.key}", f"{item.detail}; {item.fetch}")
    plan.add("weights", f"{len(missing)} missing: training refuses to start until they are there" if missing
             else "all on this machine")
    return plan
