"""The training loop, read top to bottom: micro-steps -> clip/step/EMA -> log -> checkpoint -> stop.

Every step's record (``step``, ``total_steps``, ``loss``, ``lr``, ``grad_norm``, ``elapsed_s``, ``eta_s``)
goes to ``parts.on_step`` (the command line's progress bar); every ``log_interval``-th, with ``loss_avg``,
``samples_per_s`` and the loader's counters added, to ``parts.trackers`` (rank 0: ``logs/metrics.jsonl``
and the recipe's trackers, see ``osctl.train.tracking``) and to ``parts.log`` (the command line prints
it). After each checkpoint rank 0 redraws ``logs/curves.png`` from ``logs/metrics.jsonl``.

Everything engine-specific goes through the strategy (``osctl.protocols.Strategy``); everything
random comes from the run's own generators (``TrainState``), so a resumed run continues exactly.
"""

from __future__ import annotations

import contextlib
import logging
import math
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from osctl.cache.dataset import cached_inputs
from osctl.errors import writing
from osctl.parallel import dist as pdist
from osctl.parallel.groups import ParallelGroups
from osctl.parallel.layout import ParallelLayout
from osctl.parallel.progress import RankProgress
from osctl.protocols import Autoencoder, Strategy, TextEncoder
from osctl.train import checkpoint as ckpt
from osctl.train.compile import CompiledRun
from osctl.train.ema import EMA
from osctl.train.export import save_model
from osctl.train.flops import StepFlops
from osctl.train.sequence_parallel import SequenceShards
from osctl.train.state import TrainState
from osctl.train.tracking import Trackers, write_curves
from osctl.utils.attention import attention_backend

log = logging.getLogger(__name__)


class BatchSource(Protocol):
    """The data stream: an endless iterator of batches over epochs, with a resumable position."""

    def __iter__(self) -> Iterator[dict[str, Any]]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@dataclass
class TrainParts:
    """Everything the loop needs, built by ``osctl.train.run`` from a recipe."""

    recipe: Any
    dist: pdist.DistInfo
    strategy: Strategy
    objective: Any
    autoencoder: Autoencoder
    text_encoder: TextEncoder
    data: BatchSource
    state: TrainState
    output_dir: Path
    max_steps: int
    ema: EMA | None = None
    fingerprint: str = ""
    recipe_yaml: str = ""
    log: Callable[[dict[str, Any]], None] = lambda record: None
    on_step: Callable[[int, dict[str, Any]], None] | None = None
    validate: Callable[[int], dict[str, list[Path]] | None] | None = None  # -> {label: sample files} on rank 0
    save_fp_dtype: torch.dtype | None = None
    versions: dict[str, str] = field(default_factory=dict)
    groups: ParallelGroups | None = None  # sequence-/data-parallel groups (None: one process, no SP)
    plan: Any = None  # the run's plan (osctl.train.run.Plan), for callers that print it
    trackers: Trackers | None = None  # rank 0's metrics file and recipe trackers (None: nothing is tracked)
    layout: ParallelLayout | None = None  # world, sp_size, batches (None: the recipe's on this world size)
    adapter: Any = None  # a LoRA run's AdapterSpec (osctl.train.lora): checkpoints hold adapter/ instead of model/
    attention_backend: str = "auto"  # train.attention_backend (osctl.utils.attention)
    compiled: CompiledRun | None = None  # train.compile: warm-up shapes and the compilation count
    flops: StepFlops | None = None  # model FLOPs per micro-step: tflops and mfu in the logged records (GPU runs)


@dataclass
class TrainResult:
    """How the run ended."""

    final_step: int
    losses: list[float]
    checkpoints: list[Path]
    interrupted: bool = False


