"""`osctl train` behind the command line: build everything from the recipe, resume, run the loop.

    osctl train --recipe recipes/480p.yaml                       # one process
    osctl train --recipe recipes/480p.yaml --nproc-per-node 8    # osctl starts torchrun itself
    torchrun --nproc-per-node 8 -m osctl train --recipe ...      # or under any launcher

Order: process group and sequence-/data-parallel groups -> data index and stream -> frozen
autoencoder and text encoder -> model (+ pretrained weights unless resuming) -> strategy
(optimizer, LR schedule) -> EMA -> resume -> plan (+ validation) -> loop. Resume wins over
``pretrained``. ``setup_training`` builds the parts; ``run_training`` also runs the loop.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from osctl import __version__
from osctl.build import (
    DTYPES,
    build_autoencoder,
    build_strategy,
    build_text_encoder,
    strategy_name,
)
from osctl.errors import ConfigError, OsctlError, StorageError, UsageError
from osctl.parallel import dist as pdist
from osctl.parallel.groups import ParallelGroups
from osctl.parallel.layout import ParallelLayout
from osctl.quiet import quiet_libraries
from osctl.recipe.load import recipe_hash
from osctl.recipe.validate import CheckedRecipe
from osctl.registry import Registry
from osctl.train import checkpoint as ckpt
from osctl.train.activations import block_modules
from osctl.train.checkpointing import apply_checkpointing, recipe_policy
from osctl.train.compile import CompiledRun, CompileWatch, check_compile, compile_blocks
from osctl.train.compile import plan_line as compile_plan_line
from osctl.train.ema import EMA
from osctl.train.lean_load import build_loaded_model, loads_sharded, normal_load_on_cpu
from osctl.train.loop import BatchSource, TrainParts, TrainResult, train
from osctl.train.objective import build_objective
from osctl.train.offload import offload_blocks, offload_count
from osctl.train.optim import build_lr_scheduler, build_optimizer
from osctl.train.plan import frozen_lines, plan_training, require_training_weights, stop_step, validation_line
from osctl.train.state import TrainState
from osctl.train.tracking import open_trackers
from osctl.utils.attention import describe as describe_attention
from osctl.utils.dir_lock import DirLock
from osctl.utils.output_dir import check_output_dir

# Recipe keys that change what is learned from which data: resuming with a different value needs
# --allow-recipe-change. Everything else (learning rate, logging, checkpoint cadence...) may change.
SHAPING_PREFIXES = ("pipeline_path", "model.", "autoencoder.", "text_encoder.", "diffusion.", "data.",
                    "train.train_batch_size",
                    "train.gradient_accumulation_steps", "parallel.sp_size", "parallel.train_sp_batch_size",
                    "train.seed", "train.lora", "train.base_dtype")
IGNORED_FOR_SHAPING = ("data.num_workers", "data.index_dir", "data.cache.mode", "data.cache.dir",
                       "data.cache.shard_samples")


@dataclass
class TrainOptions:
    """Command-line choices that are not recipe keys."""

    dry_run: bool = False
    allow_recipe_change: bool = False
    data_source: Any = None  # tests may inject a BatchSource; normally built from the sample index
    log: Any = None
    on_step: Any = None
    show_plan: Any = None  # called with the plan on rank 0 before the first step
    device_memory: int | None = None  # bytes a process may use on its device (--device-memory; default: the GPU's)
    memory_plan: Any = None  # osctl.train.memory.MemoryPlan checked before launch (offload "auto" reads it)


@dataclass
class Plan:
    """What a run will do, printed at start (and alone with --dry-run)."""

    lines: list[tuple[str, str]] = field(default_factory=list)
    memory: Any = None  # osctl.train.memory.MemoryPlan (dry run)

    def add(self, key: str, value: Any) -> None:
        self.lines.append((key, str(value)))

    def as_dict(self) -> dict[str, str]:
        return dict(self.lines)


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def recipe_changes(old: dict[str, Any], new: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(shaping, harmless) differences between two resolved recipes, as ``key: old -> new`` lines."""
    a, b = flatten(old), flatten(new)
    shaping, harmless = [], []
    for key in sorted(set(a) | set(b)):
        if a.get(key) == b.get(key):
            continue
        line = f"{key}: {a.get(key)!r} -> {b.get(key)!r}"
        is_shaping = key.startswith(SHAPING_PREFIXES) and not key.startswith(IGNORED_FOR_SHAPING)
        (shaping if is_shaping else harmless).append(line)
    return shaping, harmless


