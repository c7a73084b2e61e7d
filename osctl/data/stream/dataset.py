"""The training dataset over the memory-mapped sample index, its bad-media policy and the batch collate.

:class:`SampleDataset` is a ``torch.utils.data.Dataset`` whose items are asked for by *ticket*
``(sample, epoch, position)`` (see :mod:`osctl.data.stream.sampler`). Per item:

1. ``rng = sample_rng(seed, epoch, position, attempt)`` — the only source of randomness;
2. videos: the read-time frame indices (:func:`osctl.data.rules.sample_frame_indices`: fps
   resampling, ``speed_factor``, random temporal crop to ``num_frames``, snap to the legal count),
   which must give the frame count the sample was bucketed with; images: frame ``[0]``;
3. decode (:mod:`osctl.data.stream.reader`: decord, PyAV fallback, Pillow; time-bounded), check the decoded
   size against the annotation, then crop, resize and normalise (:mod:`osctl.data.stream.transforms`) into the
   bucket's ``3 x T x H x W``;
4. the training text (:mod:`osctl.data.stream.captions`).

Bad media (missing, empty, truncated, undecodable, wrong size, a frame count that does not match the
bucket, a decode past its time budget, or any unexpected exception while loading the sample — code
``error``) never propagates as an exception (only :class:`~osctl.data.stream.reader.DecodeHung`, a stuck
storage, does): the failure is recorded as an *event* and another sample of the same bucket, drawn
from the same seeded stream, takes its place, at most ``max_retries`` times (a loop: no recursion,
and every read is time-bounded, so no hang).
When every attempt fails the item comes back marked ``failed``; the batch source turns that into a
:class:`~osctl.errors.DataError` naming the files. Events travel inside the batch to the main
process, where they are counted once (see :class:`BadSampleStats`).

Memory: the dataset holds the :class:`~osctl.data.index.SampleIndex` (pickled as its path, so a
spawned worker maps the same file) and one argsort of the bucket column; no per-record Python object
exists for the whole dataset, and forked workers share every page.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from osctl.data.index import SampleIndex
from osctl.data.records import KIND_IMAGE
from osctl.data.rules import FrameCountError, FrameRules, ResolutionRules, sample_frame_indices
from osctl.data.stream.captions import CaptionPolicy, Tokenize, tokenize_texts, training_text
from osctl.data.stream.reader import MEDIA_ERROR_CODES, DecodeHung, MediaError, read_image, read_video
from osctl.data.stream.sampler import BucketMembers, sample_rng
from osctl.data.stream.transforms import ShapeMismatch, to_training_tensor
from osctl.errors import DataError
from osctl.geometry import LatentGeometry

log = logging.getLogger("osctl.data")

DEFAULT_MAX_RETRIES = 8
"""Replacement attempts after a bad sample before the item fails (``data.max_retries`` when the schema has it)."""
DEFAULT_DECODE_TIMEOUT_S = 60.0
"""Time budget of one sample's decode in seconds (``data.decode_timeout_s`` when the schema has it)."""
DEFAULT_MAX_BAD_FRACTION = 0.01
"""Share of bad samples above which training stops (``data.max_bad_fraction`` when the schema has it)."""


@dataclass(frozen=True)
class ReadSettings:
    """Everything read time needs besides the index (all picklable, identical on every worker); ``geometry``
    is the one the index was built with (its temporal stride snaps the frames read)."""

    frames: FrameRules = field(default_factory=FrameRules)
    resolution: ResolutionRules = field(default_factory=ResolutionRules)
    captions: CaptionPolicy = field(default_factory=CaptionPolicy)
    seed: int = 42
    decode_timeout: float | None = DEFAULT_DECODE_TIMEOUT_S
    max_retries: int = DEFAULT_MAX_RETRIES
    reference_quirks: bool = False
    check_size: bool = True
    geometry: LatentGeometry = field(kw_only=True)


@dataclass(frozen=True)
class BadEvent:
    """One failed read: which sample, the error code (:data:`~osctl.data.stream.reader.MEDIA_ERROR_CODES`), file and message."""

    sample: int
    code: str
    path: str
    message: str