class StopRequest:
    """Turns SIGINT/SIGTERM into "finish this step, save, exit" instead of dying mid-write."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopRequest:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError):  # not the main thread (e.g. a test runner thread)
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:  # a second signal: give up at once
            signal.default_int_handler(signum, frame)
        self.requested = True

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def agreed(self, device: torch.device) -> bool:
        """True on every rank once any rank was asked to stop."""
        if not torch.distributed.is_initialized():
            return self.requested
        flag = torch.tensor([1.0 if self.requested else 0.0], device=device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return bool(flag.item())


def micro_step(parts: TrainParts, batch: dict[str, Any], *, sync: bool, scale: float) -> float:
    """Encode a batch, noise it, run the model and back-propagate; returns the loss this rank contributes
    to the mean over ranks (its own loss, or under sequence parallelism its weighted slice loss)."""
    device = parts.dist.device
    groups = parts.groups or ParallelGroups(parts.dist.world_size, parts.dist.rank)
    with torch.no_grad():
        if "latent_mean" in batch:  # read from `osctl data cache`: the same draw, no encoder
            latents, text = cached_inputs(batch, device, parts.state.noise_generator)
        else:
            pixels = batch["pixel_values"].to(device)
            latents = parts.autoencoder.encode(pixels, sample=True, generator=parts.state.noise_generator).float()
            text = parts.text_encoder.encode(batch["input_ids"].to(device), batch["attention_mask"].to(device))
    text_mask = batch["attention_mask"].to(device)
    latent_mask = batch.get("latent_mask")
    latent_mask = latent_mask.to(device) if latent_mask is not None else None
    # one draw per data-parallel replica: every rank of a sequence-parallel group gets the same values
    timesteps = parts.objective.sample_timesteps(
        latents.shape[0], parts.state.timestep_rng, groups.dp_rank, groups.dp_size, latent_shape=tuple(latents.shape[2:])
    ).to(device)
    noise = parts.objective.sample_noise(latents, parts.state.noise_generator)
    noised = parts.objective.add_noise(latents, noise, timesteps)
    return model_step(parts, noised, text, text_mask, latent_mask, sync=sync, scale=scale)


def model_step(parts: TrainParts, noised: Any, text: torch.Tensor, text_mask: torch.Tensor,
               latent_mask: torch.Tensor | None, *, sync: bool, scale: float) -> float:
    """The model's forward on noised latents, the loss and its backward (``B x L x D`` text states and their
    ``B x L`` mask); under sequence parallelism this rank runs its frames and text tokens."""
    device = parts.dist.device
    groups = parts.groups or ParallelGroups(parts.dist.world_size, parts.dist.rank)
    if parts.flops is not None:
        parts.flops.add(tuple(noised.noisy.shape), tuple(text.shape))
    text_states = text.unsqueeze(1)  # B x 1 x L x D, as the model expects
    text_mask = text_mask.unsqueeze(1)
    latents_shape = noised.noisy.shape
    model_mask = latent_mask if latent_mask is not None else torch.ones(
        (latents_shape[0], *latents_shape[2:]), device=device)
    # sequence parallelism: off for batches with too few frames
    shards = SequenceShards.for_batch(groups.sp_group, latents_shape[2], text_states.shape[2])
    if groups.sp_group is not None:
        parts.strategy.module.set_sequence_parallel(shards.group if shards else None)
    noisy = noised.noisy
    if shards is not None:
        noisy, text_states, model_mask, text_mask = shards.model_inputs(noisy, text_states, model_mask, text_mask)
    with parts.strategy.no_sync(sync), parts.strategy.autocast(), attention_backend(parts.attention_backend):
        prediction = parts.strategy.model(
            noisy, noised.timesteps, text_states, attention_mask=model_mask, encoder_attention_mask=text_mask,
            return_dict=False,
        )[0]
        if shards is None:
            loss = parts.objective.loss(prediction, noised, latent_mask)
        else:
            loss = shards.loss(parts.objective, prediction, noised, latent_mask)
        parts.strategy.backward(loss * scale)
    return float(loss.detach())


def warm_up_shape(parts: TrainParts, latent_shape: tuple[int, ...], text_shape: tuple[int, int],
                  text_dtype: torch.dtype) -> None:
    """One forward and backward of a batch of zero latents ``latent_shape`` (C x T x H x W) and zero text states
    ``text_shape`` (L x D) at a fixed timestep, through the path of a training step; the gradients are dropped
    and no random state is used, so the run goes on exactly as without it (``train.compile``'s warm-up)."""
    device = parts.dist.device
    layout = parts.layout or ParallelLayout.from_recipe(parts.recipe, world_size=parts.dist.world_size)
    batch = layout.stream_batch
    latents = torch.zeros((batch, *latent_shape), device=device)
    timesteps = torch.full((batch,), parts.objective.num_train_timesteps // 2, dtype=torch.long, device=device)
    noised = parts.objective.add_noise(latents, torch.zeros_like(latents), timesteps)
    text = torch.zeros((batch, *text_shape), device=device, dtype=text_dtype)
    model_step(parts, noised, text, torch.ones((batch, text_shape[0]), device=device), None, sync=True, scale=0.0)
    parts.strategy.optimizer.zero_grad(set_to_none=True)


DATA_COUNTERS = ("reads", "bad_reads", "bad_samples", "replaced")


def data_counters(parts: TrainParts) -> dict[str, Any]:
    """The loader's bad-media counters for a logged record, so runs show data problems as they happen:
    ``data_reads``, ``data_bad_reads``, ``data_bad_samples`` (distinct samples each replica found bad) and
    ``data_replaced`` (bad samples replaced by another of their bucket), each summed over the data-parallel
    replicas, and ``data_epoch`` (the epoch of the next batch).

    Every rank calls it at the same steps (one small all-reduce); a source without ``stats()`` (a test
    stream) gives nothing. The ranks of a sequence-parallel group read the same batches, so the sum is
    divided by the group size.
    """
    stats = getattr(parts.data, "stats", None)
    if not callable(stats):
        return {}
    current = stats()
    values = [float(current.get(key, 0) or 0) for key in DATA_COUNTERS]
    if parts.dist.world_size > 1 and torch.distributed.is_initialized():
        tensor = torch.tensor(values, dtype=torch.float64, device=parts.dist.device)
        torch.distributed.all_reduce(tensor)
        sp_size = parts.groups.sp_size if parts.groups is not None else 1
        values = (tensor / sp_size).tolist()
    out: dict[str, Any] = {f"data_{key}": round(value) for key, value in zip(DATA_COUNTERS, values, strict=True)}
    if "epoch" in current:
        out["data_epoch"] = int(current["epoch"])
    return out


def compile_counters(parts: TrainParts) -> dict[str, Any]:
    """``compiles`` (dynamo compilations so far) for a logged record of a compiled run, with a warning the first
    time a shape compiles after the warm-up; nothing when ``train.compile`` is off."""
    if parts.compiled is None:
        return {}
    watch = parts.compiled.watch
    if watch.recompiles and parts.dist.rank == 0 and not getattr(watch, "warned", False):
        log.warning("train.compile: %d compilation(s) after the warm-up (a batch shape it did not run: a last short "
                    "batch, a new text length, validation); set train.compile.dynamic: true if it keeps happening",
                    watch.recompiles)
        watch.warned = True
    warmup = parts.compiled.warmup
    return {"compiles": watch.compiles, "recompiles": watch.recompiles,
            "compile_warmup_s": warmup.seconds if warmup is not None else None}


def eta_seconds(elapsed: float, steps_done: int, steps_left: int) -> float:
    """Seconds until the last step at this run's average pace so far (checkpoints and validation included,
    as they recur); 0 when nothing is left."""
    if steps_left <= 0:
        return 0.0
    return elapsed / max(steps_done, 1) * steps_left


def save_checkpoint(parts: TrainParts, epoch_info: dict[str, Any]) -> Path | None:
    """Write ``checkpoint-N`` atomically (every rank takes part; rank 0 commits).

    A write that fails (a full disk, a read-only folder) removes the unfinished ``.checkpoint-N.partial``
    folder, which frees the space it took, and is reported as one sentence naming the checkpoint
    (:func:`osctl.errors.writing`); the previous checkpoints are untouched.
    """
    step = parts.state.step
    final = parts.output_dir / ckpt.checkpoint_name(step)
    with writing(final, action="save checkpoint", cleanup=lambda: ckpt.discard_partial(parts.output_dir, step),
                 hint="the unfinished checkpoint folder was removed; the previous checkpoints are intact "
                      "(resume with --resume-from-checkpoint latest)."):
        return _save_checkpoint(parts, epoch_info, step)


def _save_checkpoint(parts: TrainParts, epoch_info: dict[str, Any], step: int) -> Path | None:
    """The body of :func:`save_checkpoint`."""
    if parts.dist.is_main:
        ckpt.prepare_partial(parts.output_dir, step)
    pdist.barrier()
    folder = ckpt.partial_dir(parts.output_dir, step)
    if parts.adapter is not None:  # a LoRA run: the adapter alone, in diffusers' LoRA format
        from osctl.train.lora import save_checkpoint_adapters

        save_checkpoint_adapters(folder, parts.strategy, parts.ema, parts.adapter, is_main=parts.dist.is_main, step=step)
    else:
        _save_model_folders(parts, folder)
    state_dir = folder / "training_state"
    state_dir.mkdir(parents=True, exist_ok=True)
    parts.strategy.save_state(state_dir)
    if parts.ema is not None and not getattr(parts.strategy, "saves_ema", False) and \
            (parts.dist.is_main or getattr(parts.strategy, "shards_parameters", False)):
        torch.save(parts.ema.state_dict(), state_dir / f"ema-rank-{parts.dist.rank}.pt")
    parts.state.save(folder / "rng")
    (folder / "data").mkdir(exist_ok=True)
    ckpt.write_json(folder / "data" / f"rank-{parts.dist.rank}.json", parts.data.state_dict())
    if parts.dist.is_main:
        (folder / "recipe.yaml").write_text(parts.recipe_yaml)
        ckpt.write_json(folder / ckpt.TRAINER_STATE, {
            "step": step, "world_size": parts.dist.world_size, "strategy": parts.strategy.name,
            "recipe_fingerprint": parts.fingerprint, "versions": parts.versions, **epoch_info,
        })
    pdist.barrier()
    final = None
    if parts.dist.is_main:
        final = ckpt.commit(parts.output_dir, step)
        ckpt.purge(parts.output_dir, parts.recipe.train.checkpoints_total_limit)
        write_curves(parts.output_dir)  # logs/curves.png as of this checkpoint (none without logs/metrics.jsonl)
    pdist.barrier()
    return final or parts.output_dir / ckpt.checkpoint_name(step)


def _save_model_folders(parts: TrainParts, folder: Path) -> None:
    """``model/`` (and ``model_ema/``): the full weights as the model's own folders, written by rank 0."""
    module = parts.strategy.module
    full = parts.strategy.full_state_dict()
    ema_full = None
    if parts.ema is not None:
        names = [name for name, _ in parts.strategy.local_parameters()]
        ema_full = parts.strategy.full_state_dict(list(zip(names, parts.ema.shadow, strict=True)))
    if parts.dist.is_main:
        save_model(folder / "model", module, full, dtype=parts.save_fp_dtype)
        if ema_full is not None and parts.ema is not None:
            save_model(folder / "model_ema", module, ema_full, dtype=parts.save_fp_dtype,
                       extra_files={"ema.json": {"decay": parts.ema.decay, "start_step": parts.ema.start_step,
                                                 "optimization_step": parts.ema.optimization_step}})


def train(parts: TrainParts) -> TrainResult:
    """Run optimizer steps until ``max_steps`` (or a stop signal), checkpointing on the way and at the end.

    With several processes, each rank records where it is before every collective
    (:class:`~osctl.parallel.progress.RankProgress`); when a collective fails because another rank hung
    or died, the error names that rank and the step (``PeerFailed``) instead of the backend's message.
    """
    progress = None
    if parts.dist.distributed:
        progress = RankProgress(parts.dist.rank, parts.dist.world_size, parts.recipe.parallel.timeout_s)
    try:
        return _train(parts, progress)
    except Exception as exc:
        explained = progress.explain(exc) if progress is not None else None
        if explained is None:
            raise
        raise explained from exc


def _train(parts: TrainParts, progress: RankProgress | None) -> TrainResult:
    def mark(step: int, point: str, micro: int = 0) -> None:
        if progress is not None:
            progress.mark(step, point, micro)

    train_cfg = parts.recipe.train
    accumulation = train_cfg.gradient_accumulation_steps
    losses: list[float] = []
    saved: list[Path] = []
    batches = iter(parts.data)
    interrupted = False
    window: list[float] = []
    step_times: list[float] = []
    trackers = parts.trackers or Trackers()
    layout = parts.layout or ParallelLayout.from_recipe(parts.recipe, world_size=parts.dist.world_size)
    samples_per_step = layout.global_batch
    if parts.compiled is not None:  # train.compile: every batch shape compiled before the first step
        parts.compiled.warm_up(lambda *shape: warm_up_shape(parts, *shape))
    if parts.flops is not None:
        parts.flops.take(0.0)  # the warm-up's steps are not training's
    started = time.perf_counter()
    first_step = parts.state.step
    with StopRequest() as stop:
        while parts.state.step < parts.max_steps:
            step_started = time.perf_counter()
            # 1. micro-steps: gradients accumulate locally and synchronise on the last one
            step_loss = 0.0
            for micro in range(accumulation):
                batch = next(batches)
                mark(parts.state.step + 1, "backward and optimizer step", micro)
                step_loss += micro_step(parts, batch, sync=micro == accumulation - 1, scale=1.0 / accumulation)
            step_loss /= accumulation
            # 2. clip, optimizer step, EMA
            grad_norm = parts.strategy.clip_grad_norm(train_cfg.max_grad_norm)
            parts.strategy.optimizer_step()
            parts.state.step += 1
            if parts.ema is not None:
                parts.ema.update(p for _, p in parts.strategy.local_parameters())
            step_times.append(time.perf_counter() - step_started)
            # 3. log: mean loss over ranks; rank 0 writes
            mark(parts.state.step, "loss average")
            mean_loss = pdist.all_reduce_mean(step_loss, parts.dist.device)
            if not math.isfinite(mean_loss):
                raise FloatingPointError(f"loss became {mean_loss} at step {parts.state.step}")
            losses.append(mean_loss)
            window.append(mean_loss)
            elapsed = time.perf_counter() - started
            record = {"step": parts.state.step, "total_steps": parts.max_steps, "loss": mean_loss,
                      "lr": parts.strategy.lr_scheduler.get_last_lr()[0], "grad_norm": grad_norm,
                      "elapsed_s": elapsed, "eta_s": eta_seconds(elapsed, parts.state.step - first_step,
                                                                 parts.max_steps - parts.state.step)}
            if parts.on_step is not None:
                parts.on_step(parts.state.step, record)
            if parts.state.step % train_cfg.log_interval == 0 or parts.state.step == parts.max_steps:
                record["loss_avg"] = sum(window) / len(window)
                record["samples_per_s"] = samples_per_step * len(step_times) / max(sum(step_times), 1e-9)
                mark(parts.state.step, "logging")
                record.update(data_counters(parts))
                record.update(compile_counters(parts))
                if parts.flops is not None:
                    record.update(parts.flops.take(sum(step_times)))
                window.clear()
                step_times.clear()
                trackers.log_metrics(parts.state.step, record)
                parts.log(record)
            # 4. checkpoint and validation on schedule
            if parts.state.step % train_cfg.checkpointing_steps == 0 and parts.state.step < parts.max_steps:
                mark(parts.state.step, "checkpoint")
                saved.append(save_checkpoint(parts, {"reason": "schedule"}))
            if parts.validate is not None and train_cfg.validation_steps and \
                    parts.state.step % train_cfg.validation_steps == 0:
                mark(parts.state.step, "validation")
                videos = parts.validate(parts.state.step)
                for label, paths in (videos or {}).items():
                    trackers.log_videos(parts.state.step, f"validation/{label}", paths)
            # 5. stop when asked (SIGINT/SIGTERM on any rank)
            mark(parts.state.step, "stop check")
            if stop.agreed(parts.dist.device):
                interrupted = True
                break
        # 6. always end with a checkpoint (unless this step's already exists: e.g. a finished run resumed)
        current = parts.output_dir / ckpt.checkpoint_name(parts.state.step)
        if (not saved or saved[-1].name != current.name) and not (first_step == parts.state.step and ckpt.is_complete(current)):
            mark(parts.state.step, "final checkpoint")
            saved.append(save_checkpoint(parts, {"reason": "interrupted" if interrupted else "end"}))
    return TrainResult(final_step=parts.state.step, losses=losses, checkpoints=saved, interrupted=interrupted)