def parameter_counts(model: torch.nn.Module) -> tuple[int, int]:
    """(total, trainable) parameter counts (full sizes, also for parameters ZeRO-3 has partitioned)."""
    sizes = [(getattr(p, "ds_numel", None) or p.numel(), p.requires_grad) for p in model.parameters()]
    return sum(n for n, _ in sizes), sum(n for n, grad in sizes if grad)


def memory_estimate_gb(trainable: int, total: int, use_ema: bool, strategy: str, world: int) -> float:
    """Rough per-process bytes of weights + grads + AdamW moments (+ EMA), before activations."""
    per_param = 4 + 4 + 8 + (4 if use_ema else 0)
    sharded = strategy in ("fsdp", "deepspeed")
    state = trainable * per_param / (world if sharded else 1)
    frozen = (total - trainable) * 4
    return (state + frozen) / 1024**3


def run_training(checked: CheckedRecipe, registry: Registry, options: TrainOptions) -> TrainResult | Plan:
    """Train as the recipe says; returns the plan alone with ``dry_run``.

    The dry run plans from configurations alone (:func:`osctl.train.plan.plan_training`: components on
    the meta device, data bucketed in memory, nothing written, no weights needed). A real run first
    refuses to start without the weights the recipe names, before building anything.
    Rank 0 opens the trackers (``logs/metrics.jsonl`` and ``train.trackers``) before the first step and
    closes them however the loop ends: finished, failed, or stopped by a signal. Except in a dry run
    (which writes nothing), rank 0 first locks ``train.output_dir`` (:func:`lock_output_dir`).
    """
    if options.dry_run:
        return plan_training(checked, registry, options)
    require_training_weights(checked)
    check_memory(checked, registry, options)
    info = pdist.init_distributed(checked.loaded.recipe.parallel.timeout_s)
    lock = lock_output_dir(Path(checked.loaded.recipe.train.output_dir), info)
    finished = False
    try:
        result = _run(checked, registry, options)
        finished = True
        return result
    finally:
        if lock is not None:
            lock.release(discard_unused=not finished)  # a run refused before its first write leaves no folder


def check_memory(checked: CheckedRecipe, registry: Registry, options: TrainOptions) -> None:
    """With the device memory known (``--device-memory``, or the GPU's), refuse a run whose memory plan does not
    fit, naming the knobs that would make it fit; keep the plan for ``train.offload.blocks: auto``."""
    from osctl.train.memory import device_memory

    if device_memory(options.device_memory) is None:
        return
    plan = plan_training(checked, registry, options)
    memory = getattr(plan, "memory", None)
    if memory is not None and not memory.fits():
        raise ConfigError(memory.refusal(checked.loaded.recipe))
    options.memory_plan = memory


def lock_output_dir(output_dir: Path, info: pdist.DistInfo) -> DirLock | None:
    """Rank 0 takes ``output_dir``'s lock before anything is written there, so a second run on the same
    folder (a resume racing a live run) is refused; every rank hears the verdict and stops with it.
    Returns the lock on rank 0 (None elsewhere)."""
    lock, refusal = None, None
    if info.is_main:
        try:
            check_output_dir(output_dir, key="train.output_dir", create=False)  # a file, a read-only disk
            lock = DirLock(output_dir).acquire()
        except OsctlError as exc:
            refusal = (exc.message, exc.hint, exc.exit_code)
    refusal = pdist.broadcast_object(refusal)
    if refusal is not None:
        message, hint, code = refusal
        raise (UsageError if code == 2 else StorageError)(message, hint=hint)
    return lock


def _run(checked: CheckedRecipe, registry: Registry, options: TrainOptions) -> TrainResult:
    parts = setup_training(checked, registry, options)
    if parts.dist.is_main:
        parts.output_dir.mkdir(parents=True, exist_ok=True)
        (parts.output_dir / "plan.json").write_text(json.dumps(parts.plan.as_dict(), indent=2))
    parts.trackers = open_trackers(checked, registry, output_dir=parts.output_dir, start_step=parts.state.step,
                                   is_main=parts.dist.is_main)
    try:
        parts.trackers.log_config(checked.loaded.resolved())
        if parts.dist.is_main and options.show_plan is not None:
            options.show_plan(parts.plan)
        return train(parts)
    finally:
        parts.trackers.close()
        if parts.compiled is not None:
            parts.compiled.watch.stop()


