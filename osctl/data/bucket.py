"""Apply the frame and resolution rules to every record and group the survivors into buckets.

Input: the :class:`~osctl.data.table.LoadedAnnotation` of each data.txt line. Output: a
:class:`BucketResult` holding, for every record, why it was dropped (a :class:`Reason`) or which
``T x H x W`` bucket it joined, plus the bucket table. Nothing is decoded: only annotation values are
used (reference §2-4), and every step is a vectorised numpy/pyarrow operation.

The reference's silent "minority" filter becomes an explicit rule: a bucket holding fewer than
``min_bucket_batches x global_batch`` samples is dropped and each of its records is reported with the
reason ``minority_bucket``. ``global_batch`` is the samples of one optimizer step of the run's
:class:`~osctl.parallel.layout.ParallelLayout` (``world_size / sp_size x batch per replica x
grad_accum``), the same number training uses; batches per epoch are counted with the sampler's own
arithmetic (:func:`osctl.data.epochs.epoch_batches`), so they equal the steps training runs.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field
from enum import IntEnum
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from osctl.data.epochs import check_epoch_batches, epoch_batches
from osctl.data.records import (
    CAP_BLANK,
    CAP_MISSING,
    IMAGE_EXTENSIONS,
    KIND_IMAGE,
    KIND_UNKNOWN,
    KIND_VIDEO,
    VIDEO_EXTENSIONS,
)
from osctl.data.rules import (
    FrameRules,
    ResolutionRules,
    aspect_ok,
    build_frame_indices,
    count_candidates,
    resample_interval,
    short_drop_draws,
    size_absolute,
    size_area,
    size_force,
    snap_frame_count,
    temporal_crop_begins,
    too_long_mask,
)
from osctl.data.table import LoadedAnnotation, RecordTable
from osctl.geometry import LatentGeometry
from osctl.parallel.layout import ParallelLayout


class Reason(IntEnum):
    """Why a record is not in the index (``KEPT`` when it is). Checked in this order."""

    KEPT = 0
    INVALID_RECORD = 1
    NO_PATH = 2
    UNKNOWN_EXTENSION = 3
    NO_CAPTION = 4
    NO_RESOLUTION = 5
    NO_NUM_FRAMES = 6
    NO_FPS = 7
    BAD_CUT = 8
    BAD_CROP = 9
    LOW_AESTHETIC = 10
    LOW_TECH = 11
    MOTION_OUT_OF_RANGE = 12
    SIZE_ZERO = 13
    TOO_SMALL = 14
    ASPECT = 15
    TOO_LONG = 16
    SHORT_DROPPED = 17
    TOO_SHORT = 18
    MINORITY_BUCKET = 19

    @property
    def code(self) -> str:
        """The stable lower-case name used in reports and JSON."""
        return self.name.lower()


REASON_HELP: dict[Reason, str] = {
    Reason.KEPT: "kept",
    Reason.INVALID_RECORD: "a field has the wrong type or an implausible value (see `osctl data validate`)",
    Reason.NO_PATH: "no `path`",
    Reason.UNKNOWN_EXTENSION: "extension is neither an image nor a video type",
    Reason.NO_CAPTION: "no caption, or an empty one",
    Reason.NO_RESOLUTION: "resolution missing or not positive",
    Reason.NO_NUM_FRAMES: "video without a positive num_frames",
    Reason.NO_FPS: "video without a positive fps (set data.default_fps to assume one)",
    Reason.BAD_CUT: "cut is not 0 <= start < end <= start + num_frames",
    Reason.BAD_CROP: "crop is not inside the resolution with start < end",
    Reason.LOW_AESTHETIC: "aesthetic below data.filters.min_aesthetic",
    Reason.LOW_TECH: "tech below data.filters.min_tech",
    Reason.MOTION_OUT_OF_RANGE: "motion outside data.filters.min_motion..max_motion",
    Reason.SIZE_ZERO: "a side is 0 after flooring to hw_stride",
    Reason.TOO_SMALL: "below the minimum size (min_hxw or min_height/min_width)",
    Reason.ASPECT: "aspect ratio outside the max_aspect bound",
    Reason.TOO_LONG: "longer than too_long_factor x the span a sample needs",
    Reason.SHORT_DROPPED: "shorter than num_frames and drawn for dropping (drop_short_ratio)",
    Reason.TOO_SHORT: "fewer usable frames than min_frames after snapping to a whole number of latent frames "
                      "(4k+1 for WF-VAE)",
    Reason.MINORITY_BUCKET: "its bucket holds fewer than min_bucket_batches x global batch samples",
}


@dataclass(frozen=True)
class ScoreFilters:
    """Optional quality thresholds; a record without the score always passes."""

    min_aesthetic: float | None = None
    min_tech: float | None = None
    min_motion: float | None = None
    max_motion: float | None = None


@dataclass(frozen=True)
class BucketSettings:
    """Everything that decides which records are kept and in which bucket.

    ``geometry`` is the latent geometry of the recipe's autoencoder and model (``CheckedRecipe.geometry``):
    its temporal stride snaps frame counts, its strides and patch sizes count each bucket's tokens.
    """

    frames: FrameRules = field(default_factory=FrameRules)
    resolution: ResolutionRules = field(default_factory=ResolutionRules)
    filters: ScoreFilters = field(default_factory=ScoreFilters)
    keep_empty_captions: bool = False
    min_bucket_batches: float = 4.0
    group_data: bool = False
    layout: ParallelLayout = field(default_factory=ParallelLayout)
    leftover: str = "drop"
    geometry: LatentGeometry = field(kw_only=True)

    def __post_init__(self) -> None:
        if self.frames.sp_size != self.layout.sp_size:  # the frame rule's copy must be the layout's
            raise ValueError(f"frames.sp_size {self.frames.sp_size} differs from the layout's sp_size "
                             f"{self.layout.sp_size}")

    @property
    def minority_threshold(self) -> int:
        """Smallest bucket size that survives (0 keeps every bucket)."""
        return math.ceil(self.min_bucket_batches * self.layout.global_batch - 1e-9)

    @classmethod
    def from_recipe(cls, recipe: Any, *, geometry: LatentGeometry, world_size: int | None = None,
                    layout: ParallelLayout | None = None) -> BucketSettings:
        """Settings from a validated :class:`osctl.recipe.schema.Recipe` and its components' ``geometry`` on
        ``layout`` (default: the recipe's layout on ``world_size`` processes, itself defaulting to the recipe's
        process count)."""
        d = recipe.data
        if layout is None:
            layout = ParallelLayout.from_recipe(recipe, world_size=world_size)
        return cls(
            frames=FrameRules(
                num_frames=d.num_frames, train_fps=d.train_fps, speed_factor=d.speed_factor,
                drop_short_ratio=d.drop_short_ratio, min_frames=d.min_frames, too_long_factor=d.too_long_factor,
                sp_size=layout.sp_size, default_fps=d.default_fps, seed=d.seed,
            ),
            resolution=ResolutionRules(
                mode=d.effective_resolution_mode, max_height=d.max_height, max_width=d.max_width,
                min_height=d.min_height, min_width=d.min_width, max_hxw=d.max_hxw, min_hxw=d.effective_min_hxw,
                hw_stride=d.hw_stride, max_aspect=d.max_aspect, crop_before_sizing=d.crop_before_sizing,
            ),
            filters=ScoreFilters(d.filters.min_aesthetic, d.filters.min_tech, d.filters.min_motion, d.filters.max_motion),
            keep_empty_captions=d.keep_empty_captions,
            min_bucket_batches=d.min_bucket_batches,
            group_data=d.group_data,
            layout=layout,
            leftover=d.leftover,
            geometry=geometry,
        )

    def shaping_fields(self) -> dict[str, Any]:
        """The settings that change the index content, for its fingerprint (``group_data`` and ``leftover`` do not;
        the latent geometry does: an index built for other strides or patches is stale)."""
        values = asdict(self)
        for name in ("group_data", "layout", "leftover"):
            values.pop(name)
        values["global_batch"] = self.layout.global_batch
        values["minority_threshold"] = self.minority_threshold
        return values


@dataclass
class FileOutcome:
    """Per-record results for one annotation file (arrays of length ``n``)."""

    reason: np.ndarray
    kind: np.ndarray
    t: np.ndarray
    h: np.ndarray
    w: np.ndarray
    start: np.ndarray
    span: np.ndarray
    fps: np.ndarray
    n_candidates: np.ndarray
    bucket: np.ndarray | None = None


@dataclass(frozen=True)
class Bucket:
    """One surviving ``T x H x W`` bucket and its batch arithmetic: ``batches`` of the layout's micro-batch
    per epoch (under ``group_data`` each holds this one shape), ``lost`` samples dropped by the rounding."""

    id: int
    t: int
    h: int
    w: int
    count: int
    share: float
    latent_tokens: int
    batches: int
    lost: int

    @property
    def key(self) -> str:
        """``"{T}x{H}x{W}"`` as the reference prints it."""
        return f"{self.t}x{self.h}x{self.w}"


@dataclass
class BucketResult:
    """The outcome of a build over all annotation files."""

    settings: BucketSettings
    loaded: list[LoadedAnnotation]
    outcomes: list[FileOutcome | None]
    buckets: list[Bucket]
    minority: list[tuple[str, int]]

    @property
    def n_records(self) -> int:
        """Records read over all files."""
        return sum(item.n for item in self.loaded)

    @property
    def n_kept(self) -> int:
        """Records in the index."""
        return sum(b.count for b in self.buckets)

    def reason_counts(self) -> dict[str, int]:
        """Count of records per reason code, ``kept`` included, in check order."""
        totals = np.zeros(len(Reason), dtype=np.int64)
        for outcome in self.outcomes:
            if outcome is not None:
                totals += np.bincount(outcome.reason, minlength=len(Reason))
        return {reason.code: int(totals[reason]) for reason in Reason if totals[reason]}

    def _epoch(self) -> tuple[int, int, int]:
        """(micro-batches, samples dropped, duplicates added) per epoch, cut as training's sampler cuts them."""
        s = self.settings
        groups = [b.count for b in self.buckets] if s.group_data else [self.n_kept]
        batches, dropped, duplicated = epoch_batches(groups, s.layout.micro_batch, s.leftover)
        return int(batches.sum()), int(dropped.sum()), int(duplicated.sum())

    @property
    def micro_batches_per_epoch(self) -> int:
        """Batches of ``layout.micro_batch`` samples per pass (what the loader yields per epoch): per bucket
        with ``group_data``, over all samples otherwise."""
        return self._epoch()[0]

    @property
    def batches_per_epoch(self) -> int:
        """Optimizer steps per pass: what training runs in one epoch (``micro-batches // grad_accum``)."""
        return self.settings.layout.optimizer_steps(self.micro_batches_per_epoch)

    @property
    def samples_lost(self) -> int:
        """Samples that do not fill a whole micro-batch in one pass (``leftover: drop``; 0 with ``pad``)."""
        return self._epoch()[1]

    @property
    def samples_duplicated(self) -> int:
        """Duplicates that fill the last micro-batch of each group in one pass (``leftover: pad``)."""
        return self._epoch()[2]

    def check_trainable(self) -> None:
        """Refuse (``DataError``) a result that gives training no batch (see :func:`check_epoch_batches`)."""
        if self.n_kept:  # nothing kept at all: the index writer names the drop reasons
            check_epoch_batches(self.micro_batches_per_epoch, self.settings.layout, [b.count for b in self.buckets],
                                group_data=self.settings.group_data)

    def crop_begins(self, seed: int | None = None) -> list[np.ndarray | None]:
        """Build-time temporal crop start per record and file (-1: none), drawn in global record order.

        Uses ``random.Random(seed)`` (default ``data.seed``) with one draw per video that survives to the
        crop step with more candidates than ``num_frames``, exactly as the reference does after
        ``random.seed(seed)``.
        """
        frames = self.settings.frames
        eligible_reasons = np.array([Reason.KEPT, Reason.MINORITY_BUCKET, Reason.TOO_SHORT])
        counts = []
        for outcome in self.outcomes:
            if outcome is None:
                counts.append(np.zeros(0, dtype=np.int64))
                continue
            ok = (outcome.kind == KIND_VIDEO) & np.isin(outcome.reason, eligible_reasons)
            counts.append(np.where(ok, outcome.n_candidates, 0))
        begins = temporal_crop_begins(np.concatenate(counts) if counts else np.zeros(0, np.int64),
                                      frames.num_frames, frames.seed if seed is None else seed)
        out: list[np.ndarray | None] = []
        offset = 0
        for outcome, chunk in zip(self.outcomes, counts, strict=True):
            out.append(None if outcome is None else begins[offset:offset + len(chunk)])
            offset += len(chunk)
        return out

    def frame_indices(self, file_index: int, record: int, crop_begin: int) -> list[int] | None:
        """Build-time frame indices of one record (``[0]`` for an image, None when dropped before sizing)."""
        outcome = self.outcomes[file_index]
        if outcome is None or outcome.reason[record] not in (Reason.KEPT, Reason.MINORITY_BUCKET):
            return None
        if outcome.kind[record] == KIND_IMAGE:
            return [0]
        return build_frame_indices(int(outcome.start[record]), int(outcome.span[record]), float(outcome.fps[record]),
                                   self.settings.frames.train_fps, crop_begin, int(outcome.t[record])).tolist()