class SampleDataset(Dataset):
    """Training samples of a sample index, asked for by ticket ``(sample, epoch, position)`` (or a bare id).

    Items are dicts: ``pixel_values`` (float32 ``3 x T x H x W`` in [-1, 1]), ``text``, ``sample`` (the
    id actually loaded), ``ticket``, ``events`` (list of :class:`BadEvent`), or ``failed=True`` with the
    events when no attempt succeeded.
    """

    def __init__(self, index: SampleIndex, settings: ReadSettings, members: BucketMembers | None = None) -> None:
        self.index = index
        self.settings = settings
        self.members = members if members is not None else BucketMembers(index.bucket_ids(), len(index.buckets) or None)

    def __len__(self) -> int:
        return len(self.index)

    def frame_indices(self, sample: int, rng: Any) -> np.ndarray:
        """Source frames to decode for ``sample`` (``[0]`` for images); ``FrameCountError`` when the count differs."""
        info = self.index.sample(sample)
        return self._frames(info, rng)

    def _frames(self, info: Any, rng: Any) -> np.ndarray:
        if info.kind == KIND_IMAGE:
            return np.zeros(1, dtype=np.int64)
        fr = self.settings.frames
        if info.fps is None:
            raise FrameCountError("the index has no fps for this video")
        return sample_frame_indices(
            info.fps, info.start_frame, info.span_frames, num_frames=fr.num_frames, train_fps=fr.train_fps,
            expected_frames=info.shape[0], rng=rng, stride_t=self.settings.geometry.stride_t,
            speed_factor=fr.speed_factor, sp_size=fr.sp_size, min_frames=fr.min_frames,
            drop_short_ratio=fr.drop_short_ratio, reference_quirks=self.settings.reference_quirks)

    def load(self, sample: int, rng: Any) -> tuple[torch.Tensor, str]:
        """``(pixel_values, text)`` of ``sample`` using ``rng``; raises :class:`MediaError` for bad media."""
        info = self.index.sample(sample)
        s = self.settings
        size = (info.height, info.width) if s.check_size else None
        try:
            indices = self._frames(info, rng)
        except FrameCountError as exc:
            raise MediaError("frame_count", info.path, str(exc)) from None
        if info.kind == KIND_IMAGE:
            frames = read_image(info.path, size=size, timeout=s.decode_timeout)
        else:
            frames = read_video(info.path, indices, size=size, timeout=s.decode_timeout)
        if info.kind != KIND_IMAGE and frames.shape[0] != info.shape[0]:
            raise MediaError("frame_count", info.path, f"decoded {frames.shape[0]} frames, the bucket needs {info.shape[0]}")
        try:
            pixels = to_training_tensor(frames, rules=s.resolution, shape=(info.shape[1], info.shape[2]), crop=info.crop)
        except ShapeMismatch as exc:
            raise MediaError("size_mismatch", info.path, str(exc)) from None
        text = training_text(info.captions, info.aesthetic, info.kind, s.captions, rng)
        return pixels, text

    def __getitem__(self, ticket: Any) -> dict[str, Any]:
        if isinstance(ticket, (int, np.integer)):
            ticket = (int(ticket), 0, int(ticket))
        sample, epoch, position = (int(v) for v in ticket)
        bucket = int(self.index.bucket_ids()[sample])
        events: list[BadEvent] = []
        current = sample
        for attempt in range(self.settings.max_retries + 1):
            rng = sample_rng(self.settings.seed, epoch, position, attempt)
            if attempt:
                current = self.members.random_other(bucket, sample, rng)
            try:
                pixels, text = self.load(current, rng)
            except MediaError as exc:
                events.append(BadEvent(current, exc.code, exc.path, exc.detail))
                continue
            except DecodeHung:
                raise
            except Exception as exc:  # an exotic file can break a library in unforeseen ways: count it, go on
                events.append(BadEvent(current, "error", self.index.media_path(current), f"{type(exc).__name__}: {exc}"))
                continue
            return {"pixel_values": pixels, "text": text, "sample": current, "ticket": (sample, epoch, position),
                    "events": events}
        return {"failed": True, "bucket": bucket, "sample": sample, "ticket": (sample, epoch, position), "events": events}


# ------------------------------------------------------------------------------------------------ collate