def setup_training(checked: CheckedRecipe, registry: Registry, options: TrainOptions) -> TrainParts:
    """Build everything the loop needs (process groups, data, components, strategy, EMA, resumed state)
    and the plan; ``TrainParts.plan`` holds the plan."""
    quiet_libraries()
    recipe = checked.loaded.recipe
    train_cfg, parallel = recipe.train, recipe.parallel
    info = pdist.init_distributed(parallel.timeout_s)
    layout = ParallelLayout.from_recipe(recipe, world_size=info.world_size)
    chosen = strategy_name(recipe, registry, info.world_size)  # a one-process strategy in several processes: refused
    offloaded = offload_count(train_cfg.offload, strategy=chosen,  # train.offload: refused here for fsdp/deepspeed
                              auto_blocks=getattr(options.memory_plan, "offload_blocks", None))
    groups = ParallelGroups(layout.world_size, info.rank, layout.sp_size)
    output_dir = check_output_dir(train_cfg.output_dir, key="train.output_dir", create=False)  # before any work
    resolved = checked.loaded.resolved()
    fingerprint = recipe_hash(resolved)
    torch.manual_seed(train_cfg.seed)

    # 1. data stream (the sample index is built or checked here); every rank of a sequence-parallel
    #    group reads the same batches: data is sharded over data-parallel replicas
    source: BatchSource = options.data_source
    data_summary: dict[str, Any] = {}
    cache = None  # `osctl data cache`: latents and text states are read, the encoders are not built
    if source is None:
        from osctl.cache.training import training_source

        source, data_summary, cache = training_source(checked, registry, info, layout=layout, dp_rank=groups.dp_rank)
    steps_per_epoch = getattr(source, "steps_per_epoch", None)
    max_steps = stop_step(train_cfg, layout, steps_per_epoch)

    # 2. frozen components and the model
    precision = DTYPES[train_cfg.mixed_precision]
    validating = bool(train_cfg.validation_steps and train_cfg.validation_prompts)
    ae = build_autoencoder(checked, registry, device=info.device, dtype=torch.float32 if train_cfg.vae_fp32 else
                           precision) if cache is None or validating else None  # with a cache: to decode samples
    text_encoder = build_text_encoder(checked, registry, device=info.device, dtype=precision) if cache is None else \
        cache.prompt_encoder(checked, registry, device=info.device, dtype=precision, validating=validating)
    # 3. the model with its weights: a checkpoint to resume wins over `pretrained` (a LoRA run's base is
    #    `pretrained`, also on resume: its checkpoint holds the adapter alone); lean where it can (lean_load)
    resume_dir = ckpt.resolve_resume(train_cfg.resume_from_checkpoint, output_dir)
    loaded = build_loaded_model(checked, registry, weights=_weights_to_load(train_cfg, resume_dir),
                                device=load_device(recipe, chosen, info), dtype=torch.float32,
                                shards=loads_sharded(recipe, chosen),
                                base_dtype=train_cfg.base_dtype if train_cfg.lora is not None else "fp32",
                                normal_device="cpu" if normal_load_on_cpu(recipe) else None,
                                host_blocks=offloaded)
    model = loaded.model
    if layout.sequence_parallel:
        _check_sequence_parallel_model(model, layout)
    apply_checkpointing(model, recipe_policy(checked))
    model.train()
    notes: list[str] = []
    if loaded.fill is not None:
        notes.append("model built and sharded on the meta device; each process loads only its own shards on "
                     f"{info.device}, chunk by chunk (no random init, no whole copy of its weights anywhere)")
    elif loaded.lean:
        notes.append(f"model built on the meta device and loaded on {_device_of(model)} chunk by chunk "
                     "(no random init, no second copy of its weights in host memory)")
    report = loaded.report
    adapter = None
    if train_cfg.lora is not None:  # base from pretrained (also on resume), frozen; adapter added and restored
        from osctl.train.lora import prepare_lora_model

        adapter = prepare_lora_model(model, recipe, registry, resume_dir, notes, base_report=report)
        if resume_dir is not None:
            _check_recipe_change(resume_dir, resolved, options.allow_recipe_change, notes)
    elif resume_dir is not None:
        assert report is not None
        if report.missing or report.unexpected or report.mismatched:
            raise ConfigError(f"{resume_dir}/model does not match this model ({report.summary()}); "
                              "resume with the recipe it was trained with.")
        _check_recipe_change(resume_dir, resolved, options.allow_recipe_change, notes)
        if train_cfg.pretrained:
            notes.append(f"resuming from {resume_dir}: train.pretrained ({train_cfg.pretrained}) is ignored")
    elif train_cfg.pretrained:
        assert report is not None
        notes.append(report.summary())
        notes.extend(report.details()[:20])
    elif train_cfg.resume_from_checkpoint == "latest":
        notes.append(f"no checkpoint in {output_dir} yet: starting from step 0")

    # 4. strategy wraps model, optimizer and LR schedule; EMA follows the parameters it holds
    strategy = build_strategy(recipe, registry, world_size=info.world_size, device=info.device)
    if adapter is not None:  # train.base_dtype: the frozen base stored in bf16/fp8 (before the strategy moves it)
        from osctl.train.frozen_base import store_frozen_base

        notes.extend(store_frozen_base(model, train_cfg.base_dtype, strategy=strategy.name))
    compiled = _compile(checked, model, strategy.name, source, cache, text_encoder, precision)
    if train_cfg.offload is not None:  # frozen blocks stay on the CPU and stream in: the strategy moves the rest
        notes.append(offload_blocks(model, offloaded, device=info.device, auto=train_cfg.offload.blocks == "auto"))
    factories = {"optimizer_factory": lambda params: build_optimizer(params, train_cfg),
                 "lr_scheduler_factory": lambda opt: build_lr_scheduler(opt, train_cfg, max_steps)}
    if loaded.fill is not None:  # the strategy shards the empty model, then fills each rank's shards
        strategy.prepare_empty(model, loaded.fill, **factories)
    else:
        strategy.prepare(model, **factories)
    ema = None
    if train_cfg.use_ema:
        ema = EMA((p for _, p in strategy.local_parameters()), decay=train_cfg.ema_decay,
                  start_step=train_cfg.ema_start_step, offload=train_cfg.offload_ema)
        if getattr(strategy, "saves_ema", False):
            strategy.attach_ema(ema)
    state = TrainState(seed=train_cfg.seed, rank=info.rank, stream=groups.dp_rank)

    # 5. resume the full training state
    if resume_dir is not None:
        _restore(resume_dir, strategy, ema, state, source, info)

    plan = _plan(checked, strategy, layout, state, max_steps, steps_per_epoch, data_summary, output_dir, notes)
    validate = None
    if validating:
        from osctl.train.validate import Validator

        validate = Validator(checked, registry, strategy=strategy, ema=ema, autoencoder=ae,
                             text_encoder=text_encoder, info=info, output_dir=output_dir)
    line = validation_line(train_cfg, output_dir)
    if line is not None:
        plan.add(*line)
    for key, value in cache.plan_lines(recipe, ae, text_encoder) if cache else \
            frozen_lines(recipe, text_encoder, ae)[0]:
        plan.add(key, value)
    objective = build_objective(recipe.diffusion, checked.geometry)
    window = getattr(model, "training_timestep_window", lambda: None)()
    if window is not None:  # a two-expert model training one expert: its timesteps only
        if not hasattr(objective, "restrict_timesteps"):
            raise ConfigError(f"model.experts trains one expert, which needs a flow_matching objective "
                              f"(diffusion.objective is {recipe.diffusion.objective!r}).")
        objective.restrict_timesteps(*window)
    return TrainParts(
        recipe=recipe, dist=info, strategy=strategy, objective=objective, autoencoder=ae,
        text_encoder=text_encoder, data=source, state=state, output_dir=output_dir, max_steps=max_steps, ema=ema,
        fingerprint=fingerprint, recipe_yaml=yaml.safe_dump(resolved, sort_keys=False),
        log=options.log or (lambda record: None), on_step=options.on_step, validate=validate,
        versions={"osctl": __version__, "torch": torch.__version__}, groups=groups, plan=plan, layout=layout,
        adapter=adapter, attention_backend=train_cfg.attention_backend, compiled=compiled,
        flops=_step_flops(checked, registry, layout, info.device),
    )


