"""The training data stream: sample index -> sampler -> DataLoader -> resumable batch source.

``osctl.train.run`` calls :func:`build_batch_source` once per rank::

    source, summary = build_batch_source(checked, registry, info, layout=..., dp_rank=...)
    for batch in source: ...          # endless, epoch after epoch
    source.state_dict()               # saved in every checkpoint (JSON); load_state_dict() on resume

What it does, in order:

1. **Index.** The index lives in ``data.index_dir`` or ``<train.output_dir>/index``. Rank 0 checks it
   against ``data.data`` and the recipe (:func:`osctl.data.index.open_index`); a missing index is built
   with the same functions ``osctl data bucket`` uses, a stale one in the default folder is rebuilt
   (and said so in the plan), a stale one in an explicit ``data.index_dir`` is refused with the
   command that rebuilds it. The other ranks wait for rank 0's verdict, then map the same file.
2. **Sampler.** :class:`~osctl.data.stream.sampler.BucketBatchSampler` over the index's bucket column for
   this data-parallel replica, with the layout's batch per replica (``train.train_batch_size``, or
   ``parallel.train_sp_batch_size`` under sequence parallelism) and its ``dp_size`` replicas
   (:class:`~osctl.parallel.layout.ParallelLayout`). Without ``data.group_data`` mixed
   shapes are padded with a latent mask in force resolution mode; area/absolute modes with more
   than one shape are refused (padding to max_height x max_width is wrong there).
3. **Loader.** A ``torch.utils.data.DataLoader`` over :class:`~osctl.data.stream.dataset.SampleDataset`
   (``data.num_workers`` persistent workers, pinned memory on CUDA) fed with the sampler's tickets.
4. **Source.** :class:`IndexBatchSource` yields the batches, counts bad media
   (:meth:`IndexBatchSource.stats`), stops with a ``DataError`` above ``max_bad_fraction``, and keeps
   ``(epoch, step)`` of the last batch it handed out, which is the whole resume state.

Optional recipe keys read with defaults until the schema has them: ``data.leftover`` ("drop"),
``data.max_bad_fraction`` (0.01), ``data.max_retries`` (8), ``data.decode_timeout_s`` (60),
``data.sampler_order`` ("osctl").
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from osctl.data.bucket import BucketSettings
from osctl.data.build import IndexTarget, build_index, check_index
from osctl.data.stream.captions import CaptionPolicy, Tokenize
from osctl.data.stream.dataset import (
    DEFAULT_DECODE_TIMEOUT_S,
    DEFAULT_MAX_BAD_FRACTION,
    DEFAULT_MAX_RETRIES,
    BadSampleStats,
    Collate,
    PadSpec,
    ReadSettings,
    SampleDataset,
)
from osctl.data.stream.sampler import BucketBatchSampler, ResumableBatches
from osctl.errors import ConfigError, DataError
from osctl.geometry import LatentGeometry
from osctl.parallel.layout import ParallelLayout

log = logging.getLogger("osctl.data")

STATE_FORMAT = "osctl.data.source/1"
_EXACT_KEYS = ("seed", "global_batch", "num_samples", "group_data", "leftover", "order", "dp_rank")


class IndexBatchSource:
    """An endless, resumable stream of collated batches for one rank (``osctl.train.loop.BatchSource``).

    ``epoch``/``position`` are the schedule coordinates of the next batch to hand out;
    ``steps_per_epoch`` the batches of one pass. Batches hold ``pixel_values`` (B x 3 x T x H x W in
    [-1, 1]), ``input_ids``/``attention_mask`` (B x L), ``latent_mask`` when shapes are padded,
    ``texts`` and ``samples`` (the ids loaded).
    """

    def __init__(self, dataset: SampleDataset, sampler: BucketBatchSampler, collate: Collate, *, num_workers: int = 0,
                 pin_memory: bool = False, max_bad_fraction: float = DEFAULT_MAX_BAD_FRACTION,
                 timeout_s: float = 0.0, prefetch_factor: int = 2,
                 shapes: list[tuple[int, int, int]] | None = None) -> None:
        self.dataset = dataset
        self.shapes = list(shapes or [])  # pixel T x H x W of the batches it makes (torch.compile's warm-up)
        self.sampler = sampler
        self.collate = collate
        self.num_workers = int(num_workers)
        self.epoch = 0
        self.position = 0
        self._batches = ResumableBatches(sampler)
        self._stats = BadSampleStats(len(dataset), max_bad_fraction)
        self.resume_note: str | None = None
        extra: dict[str, Any] = {}
        if self.num_workers > 0:
            extra = {"persistent_workers": True, "prefetch_factor": prefetch_factor, "timeout": float(timeout_s)}
        self.timeout_s = float(timeout_s) if self.num_workers > 0 else 0.0
        self.loader = DataLoader(dataset, batch_sampler=self._batches, num_workers=self.num_workers,
                                 collate_fn=collate, pin_memory=pin_memory, **extra)

    @property
    def steps_per_epoch(self) -> int:
        """Batches per epoch for this rank (the same on every rank)."""
        return self.sampler.steps_per_epoch

    @property
    def max_bad_fraction(self) -> float:
        """Share of bad samples above which iteration stops with a ``DataError``."""
        return self._stats.max_bad_fraction

    @max_bad_fraction.setter
    def max_bad_fraction(self, value: float) -> None:
        self._stats.max_bad_fraction = float(value)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        self._batches.start(self.epoch, self.position)
        iterator = iter(self.loader)
        try:
            while True:
                try:
                    batch = next(iterator)
                except RuntimeError as exc:
                    if "timed out" in str(exc):
                        raise DataError(
                            f"no batch arrived from the DataLoader workers within {self.timeout_s:g} s (epoch "
                            f"{self.epoch}, step {self.position}); a worker is stuck outside decoding (storage?).",
                            hint="check the data volume; the per-file decode budget is data.decode_timeout_s.") from None
                    raise
                self._stats.record(batch)
                self._stats.check(batch)
                epoch, step = int(batch.pop("epoch")), int(batch.pop("step"))
                batch.pop("events", None)
                batch.pop("replaced", None)
                self.epoch, self.position = epoch, step + 1
                if self.position >= self.steps_per_epoch:
                    self.epoch, self.position = epoch + 1, 0
                yield batch
        except BaseException:  # an error, or the consumer dropped the stream: stop the workers now
            self.close()
            raise

    def close(self) -> None:
        """Stop the DataLoader workers (a later iteration starts new ones)."""
        iterator = getattr(self.loader, "_iterator", None)
        if iterator is not None and hasattr(iterator, "_shutdown_workers"):
            iterator._shutdown_workers()
        self.loader._iterator = None

    def state_dict(self) -> dict[str, Any]:
        """JSON-ready position (epoch, next step), the schedule's identity and the bad-media counters."""
        s = self.sampler
        return {"format": STATE_FORMAT, "epoch": self.epoch, "position": self.position,
                "steps_per_epoch": s.steps_per_epoch, "seed": s.seed, "global_batch": s.global_batch,
                "batch_size": s.batch_size, "dp_size": s.dp_size, "dp_rank": s.dp_rank, "num_samples": s.num_samples,
                "group_data": s.group_data, "leftover": s.leftover, "order": s.order, "bad": self._stats.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue where ``state`` stopped: exactly, when the schedule is the same (same seed, global batch,
        index size, grouping, leftover rule and replica); otherwise at the same share of the same epoch, with
        a warning (:attr:`resume_note`), since the remaining batches cannot be the ones the old run would have seen."""
        epoch, position = int(state.get("epoch", 0)), int(state.get("position", 0))
        mine = self.state_dict()
        changed = [k for k in _EXACT_KEYS if k in state and state[k] != mine[k]]
        if changed:
            old_steps = max(1, int(state.get("steps_per_epoch", 1)))
            position = min(self.steps_per_epoch - 1, position * self.steps_per_epoch // old_steps) if self.steps_per_epoch else 0
            self.resume_note = (f"the data schedule changed since the checkpoint ({', '.join(f'{k} {state[k]} -> {mine[k]}' for k in changed)}); "
                                f"resuming at epoch {epoch} step {position}, not exactly where the old run would have continued")
            log.warning(self.resume_note)
        elif position > self.steps_per_epoch:
            raise DataError(f"the data state says step {position} of epoch {epoch} but an epoch has {self.steps_per_epoch} steps; "
                            "the checkpoint does not belong to this index.")
        self.epoch, self.position = epoch, position
        if position >= self.steps_per_epoch:
            self.epoch, self.position = epoch + 1, 0
        if isinstance(state.get("bad"), dict):
            self._stats.load_state_dict(state["bad"])

    def stats(self) -> dict[str, Any]:
        """Bad-media counts (reads, bad reads, distinct bad samples, by code, examples) and the position."""
        out = self._stats.as_dict()
        out.update({"epoch": self.epoch, "position": self.position, "steps_per_epoch": self.steps_per_epoch})
        if self.resume_note:
            out["resume_note"] = self.resume_note
        return out


# --------------------------------------------------------------------------------------------- building


def _option(section: Any, name: str, default: Any) -> Any:
    """A recipe key that the schema may not have yet (then ``default``)."""
    value = getattr(section, name, None)
    return default if value is None else value


def _ensure_index(recipe: Any, settings: BucketSettings) -> tuple[Path, str]:
    """Rank 0: make sure a fresh index exists (built as ``osctl data bucket`` builds it); returns its folder
    and a note for the plan."""
    check = check_index(recipe, settings)
    if check.rebuild is not None:
        assert check.data_txt is not None  # check_index refuses a rebuild without data.data
        build_index(check.data_txt, IndexTarget(settings, check.folder))
    return check.folder, check.note()


def _agree(info: Any, payload: Any) -> Any:
    """Rank 0's ``payload`` on every rank (a no-op in one process)."""
    from osctl.parallel.dist import broadcast_object

    return broadcast_object(payload)


def prepare_index(recipe: Any, info: Any, layout: ParallelLayout, geometry: LatentGeometry) -> tuple[Any, Any, str]:
    """``(index, settings, note)``: rank 0 checks/builds the index, every rank then maps it."""
    from osctl.data.index import open_index

    settings = BucketSettings.from_recipe(recipe, geometry=geometry, layout=layout)
    verdict: tuple[str, Any, Any] | None = None
    if info.rank == 0:
        try:
            folder, note = _ensure_index(recipe, settings)
            verdict = ("ok", str(folder), note)
        except Exception as exc:  # every rank must hear about it, or the others would wait forever
            _agree(info, ("error", type(exc).__name__, str(exc)))
            raise
    verdict = _agree(info, verdict)
    if verdict[0] == "error":
        raise DataError(f"rank 0 could not prepare the sample index ({verdict[1]}: {verdict[2]}).")
    data_txt = Path(recipe.data.data) if recipe.data.data is not None else None
    index = open_index(Path(verdict[1]), data_txt=data_txt, settings=settings)
    return index, settings, verdict[2]


@contextlib.contextmanager
def preserved_global_rng() -> Iterator[None]:
    """Restore torch's, numpy's and Python's global RNG states afterwards.

    Building the data stream (a text encoder built for its tokenizer initialises weights) must not
    change the draws of what the run builds next (model initialisation), or a run whose caches were
    cold would start from other weights than one whose caches were warm.
    """
    states = (torch.random.get_rng_state(), np.random.get_state(), random.getstate())
    try:
        yield
    finally:
        torch.random.set_rng_state(states[0])
        np.random.set_state(states[1])
        random.setstate(states[2])


def recipe_tokenizer(checked: Any, registry: Any) -> Tokenize:
    """The tokenizer of the recipe's text encoder plugin: its config's ``build_tokenizer()`` when it has one
    (no weights loaded), else the ``tokenize`` of the encoder built on CPU."""
    recipe = checked.loaded.recipe
    config = checked.components.get("text_encoder") if hasattr(checked, "components") else None
    hook = getattr(config, "build_tokenizer", None)
    with preserved_global_rng():
        if callable(hook):
            return hook()
        encoder = registry.build("text_encoder", recipe.text_encoder.name, config, device="cpu")
    return encoder.tokenize


def _pad_spec(recipe: Any, index: Any, geometry: LatentGeometry) -> PadSpec | None:
    """Padding for mixed shapes without group_data (None when every sample has one shape already): to whole
    transformer tokens (``geometry.hw_unit``), as the reference pads to 16 for its 8x VAE and patch 2."""
    d = recipe.data
    shapes = {(b["t"], b["h"], b["w"]) for b in index.buckets}
    if d.group_data:
        return None
    mode = d.effective_resolution_mode
    if len(shapes) > 1 and mode != "force":
        listed = ", ".join(f"{t}x{h}x{w}" for t, h, w in sorted(shapes)[:4])
        raise ConfigError(
            f"data.group_data is false but the index holds {len(shapes)} sample shapes ({listed}{' ...' if len(shapes) > 4 else ''}) "
            f"in {mode} resolution mode, where padding every sample to max_height x max_width is wrong; use group_data: "
            "set data.group_data: true.")
    unit = geometry.hw_unit
    frames = max([d.num_frames] + [t for t, _, _ in shapes])
    height = max([d.max_height or 0] + [h for _, h, _ in shapes])
    width = max([d.max_width or 0] + [w for _, _, w in shapes])
    return PadSpec(frames, math.ceil(height / unit) * unit, math.ceil(width / unit) * unit, geometry)


def build_batch_source(checked: Any, registry: Any, info: Any, *, layout: ParallelLayout, dp_rank: int,
                       tokenize: Tokenize | None = None) -> tuple[IndexBatchSource, dict[str, str]]:
    """The resumable batch source of this rank and the plan lines describing it (see the module docstring).

    ``info`` is the run's :class:`osctl.parallel.dist.DistInfo`; ``layout`` the run's parallel layout
    (batch per replica, replicas); ``dp_rank`` this rank's data-parallel replica (all ranks of a
    sequence-parallel group get the same batches). ``tokenize`` defaults to the recipe's text encoder's
    tokenizer. The index and the padding follow the checked recipe's latent geometry.
    """
    recipe = checked.loaded.recipe
    index, settings, note = prepare_index(recipe, info, layout, checked.geometry)
    plan = plan_stream(recipe, index, settings, note, layout=layout, dp_rank=dp_rank)
    dataset = SampleDataset(index, plan.read, members=plan.sampler.members)
    collate = Collate(tokenize or recipe_tokenizer(checked, registry), pad=plan.pad,
                      global_batch=plan.sampler.global_batch)
    source = IndexBatchSource(dataset, plan.sampler, collate, num_workers=recipe.data.num_workers,
                              pin_memory=getattr(info.device, "type", "cpu") == "cuda",
                              max_bad_fraction=plan.max_bad_fraction, timeout_s=plan.backstop_s, shapes=plan.shapes)
    return source, plan.summary


@dataclasses.dataclass
class StreamPlan:
    """The batch schedule of one replica and the plan lines that describe it: everything but the reading."""

    sampler: BucketBatchSampler
    pad: PadSpec | None
    read: ReadSettings
    batch_size: int
    max_bad_fraction: float
    backstop_s: float  # the DataLoader's own timeout: far above every decode budget of one batch
    summary: dict[str, str]
    shapes: list[tuple[int, int, int]] = dataclasses.field(default_factory=list)  # pixel T x H x W of the batches


def plan_stream(recipe: Any, index: Any, settings: Any, note: str, *, layout: ParallelLayout,
                dp_rank: int) -> StreamPlan:
    """The sampler, padding and read settings over ``index`` and the plan lines (no file is read or written);
    ``settings`` are the index's :class:`~osctl.data.bucket.BucketSettings`, with its latent geometry.

    ``index`` is a :class:`~osctl.data.index.SampleIndex` or anything with its ``path``, ``buckets``,
    ``bucket_ids()`` and ``len()`` (a dry run's index held in memory); ``layout`` gives the batch per
    replica and the replicas, ``dp_rank`` this rank's replica. Raises ``DataError`` when no full batch
    can be formed.
    """
    from osctl.data.epochs import check_epoch_batches

    d = recipe.data
    batch_size, dp_size = layout.stream_batch, layout.dp_size
    pad = _pad_spec(recipe, index, settings.geometry)
    leftover = str(_option(d, "leftover", "drop"))
    sampler = BucketBatchSampler(index.bucket_ids(), batch_size=batch_size, dp_size=dp_size, dp_rank=dp_rank,
                                 seed=d.seed, group_data=d.group_data, leftover=leftover,
                                 order=str(_option(d, "sampler_order", "osctl")))
    try:
        check_epoch_batches(sampler.steps_per_epoch, layout, [b["count"] for b in index.buckets],
                            group_data=d.group_data)
    except DataError as exc:
        raise DataError(f"the sample index {index.path}: {exc.message}", hint=exc.hint) from None
    captions = CaptionPolicy.from_recipe(recipe)
    timeout = float(_option(d, "decode_timeout_s", DEFAULT_DECODE_TIMEOUT_S))
    retries = int(_option(d, "max_retries", DEFAULT_MAX_RETRIES))
    max_bad = float(_option(d, "max_bad_fraction", DEFAULT_MAX_BAD_FRACTION))
    read = ReadSettings(frames=settings.frames, resolution=settings.resolution, captions=captions, seed=d.seed,
                        decode_timeout=timeout, max_retries=retries, geometry=settings.geometry)
    summary = {
        "index": f"{index.path.parent} ({note}): {len(index)} samples in {len(index.buckets)} bucket(s)",
        "buckets": ", ".join(f"{b['key']} x{b['count']}" for b in index.buckets[:4]) + (" ..." if len(index.buckets) > 4 else ""),
        "batches per epoch": f"{sampler.steps_per_epoch} batches of {sampler.global_batch} samples "
                             f"({batch_size} per replica x {dp_size} data-parallel replica(s))",
        "grouping": ("group_data: one bucket shape per step on every replica" if d.group_data else
                     f"mixed shapes padded to {pad.frames}x{pad.height}x{pad.width} with a latent mask" if pad else "one shape"),
        "batch rounding": (f"leftover {leftover}: {sampler.dropped_per_epoch} sample(s) dropped per epoch "
                           "(each bucket's leftover, re-drawn every epoch)" if leftover == "drop" else
                           f"leftover {leftover}: {sampler.duplicated_per_epoch} duplicate(s) per epoch fill the last batch "
                           "of each bucket"),
        "reading": f"{d.num_workers} worker(s), decord (PyAV fallback), {timeout:g} s per decode, up to {retries} "
                   f"replacement(s) per bad sample, stop above {max_bad:.1%} bad",
        "captions": f"cfg dropout {captions.cfg:g}, clean {'on' if captions.clean else 'off'}, aesthetic sentence at "
                    f">= {captions.aesthetic_high:g} / <= {captions.aesthetic_low:g}",
    }
    backstop = max(600.0, 2 * timeout * (retries + 1) * batch_size)
    shapes = [(pad.frames, pad.height, pad.width)] if pad is not None else \
        sorted({(int(b["t"]), int(b["h"]), int(b["w"])) for b in index.buckets})
    return StreamPlan(sampler, pad, read, batch_size, max_bad, backstop, summary, shapes)
