"""A deterministic, resumable, bucketed batch schedule shared by every data-parallel rank.

Design (reference §4 and the traps in §10 it removes):

- **One global schedule per epoch.** Every rank computes the same list of *steps* from
  ``(data.seed, epoch)`` alone; a step is one global batch of ``G = dp_size x batch_size`` sample
  ids and rank ``r`` takes the slice ``[r * B, (r + 1) * B)``. Nothing is communicated, and the
  ranks cannot disagree.
- **group_data: one bucket per step.** Each bucket's samples are permuted and cut into global
  batches; the list of all global batches is then permuted. So every batch holds one ``T x H x W``
  shape *and every rank of a step gets the same shape* — in particular every rank of a sequence-
  parallel group, and the same video/image kind (the reference only makes shapes agree inside one
  rank, which can hang sequence parallelism).
- **Batch rounding (leftover rule).** A bucket of ``n`` samples gives ``n // G`` steps. The ``n % G``
  samples left over are either *dropped* (``leftover="drop"``, the default: batches per epoch is the
  floor per bucket; which samples are dropped changes every epoch because the permutation does, so
  nothing is lost for good) or *padded* (``leftover="pad"``: one more step whose missing ``G - n % G``
  places are filled with duplicates of the first samples of the same permuted bucket, i.e. samples
  already seen in that epoch). :attr:`BucketBatchSampler.dropped_per_epoch` and
  :attr:`~BucketBatchSampler.duplicated_per_epoch` give the exact counts; without ``group_data`` the
  same rule applies to the one permutation of all samples.
- **Epochs.** Epoch ``e`` uses the generator ``SeedSequence([seed, e])``: a new order every epoch,
  identical on every rank and in every run. Steps per epoch are the same every epoch.
- **Resume.** The position is ``(epoch, step)``; the schedule being a pure function of the seed and
  the epoch, a resumed run rebuilds it and continues with exactly the remaining steps.
- **Per-sample randomness.** Each slot of the schedule has a *position* in its epoch
  (``step * G + rank * B + j``); the dataset seeds each sample's temporal crop, caption choice,
  aesthetic sentence and CFG dropout from ``(seed, epoch, position)`` (:func:`sample_rng`), so results
  depend neither on DataLoader workers nor on where a run was resumed.

``order="reference"`` reproduces Open-Sora-Plan v1.3.1's ``LengthGroupedSampler`` order
(:func:`reference_order`, checked against ``golden/data/sampler.json``) for comparisons; it pads with
random duplicates, homogenises shapes only inside each rank's batch and, as in the reference, can
give different ranks of one step different shapes — do not use it with sequence parallelism.
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from collections.abc import Hashable, Iterator, Sequence
from typing import Any

import numpy as np

from osctl.data.epochs import LEFTOVER_RULES, epoch_batches

ORDERS: tuple[str, ...] = ("osctl", "reference")
_SCHEDULE_TAG = 0x5C4ED
_SAMPLE_TAG = 0x5A3B1E

Ticket = tuple[int, int, int]
"""``(sample id, epoch, position in the epoch's schedule)``: what the dataset is asked to load."""


def _seed_words(seed: int) -> list[int]:
    value = int(seed) % (1 << 64)
    return [value & 0xFFFFFFFF, value >> 32]


def epoch_generator(seed: int, epoch: int) -> np.random.Generator:
    """The numpy generator of epoch ``epoch``'s schedule: a pure function of ``(seed, epoch)``."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([*_seed_words(seed), int(epoch), _SCHEDULE_TAG])))


def sample_rng(seed: int, epoch: int, position: int, attempt: int = 0) -> random.Random:
    """The ``random.Random`` of one schedule slot (and retry ``attempt`` after bad media).

    Seeded from ``(seed, epoch, position, attempt)`` only, so a sample's temporal crop, caption choice
    and dropout do not depend on which worker loads it, on how many workers there are, or on resuming.
    """
    words = np.random.SeedSequence([*_seed_words(seed), int(epoch), int(position), int(attempt), _SAMPLE_TAG])
    state = words.generate_state(4, np.uint32)
    return random.Random(int.from_bytes(state.tobytes(), "little"))


class BucketMembers:
    """Sample ids grouped by bucket (one stable argsort of the bucket column; shared by forked workers)."""

    def __init__(self, bucket_ids: np.ndarray, num_buckets: int | None = None) -> None:
        bucket_ids = np.asarray(bucket_ids)
        if len(bucket_ids) and int(bucket_ids.min()) < 0:
            raise ValueError("bucket ids must be >= 0")
        self.num_buckets = int(num_buckets if num_buckets is not None else (int(bucket_ids.max()) + 1 if len(bucket_ids) else 0))
        self.order = np.argsort(bucket_ids, kind="stable").astype(np.int64)
        counts = np.bincount(bucket_ids, minlength=self.num_buckets) if len(bucket_ids) else np.zeros(self.num_buckets, np.int64)
        self.counts = counts.astype(np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self.counts)]).astype(np.int64)

    def members(self, bucket: int) -> np.ndarray:
        """Sample ids of ``bucket`` in increasing order (a view)."""
        return self.order[self.offsets[bucket]:self.offsets[bucket + 1]]

    def random_other(self, bucket: int, exclude: int, rng: random.Random) -> int:
        """A uniformly drawn member of ``bucket`` other than ``exclude`` (``exclude`` itself if it is alone)."""
        members = self.members(bucket)
        n = len(members)
        if n <= 1:
            return int(members[0]) if n else int(exclude)
        k = rng.randrange(n - 1)
        pick = int(members[k])
        return int(members[n - 1]) if pick == exclude else pick


def reference_order(lengths: Sequence[Hashable], batch_size: int, world_size: int, *, grad_accum: int = 1,
                    initial_global_step: int = 0, group_data: bool = False, torch_seed: int = 42,
                    py_rng: random.Random | None = None) -> list[int]:
    """The flat index order of the reference ``LengthGroupedSampler`` (OSP v1.3.1, reference §4.2).

    ``lengths`` are the bucket keys in dataset order; ``torch_seed`` seeds the torch generator the
    reference creates in each ``__iter__`` (42); ``py_rng`` replaces the process-global ``random``
    the reference uses for padding and shape homogenisation. Equal to ``golden/data/sampler.json``.
    """
    import torch

    rng = py_rng or random.Random()
    generator = torch.Generator().manual_seed(int(torch_seed))
    if group_data:
        counter = Counter(lengths)
        grouped: dict[Hashable, list[int]] = defaultdict(list)
        for i, key in enumerate(lengths):
            grouped[key].append(i)
        indices: list[int] = []
        for key, _ in sorted(counter.items(), key=lambda kv: kv[1], reverse=True):
            members = grouped[key]
            indices.extend(members[j] for j in torch.randperm(len(members), generator=generator).tolist())
    else:
        indices = torch.randperm(len(lengths), generator=generator).tolist()
    mega = world_size * batch_size
    megabatches: list[list[list[int]]] = []
    for start in range(0, len(lengths), mega):
        megabatch = indices[start:start + mega]
        chunks: list[list[int]] = []
        for chunk in (megabatch[r::world_size] for r in range(world_size)):
            if len(chunk) != batch_size:
                chunk = chunk + [rng.choice(chunk) for _ in range(batch_size - len(chunk))] if chunk else rng.choice(chunks)
            chunks.append(chunk)
        megabatches.append(chunks)
    order = torch.randperm(len(megabatches), generator=generator).tolist()
    megabatches = [megabatches[i] for i in order]
    if group_data:
        for chunks in megabatches:
            for k, batch in enumerate(chunks):
                keys = [lengths[i] for i in batch]
                counts = Counter(keys)
                if len(counts) != 1:
                    pick = sorted(counts.items(), key=lambda kv: kv[1])[-1][0]
                    keep = [i for i, key in dict(zip(batch, keys, strict=True)).items() if key == pick]
                    chunks[k] = keep + [rng.choice(keep) for _ in range(len(keys) - len(keep))]
    megabatches = megabatches[initial_global_step * grad_accum:]
    return [i for chunks in megabatches for batch in chunks for i in batch]


class BucketBatchSampler:
    """This rank's batches of a deterministic epoch schedule (see the module docstring).

    ``bucket_ids``: the bucket of every sample (the index's ``bucket`` column); ``batch_size``: samples
    per rank per step; ``dp_size``/``dp_rank``: data-parallel replicas and this one (all ranks of a
    sequence-parallel group pass the same ``dp_rank``).
    """

    def __init__(self, bucket_ids: np.ndarray, *, batch_size: int, dp_size: int = 1, dp_rank: int = 0, seed: int = 42,
                 group_data: bool = True, leftover: str = "drop", order: str = "osctl",
                 members: BucketMembers | None = None) -> None:
        if batch_size < 1 or dp_size < 1 or not 0 <= dp_rank < dp_size:
            raise ValueError(f"need batch_size >= 1 and 0 <= dp_rank < dp_size, got {batch_size}, {dp_rank}, {dp_size}")
        if leftover not in LEFTOVER_RULES:
            raise ValueError(f"leftover must be one of {', '.join(LEFTOVER_RULES)}, got {leftover!r}")
        if order not in ORDERS:
            raise ValueError(f"order must be one of {', '.join(ORDERS)}, got {order!r}")
        self.bucket_ids = np.asarray(bucket_ids)
        self.batch_size, self.dp_size, self.dp_rank = int(batch_size), int(dp_size), int(dp_rank)
        self.seed, self.group_data, self.leftover, self.order = int(seed), bool(group_data), leftover, order
        self.members = members if members is not None else BucketMembers(self.bucket_ids)
        self._cache: tuple[int, np.ndarray] | None = None
        groups = self.members.counts if group_data else np.array([len(self.bucket_ids)], dtype=np.int64)
        if order == "reference":  # counts of epoch 0 (the reference's random padding varies a little per epoch)
            table = self.schedule(0)
            self.steps_per_epoch = len(table)
            unique = len(np.unique(table))
            self.dropped_per_epoch, self.duplicated_per_epoch = len(self.bucket_ids) - unique, table.size - unique
        else:
            steps, dropped, duplicated = epoch_batches(groups, self.global_batch, leftover)
            self.steps_per_epoch = int(steps.sum())
            self.dropped_per_epoch, self.duplicated_per_epoch = int(dropped.sum()), int(duplicated.sum())

    @property
    def global_batch(self) -> int:
        """Samples per step of the schedule over all data-parallel replicas (``dp_size x batch_size``): the
        layout's ``micro_batch`` (:class:`osctl.parallel.layout.ParallelLayout`); an optimizer step takes
        ``gradient_accumulation_steps`` of them."""
        return self.dp_size * self.batch_size

    @property
    def num_samples(self) -> int:
        """Samples in the index."""
        return len(self.bucket_ids)

    def schedule(self, epoch: int) -> np.ndarray:
        """Epoch ``epoch``'s global schedule: ``steps_per_epoch x global_batch`` sample ids (same on every rank)."""
        if self._cache is not None and self._cache[0] == epoch:
            return self._cache[1]
        if self.order == "reference":
            keys = self.bucket_ids.tolist() if self.group_data else [0] * self.num_samples
            flat = reference_order(keys, self.batch_size, self.dp_size, group_data=self.group_data,
                                   torch_seed=self.seed + epoch, py_rng=random.Random(self.seed * 1_000_003 + epoch))
            table = np.asarray(flat, dtype=np.int64).reshape(-1, self.global_batch)
        else:
            table = self._schedule(epoch)
        self._cache = (epoch, table)
        return table

    def _schedule(self, epoch: int) -> np.ndarray:
        rng = epoch_generator(self.seed, epoch)
        g = self.global_batch
        groups = ([self.members.members(b) for b in range(self.members.num_buckets)] if self.group_data
                  else [np.arange(self.num_samples, dtype=np.int64)])
        rows = []
        for ids in groups:
            if not len(ids):
                continue
            perm = ids[rng.permutation(len(ids))]
            full, rest = divmod(len(perm), g)
            if rest and self.leftover == "pad":
                need = g - rest
                extra = perm[:need] if need <= len(perm) else perm[rng.integers(0, len(perm), need)]
                perm = np.concatenate([perm, extra])
                full += 1
            if full:
                rows.append(perm[:full * g].reshape(full, g))
        if not rows:
            return np.zeros((0, g), dtype=np.int64)
        table = np.concatenate(rows)
        return table[rng.permutation(len(table))]

    def step_samples(self, epoch: int, step: int) -> np.ndarray:
        """Sample ids of this rank's batch at ``(epoch, step)``."""
        start = self.dp_rank * self.batch_size
        return self.schedule(epoch)[step, start:start + self.batch_size]

    def tickets(self, epoch: int, step: int) -> list[Ticket]:
        """This rank's batch at ``(epoch, step)`` as tickets ``(sample, epoch, position)`` for the dataset."""
        base = step * self.global_batch + self.dp_rank * self.batch_size
        return [(int(s), int(epoch), base + j) for j, s in enumerate(self.step_samples(epoch, step))]

    def iter_tickets(self, epoch: int = 0, step: int = 0) -> Iterator[list[Ticket]]:
        """This rank's batches from ``(epoch, step)`` on, epoch after epoch, without end."""
        if self.steps_per_epoch == 0:
            raise ValueError("the schedule has no step: every bucket is smaller than one global batch")
        while True:
            while step < self.steps_per_epoch:
                yield self.tickets(epoch, step)
                step += 1
            epoch, step = epoch + 1, 0

    def describe(self) -> dict[str, Any]:
        """Facts for plans and stats: steps, global batch, leftover rule and its counts."""
        return {"steps_per_epoch": self.steps_per_epoch, "global_batch": self.global_batch,
                "batch_size": self.batch_size, "dp_size": self.dp_size, "group_data": self.group_data,
                "leftover": self.leftover, "order": self.order, "dropped_per_epoch": self.dropped_per_epoch,
                "duplicated_per_epoch": self.duplicated_per_epoch, "samples": self.num_samples}


class ResumableBatches:
    """The DataLoader ``batch_sampler``: this rank's endless ticket batches from a settable start.

    ``start(epoch, step)`` sets where the next ``iter()`` begins (the batch source calls it before
    each iteration, e.g. after restoring a checkpoint).
    """

    def __init__(self, sampler: BucketBatchSampler) -> None:
        self.sampler = sampler
        self.epoch = 0
        self.step = 0

    def start(self, epoch: int, step: int) -> None:
        """Begin the next iteration at ``(epoch, step)``."""
        self.epoch, self.step = int(epoch), int(step)

    def __iter__(self) -> Iterator[list[Ticket]]:
        return self.sampler.iter_tickets(self.epoch, self.step)