def _step_flops(checked: CheckedRecipe, registry: Registry, layout: ParallelLayout, device: torch.device) -> Any:
    """On a GPU, the counter of model FLOPs that puts ``tflops`` and ``mfu`` in the logs (a meta-device copy of the
    model as it trains; the device's dense bf16 peak from :data:`osctl.train.flops.DENSE_BF16_TFLOPS`); None on
    other devices, where a utilisation figure means little."""
    if device.type != "cuda":
        return None
    from osctl.train.flops import StepFlops, device_peak_tflops
    from osctl.train.memory import planned_model

    return StepFlops(planned_model(checked, registry), sp_size=layout.sp_size,
                     peak_tflops=device_peak_tflops(torch.cuda.get_device_name(device)))


def _weights_to_load(train_cfg: Any, resume_dir: Path | None) -> Path | None:
    """The weights the model is built with: a LoRA run's base (``pretrained``, also on resume), else the checkpoint
    to resume, else ``pretrained``; None: ``model.path``'s or a fresh preset's."""
    if train_cfg.lora is None and resume_dir is not None:
        return resume_dir / "model"
    return Path(train_cfg.pretrained) if train_cfg.pretrained else None


def load_device(recipe: Any, strategy: str, info: pdist.DistInfo) -> torch.device:
    """Where the model is built and its weights loaded: the process's device where ``strategy`` would move the
    whole model there anyway, else the CPU (:func:`osctl.train.lean_load.loads_on_device`)."""
    from osctl.train.lean_load import loads_on_device

    return torch.device(info.device) if loads_on_device(recipe, strategy) else torch.device("cpu")