@dataclass(frozen=True)
class PadSpec:
    """Padding of mixed shapes (no ``group_data``): every sample is zero-padded at the end of T, H and W to
    ``frames x height x width`` and a latent-resolution validity mask is added (reference §4.4); the latent
    sizes follow ``geometry``'s strides."""

    frames: int
    height: int
    width: int
    geometry: LatentGeometry

    def latent_shape(self) -> tuple[int, int, int]:
        """``T_lat x H_lat x W_lat`` of the padded tensor."""
        st, ss = self.geometry.stride_t, self.geometry.stride_hw
        return (self.frames - 1) // st + 1, math.ceil(self.height / ss), math.ceil(self.width / ss)

    def valid_latents(self, t: int, h: int, w: int) -> tuple[int, int, int]:
        """Latents covered by a ``t x h x w`` sample: ``ceil((t - 1) / st) + 1``, ``ceil(h / ss)``, ``ceil(w / ss)``."""
        st, ss = self.geometry.stride_t, self.geometry.stride_hw
        return math.ceil((t - 1) / st) + 1, math.ceil(h / ss), math.ceil(w / ss)


class Collate:
    """Stack a batch of items (pad + mask without group_data), tokenize the texts, carry the events.

    Output keys: ``pixel_values`` (B x 3 x T x H x W), ``input_ids`` and ``attention_mask`` (B x L,
    when a tokenizer is given), ``latent_mask`` (B x T_lat x H_lat x W_lat, with ``pad``), ``texts``,
    ``samples`` (ids loaded), ``epoch``/``step`` of the schedule, ``events``; or ``failed`` (the
    failed items) with the events when an item could not be loaded at all.
    """

    def __init__(self, tokenize: Tokenize | None = None, *, pad: PadSpec | None = None, global_batch: int = 1) -> None:
        self.tokenize = tokenize
        self.pad = pad
        self.global_batch = max(1, int(global_batch))

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        events = [event for item in items for event in item["events"]]
        ticket = items[0]["ticket"]
        meta = {"epoch": ticket[1], "step": ticket[2] // self.global_batch, "events": events,
                "samples": torch.tensor([item["sample"] for item in items], dtype=torch.int64),
                "replaced": sum(1 for item in items if item["events"] and not item.get("failed"))}
        failed = [item for item in items if item.get("failed")]
        if failed:
            return {"failed": failed, **meta}
        pixels = [item["pixel_values"] for item in items]
        texts = [item["text"] for item in items]
        batch: dict[str, Any] = {"texts": texts, **meta}
        if self.pad is None:
            shapes = {tuple(p.shape) for p in pixels}
            if len(shapes) != 1:
                raise DataError(f"a group_data batch mixes shapes {sorted(shapes)}; the index or sampler is inconsistent.")
            batch["pixel_values"] = torch.stack(pixels, out=_batch_buffer((len(pixels), *pixels[0].shape), pixels[0].dtype))
        else:
            batch["pixel_values"], batch["latent_mask"] = self._padded(pixels)
        if self.tokenize is not None:
            batch.update(tokenize_texts(texts, self.tokenize))
        return batch

    def _padded(self, pixels: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        spec = self.pad
        assert spec is not None
        out = _batch_buffer((len(pixels), 3, spec.frames, spec.height, spec.width), pixels[0].dtype).zero_()
        mask = torch.zeros(len(pixels), *spec.latent_shape())
        for i, p in enumerate(pixels):
            t, h, w = p.shape[1:]
            if t > spec.frames or h > spec.height or w > spec.width:
                raise DataError(f"a {t}x{h}x{w} sample does not fit the padding target {spec.frames}x{spec.height}x"
                                f"{spec.width}; set data.group_data: true.")
            out[i, :, :t, :h, :w] = p
            lt, lh, lw = spec.valid_latents(t, h, w)
            mask[i, :lt, :lh, :lw] = 1
        return out, mask


def _batch_buffer(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """An uninitialised tensor for a batch; in a DataLoader worker it lives in shared memory, so handing the
    batch to the main process moves no pixel data (torch's default collate does the same)."""
    if torch.utils.data.get_worker_info() is None:
        return torch.empty(shape, dtype=dtype)
    numel = math.prod(shape)
    storage = torch.UntypedStorage._new_shared(numel * torch.empty((), dtype=dtype).element_size())
    return torch.empty(0, dtype=dtype).set_(storage, 0, shape)


# --------------------------------------------------------------------------------------------- bad media


class BadSampleStats:
    """Bad-media accounting in the main process: counts, one log line per file, and the stop rule.

    Training stops (:class:`DataError` naming examples) when

    - the distinct bad samples exceed ``max_bad_fraction`` of the index, or
    - the bad reads exceed ``max_bad_fraction`` of all reads, once at least ``ceil(10 / max_bad_fraction)``
      reads were made (1000 for the default 0.01, so a few early failures do not stop a healthy run).
    """

    MAX_TRACKED = 10_000
    EXAMPLES = 5

    def __init__(self, num_samples: int, max_bad_fraction: float = DEFAULT_MAX_BAD_FRACTION) -> None:
        self.num_samples = int(num_samples)
        self.max_bad_fraction = float(max_bad_fraction)
        self.reads = 0
        self.bad_reads = 0
        self.replaced = 0
        self.by_code: Counter[str] = Counter()
        self.bad_samples: dict[int, str] = {}
        self.examples: list[str] = []
        self.extra_unique = 0

    def record(self, batch: dict[str, Any]) -> None:
        """Count the reads and failures of one collated batch, logging each newly bad file once."""
        events: list[BadEvent] = batch.get("events", [])
        loaded = 0 if batch.get("failed") else len(batch["samples"])
        self.reads += loaded + len(events)
        self.bad_reads += len(events)
        self.replaced += int(batch.get("replaced", 0))
        for event in events:
            self.by_code[event.code] += 1
            if event.sample in self.bad_samples:
                continue
            line = f"{event.path}: {event.code}: {event.message}"
            if len(self.bad_samples) < self.MAX_TRACKED:
                self.bad_samples[event.sample] = line
            else:
                self.extra_unique += 1
            if len(self.examples) < self.EXAMPLES:
                self.examples.append(line)
            log.warning("bad media skipped (sample %d): %s", event.sample, line)

    @property
    def bad_unique(self) -> int:
        """Distinct samples found bad so far."""
        return len(self.bad_samples) + self.extra_unique

    def check(self, batch: dict[str, Any]) -> None:
        """Raise :class:`DataError` for a failed item or when the bad share passes ``max_bad_fraction``."""
        failed = batch.get("failed")
        if failed:
            item = failed[0]
            files = sorted({e.path for e in item["events"]})
            raise DataError(
                f"sample {item['sample']} and {len(item['events']) - 1} replacement(s) from its bucket all failed to load "
                f"({'; '.join(f'{e.path}: {e.code}' for e in item['events'][:3])}); {len(files)} distinct bad file(s) in "
                "a row means the bucket is unreadable.",
                hint="run `osctl data validate DATA_TXT --probe`, fix or remove the files, and rebuild the index.")
        fraction = self.max_bad_fraction
        over_index = self.bad_unique > fraction * self.num_samples
        min_reads = math.ceil(10 / fraction) if fraction > 0 else 0
        over_reads = self.reads >= min_reads and self.bad_reads > fraction * self.reads
        if over_index or over_reads:
            share = self.bad_unique / max(1, self.num_samples) if over_index else self.bad_reads / max(1, self.reads)
            raise DataError(
                f"{self.bad_unique} bad sample(s) ({share:.2%} of {'the index' if over_index else 'reads so far'}) exceed "
                f"max_bad_fraction {fraction:g}; examples: {' | '.join(self.examples[:3])}.",
                hint="run `osctl data validate DATA_TXT --probe` to list every broken file, or raise data.max_bad_fraction.")

    def as_dict(self) -> dict[str, Any]:
        """Counts for logs and the batch source's ``stats()``."""
        return {"reads": self.reads, "bad_reads": self.bad_reads, "bad_samples": self.bad_unique,
                "replaced": self.replaced, "by_code": {c: self.by_code[c] for c in MEDIA_ERROR_CODES if self.by_code[c]},
                "examples": list(self.examples), "max_bad_fraction": self.max_bad_fraction}

    def state_dict(self) -> dict[str, Any]:
        """JSON-ready counters (the distinct-file list is kept to examples)."""
        return {"reads": self.reads, "bad_reads": self.bad_reads, "replaced": self.replaced,
                "by_code": dict(self.by_code), "bad_unique": self.bad_unique, "examples": list(self.examples)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue counting from a checkpoint's counters."""
        self.reads = int(state.get("reads", 0))
        self.bad_reads = int(state.get("bad_reads", 0))
        self.replaced = int(state.get("replaced", 0))
        self.by_code = Counter({str(k): int(v) for k, v in dict(state.get("by_code", {})).items()})
        self.examples = list(state.get("examples", []))[: self.EXAMPLES]
        self.bad_samples = {}
        self.extra_unique = int(state.get("bad_unique", 0))