_COMMON_SUFFIXES = {".mp4": KIND_VIDEO, ".jpg": KIND_IMAGE}


def media_kinds(paths: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """``KIND_*`` per path from its extension (case-insensitive), vectorised with pyarrow.

    The two suffixes of nearly every dataset are matched with a plain byte comparison first; only
    the remaining paths go through the regular expression.
    """
    kind = np.full(len(paths), KIND_UNKNOWN, dtype=np.int8)
    for suffix, value in _COMMON_SUFFIXES.items():
        kind[pc.fill_null(pc.ends_with(paths, suffix), False).to_numpy(zero_copy_only=False)] = value
    rest = np.flatnonzero(kind == KIND_UNKNOWN)
    if not len(rest):
        return kind
    subset = paths.take(pa.array(rest))
    ext = pc.utf8_lower(pc.struct_field(pc.extract_regex(subset, r"\.(?P<ext>[^./\\]+)$"), [0]))
    video = pc.fill_null(pc.is_in(ext, value_set=pa.array(sorted(VIDEO_EXTENSIONS))), False)
    image = pc.fill_null(pc.is_in(ext, value_set=pa.array(sorted(IMAGE_EXTENSIONS))), False)
    kind[rest[video.to_numpy(zero_copy_only=False)]] = KIND_VIDEO
    kind[rest[image.to_numpy(zero_copy_only=False)]] = KIND_IMAGE
    return kind


def caption_missing(table: RecordTable, *, keep_empty: bool = False) -> np.ndarray:
    """Records without a usable caption: absent, or (unless ``keep_empty``) empty/blank or with a blank item."""
    state = table.cap_state
    missing = state == CAP_MISSING
    return missing if keep_empty else missing | (state == CAP_BLANK)


def apply_rules(table: RecordTable, settings: BucketSettings, draws: np.ndarray | None = None) -> FileOutcome:
    """Decide for each record of ``table`` its drop reason or its ``T x H x W`` (minority filter excluded).

    ``draws`` are this file's uniform numbers for the short-clip drop (needed when
    ``0 < drop_short_ratio < 1``; see :func:`osctl.data.rules.short_drop_draws`).
    """
    n = table.n
    fr, rr, flt = settings.frames, settings.resolution, settings.filters
    reason = np.zeros(n, dtype=np.int8)

    def drop(mask: np.ndarray, why: Reason) -> None:
        reason[(reason == 0) & mask] = why

    kind = media_kinds(table.path)
    video = kind == KIND_VIDEO
    image = kind == KIND_IMAGE
    drop(table.invalid_mask, Reason.INVALID_RECORD)
    drop(table.path.is_null().to_numpy(zero_copy_only=False), Reason.NO_PATH)
    drop(kind == KIND_UNKNOWN, Reason.UNKNOWN_EXTENSION)
    drop(caption_missing(table, keep_empty=settings.keep_empty_captions), Reason.NO_CAPTION)
    h, w = table.height, table.width
    with np.errstate(invalid="ignore"):
        drop(~((h > 0) & (w > 0)), Reason.NO_RESOLUTION)
        ann_frames = table.num_frames
        drop(video & ~(ann_frames > 0), Reason.NO_NUM_FRAMES)
        fps = table.fps if fr.default_fps is None else np.where(np.isnan(table.fps), fr.default_fps, table.fps)
        drop(video & ~(fps > 0), Reason.NO_FPS)
        c0, c1 = table.cut[:, 0], table.cut[:, 1]
        has_cut = video & ~np.isnan(c0)
        drop(has_cut & ~((c0 >= 0) & (c0 < c1) & (c1 - c0 <= ann_frames)), Reason.BAD_CUT)
        x0, x1, y0, y1 = (table.crop[:, i] for i in range(4))
        has_crop = ~np.isnan(x0)
        drop(has_crop & ~((x0 >= 0) & (x0 < x1) & (x1 <= w) & (y0 >= 0) & (y0 < y1) & (y1 <= h)), Reason.BAD_CROP)
        score = table.score()
        if flt.min_aesthetic is not None:
            drop(score < flt.min_aesthetic, Reason.LOW_AESTHETIC)
        if flt.min_tech is not None:
            drop(table.tech < flt.min_tech, Reason.LOW_TECH)
        if flt.min_motion is not None:
            drop(table.motion < flt.min_motion, Reason.MOTION_OUT_OF_RANGE)
        if flt.max_motion is not None:
            drop(table.motion > flt.max_motion, Reason.MOTION_OUT_OF_RANGE)

    alive = reason == 0
    use_crop = has_crop & rr.crop_before_sizing
    eff_h = np.where(alive, np.where(use_crop, y1 - y0, h), 1).astype(np.int64)
    eff_w = np.where(alive, np.where(use_crop, x1 - x0, w), 1).astype(np.int64)
    if rr.mode == "force":
        out_h, out_w, keep = size_force(eff_h, eff_w, rr)
        drop(~keep, Reason.ASPECT)
    else:
        if rr.mode == "area":
            out_h, out_w = size_area(eff_h, eff_w, rr)
        else:
            out_h, out_w = size_absolute(eff_h, eff_w, rr)
        drop((out_h <= 0) | (out_w <= 0), Reason.SIZE_ZERO)
        if rr.mode == "area":
            drop(out_h * out_w < (rr.min_hxw or 0), Reason.TOO_SMALL)
        else:
            drop((out_h < (rr.min_height or 0)) | (out_w < (rr.min_width or 0)), Reason.TOO_SMALL)
        drop(~aspect_ok(out_h, out_w, 1 / rr.max_aspect, rr.max_aspect), Reason.ASPECT)

    alive_video = video & (reason == 0)
    start = np.where(has_cut, c0, 0.0)
    span = np.where(has_cut, c1 - c0, ann_frames)
    safe_fps = np.where(alive_video, fps, fr.train_fps)
    start = np.where(alive_video, start, 0.0)
    span = np.where(alive_video, span, 0.0)
    n_cand = count_candidates(start, span, resample_interval(safe_fps, fr.train_fps))
    drop(alive_video & too_long_mask(span, safe_fps, fr), Reason.TOO_LONG)
    short = video & (n_cand < fr.num_frames)
    if fr.drop_short_ratio >= 1:
        drop(short, Reason.SHORT_DROPPED)
    elif fr.drop_short_ratio > 0:
        if draws is None:
            draws = short_drop_draws(n, fr.seed)
        drop(short & (draws < fr.drop_short_ratio), Reason.SHORT_DROPPED)
    frames = snap_frame_count(np.minimum(n_cand, fr.num_frames), stride_t=settings.geometry.stride_t,
                              min_frames=fr.min_frames, sp_size=fr.sp_size)
    drop(video & (frames < 0), Reason.TOO_SHORT)
    t = np.where(image, 1, frames)
    kept = reason == 0
    return FileOutcome(
        reason=reason, kind=kind,
        t=np.where(kept, t, 0).astype(np.int32),
        h=np.where(kept, out_h, 0).astype(np.int32),
        w=np.where(kept, out_w, 0).astype(np.int32),
        start=start.astype(np.int64), span=span.astype(np.int64), fps=np.where(video, fps, np.nan),
        n_candidates=np.where(video, n_cand, 0).astype(np.int64),
    )


def _key(t: np.ndarray, h: np.ndarray, w: np.ndarray) -> np.ndarray:
    return (t.astype(np.int64) << 42) | (h.astype(np.int64) << 21) | w.astype(np.int64)


RULE_PART_ROWS = 1 << 17
"""Records per part when the rules run in parts: small enough for the CPU cache, large enough for numpy."""

_OUTCOME_ARRAYS = ("reason", "kind", "t", "h", "w", "start", "span", "fps", "n_candidates")


def _rule_parts(loaded: list[LoadedAnnotation]) -> list[tuple[int, int, int]]:
    """``(file, start, stop)`` row ranges of at most :data:`RULE_PART_ROWS` records covering every readable file."""
    return [(f, start, min(start + RULE_PART_ROWS, item.n)) for f, item in enumerate(loaded) if item.table is not None
            for start in range(0, max(item.n, 1), RULE_PART_ROWS)]


def apply_rules_all(loaded: list[LoadedAnnotation], settings: BucketSettings, *,
                    threads: int | None = None) -> list[FileOutcome | None]:
    """:func:`apply_rules` for every file (None for an unreadable one), run in parts on ``threads`` threads.

    The rules are element-wise, so the outcome of a file is the concatenation of its parts' outcomes;
    numpy and pyarrow release the GIL in their loops, so the parts of a large file run in parallel
    (``threads`` defaults to the CPU count, at most 8). The short-clip draws follow the global record
    position (see :func:`osctl.data.rules.short_drop_draws`) whatever the parts.
    """
    fr = settings.frames
    total = sum(item.n for item in loaded)
    draws = short_drop_draws(total, fr.seed) if 0 < fr.drop_short_ratio < 1 else None
    offsets = np.cumsum([0] + [item.n for item in loaded])
    parts = _rule_parts(loaded)

    def run(part: tuple[int, int, int]) -> FileOutcome:
        f, start, stop = part
        table = loaded[f].table
        assert table is not None
        first = int(offsets[f]) + start
        sub = table if (start, stop) == (0, table.n) else table.rows(start, stop)
        return apply_rules(sub, settings, None if draws is None else draws[first:first + stop - start])

    threads = threads or min(8, os.cpu_count() or 1)
    if threads > 1 and len(parts) > 1:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(min(threads, len(parts))) as pool:
            results = list(pool.map(run, parts))
    else:
        results = [run(part) for part in parts]
    by_file: dict[int, list[FileOutcome]] = {}
    for (f, _, _), outcome in zip(parts, results, strict=True):
        by_file.setdefault(f, []).append(outcome)
    outcomes: list[FileOutcome | None] = []
    for f in range(len(loaded)):
        pieces = by_file.get(f)
        if pieces is None:
            outcomes.append(None)
        elif len(pieces) == 1:
            outcomes.append(pieces[0])
        else:
            outcomes.append(FileOutcome(**{name: np.concatenate([getattr(p, name) for p in pieces])
                                           for name in _OUTCOME_ARRAYS}))
    return outcomes


def build_buckets(loaded: list[LoadedAnnotation], settings: BucketSettings, *,
                  threads: int | None = None) -> BucketResult:
    """Apply the rules to every readable file, then the minority rule over all of them; each bucket's tokens
    follow ``settings.geometry``. ``threads``: see :func:`apply_rules_all`.
    """
    outcomes = apply_rules_all(loaded, settings, threads=threads)

    keys = [_key(o.t, o.h, o.w)[o.reason == 0] for o in outcomes if o is not None]
    all_keys = np.concatenate(keys) if keys else np.zeros(0, dtype=np.int64)
    uniq, counts = np.unique(all_keys, return_counts=True)
    threshold = settings.minority_threshold
    small = counts < threshold
    minority = [(_key_str(k), int(c)) for k, c in zip(uniq[small], counts[small], strict=True)]
    survivors = sorted(zip(uniq[~small].tolist(), counts[~small].tolist(), strict=True), key=lambda kc: (-kc[1], kc[0]))
    lookup = np.full(len(uniq), -1, dtype=np.int32)
    kept_total = sum(c for _, c in survivors)
    batches, lost, _ = epoch_batches([c for _, c in survivors], settings.layout.micro_batch, settings.leftover)
    buckets = []
    for bucket_id, (key, count) in enumerate(survivors):
        lookup[np.searchsorted(uniq, key)] = bucket_id
        t, h, w = key >> 42, (key >> 21) & ((1 << 21) - 1), key & ((1 << 21) - 1)
        tokens = settings.geometry.tokens(t, h, w)
        buckets.append(Bucket(bucket_id, t, h, w, count, count / kept_total if kept_total else 0.0, tokens,
                              int(batches[bucket_id]), int(lost[bucket_id])))
    for outcome in outcomes:
        if outcome is None:
            continue
        kept = outcome.reason == 0
        bucket = np.full(len(outcome.reason), -1, dtype=np.int32)
        if kept.any():
            ids = lookup[np.searchsorted(uniq, _key(outcome.t, outcome.h, outcome.w)[kept])]
            bucket[kept] = ids
            gone = np.flatnonzero(kept)[ids < 0]
            outcome.reason[gone] = Reason.MINORITY_BUCKET
        outcome.bucket = bucket
    return BucketResult(settings, loaded, outcomes, buckets, minority)


def _key_str(key: int) -> str:
    key = int(key)
    return f"{key >> 42}x{(key >> 21) & ((1 << 21) - 1)}x{key & ((1 << 21) - 1)}"