def _device_of(model: torch.nn.Module) -> str:
    return str(next(iter(model.parameters())).device)


def _compile(checked: CheckedRecipe, model: torch.nn.Module, strategy: str, source: Any, cache: Any,
             text_encoder: Any, text_dtype: torch.dtype) -> CompiledRun | None:
    """``train.compile``: every transformer block compiled in place (before the strategy wraps the model), and
    what the warm-up runs: the latent shape of each batch shape the data source makes, and the text states'
    ``L x D`` (the cache's, else the text encoder's)."""
    settings = checked.loaded.recipe.train.compile
    if settings is None:
        return None
    check_compile(settings, strategy=strategy, offload=checked.loaded.recipe.train.offload)
    geometry = checked.geometry
    shapes = [(geometry.latent_channels, *geometry.latent_shape(*shape)) for shape in getattr(source, "shapes", [])]
    text_shape = tuple(cache.reader.text_shape) if cache is not None else \
        (int(text_encoder.max_length), int(text_encoder.hidden_size))
    compile_blocks(model, settings, shapes=len(shapes))
    return CompiledRun(settings, CompileWatch().start(), shapes, text_shape, text_dtype)


def _plan(checked: CheckedRecipe, strategy: Any, layout: ParallelLayout, state: TrainState, max_steps: int,
          steps_per_epoch: int | None, data_summary: dict[str, Any], output_dir: Path, notes: list[str]) -> Plan:
    """What the run will do, line by line (printed at start and alone with --dry-run)."""
    recipe = checked.loaded.recipe
    train_cfg = recipe.train
    total, trainable = parameter_counts(strategy.module)
    plan = Plan()
    plan.add("model", f"{recipe.model.name}: {total / 1e6:.2f} M parameters ({trainable / 1e6:.2f} M trainable)")
    diffusion = recipe.diffusion
    if diffusion.objective == "flow_matching":
        shifted = "" if not diffusion.token_shift else " (mean by tokens {:g}..{:g} -> {:g}..{:g})".format(
            *diffusion.token_shift)
        plan.add("objective", f"flow_matching, shift {diffusion.flow_shift:g}, {diffusion.weighting_scheme} timesteps"
                 f"{shifted}")
    else:
        plan.add("objective", f"{diffusion.objective} / {diffusion.prediction_type}"
                 f"{' zero-SNR' if diffusion.rescale_betas_zero_snr else ''}"
                 f"{f' SNR shift {diffusion.snr_shift_scale:g}' if diffusion.snr_shift_scale else ''}"
                 f"{f' min-SNR {diffusion.snr_gamma:g}' if diffusion.snr_gamma else ''}")
    plan.add("precision", f"{train_cfg.mixed_precision} (autoencoder {'fp32' if train_cfg.vae_fp32 else train_cfg.mixed_precision})")
    plan.add("latent geometry", checked.geometry.describe())
    plan.add("activation checkpointing", recipe_policy(checked))
    plan.add("attention", describe_attention(train_cfg.attention_backend))
    if train_cfg.compile is not None:
        plan.add("compile", compile_plan_line(train_cfg.compile, len(block_modules(strategy.module))))
    plan.add("strategy", f"{strategy.name}, world {layout.world_size}, sp_size {layout.sp_size}")
    plan.add("batch", layout.describe())
    for key, value in data_summary.items():
        plan.add(f"data {key}", value)
    if steps_per_epoch:  # optimizer steps: the loader's batches per epoch over the accumulation
        plan.add("steps per epoch", layout.optimizer_steps(steps_per_epoch))
    plan.add("steps", f"{state.step} -> {max_steps}")
    plan.add("memory estimate", f"{memory_estimate_gb(trainable, total, train_cfg.use_ema, strategy.name, layout.world_size):.2f} "
             "GB per process for weights, grads, optimizer and EMA (activations extra)")
    plan.add("output", str(output_dir))
    trackers = "".join(f", {t.name}" for t in train_cfg.trackers)
    plan.add("logs", f"{output_dir / 'logs' / 'metrics.jsonl'}{trackers} every {train_cfg.log_interval} steps")
    for note in notes:
        plan.add("note", note)
    return plan


def _check_sequence_parallel_model(model: Any, layout: ParallelLayout) -> None:
    """Sequence parallelism needs the model's hook and a head count that splits over the group."""
    if not callable(getattr(model, "set_sequence_parallel", None)):
        raise ConfigError(f"parallel.sp_size {layout.sp_size} needs a model with sequence-parallel support "
                          f"(set_sequence_parallel); {type(model).__name__} has none — set parallel.sp_size to 1.")
    heads = getattr(getattr(model, "config", None), "num_attention_heads", None)
    layout.check_heads(int(heads) if heads is not None else None)


def _check_recipe_change(resume_dir: Path, resolved: dict[str, Any], allow: bool, notes: list[str]) -> None:
    saved_path = resume_dir / "recipe.yaml"
    if not saved_path.is_file():
        return
    saved = yaml.safe_load(saved_path.read_text()) or {}
    shaping, harmless = recipe_changes(saved, resolved)
    for line in harmless:
        notes.append(f"recipe changed since the checkpoint: {line}")
    if shaping and not allow:
        raise UsageError(
            f"the recipe changed since {resume_dir.name} in ways that change the data or the model "
            f"({'; '.join(shaping[:5])}{' ...' if len(shaping) > 5 else ''}); pass --allow-recipe-change to resume anyway."
        )
    for line in shaping:
        notes.append(f"recipe changed (allowed): {line}")


def _restore(folder: Path, strategy: Any, ema: EMA | None, state: TrainState, source: BatchSource,
             info: pdist.DistInfo) -> None:
    """Load the training state of ``folder``: every file checked against the manifest, read without running code."""
    ckpt.check_files(folder)
    trainer = ckpt.read_trainer_state(folder)
    if trainer.get("world_size") != info.world_size and not getattr(strategy, "supports_resharding", False):
        raise UsageError(
            f"{folder.name} was saved by {trainer.get('world_size')} processes and this run has {info.world_size}; "
            f"the {strategy.name} strategy cannot re-shard its state — resume with the same world size."
        )
    strategy.load_state(folder / "training_state")
    if ema is not None and not getattr(strategy, "saves_ema", False):
        ema_file = folder / "training_state" / f"ema-rank-{info.rank}.pt"
        if not ema_file.exists():
            ema_file = folder / "training_state" / "ema-rank-0.pt"
        if ema_file.exists():
            ckpt.restore_file(ema_file, ema.load_state_dict)
    state.step = trainer["step"]
    state.load(folder / "rng")
    data_file = folder / "data" / f"rank-{info.rank}.json"
    if data_file.exists():
        ckpt.restore_file(data_file, source.load_state_dict)
