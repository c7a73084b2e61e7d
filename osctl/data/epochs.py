"""How one epoch cuts groups of samples into batches: the leftover rule, counted once.

A group is a bucket under ``data.group_data``, else all samples. Training's sampler
(:class:`osctl.data.stream.sampler.BucketBatchSampler`) and ``osctl data bucket``
(:class:`osctl.data.bucket.BucketResult`) both count with :func:`epoch_batches`, so the batches per
epoch ``data bucket`` prints are the steps training runs; :func:`check_epoch_batches` refuses an
epoch without any batch, before the index is written and again before training's first step.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from osctl.errors import DataError
from osctl.parallel.layout import ParallelLayout

LEFTOVER_RULES: tuple[str, ...] = ("drop", "pad")
"""``drop``: the samples that do not fill a batch wait for another epoch; ``pad``: duplicates fill the last batch."""


def epoch_batches(counts: np.ndarray | Sequence[int], batch: int, leftover: str = "drop") -> tuple[np.ndarray, np.ndarray,
                                                                                                  np.ndarray]:
    """Per group of ``counts`` samples (a bucket, or all samples without ``group_data``): the batches of
    ``batch`` samples one epoch cuts from it, the samples it drops, and the duplicates that fill its last
    batch (the leftover rule: :mod:`osctl.data.stream.sampler`). The one place this arithmetic lives:
    training's sampler and ``osctl data bucket`` both use it, so they agree.
    """
    if leftover not in LEFTOVER_RULES:
        raise ValueError(f"leftover must be one of {', '.join(LEFTOVER_RULES)}, got {leftover!r}")
    counts = np.asarray(counts, dtype=np.int64)
    rest = counts % batch
    if leftover == "drop":
        return counts // batch, rest, np.zeros_like(counts)
    return -(-counts // batch), np.zeros_like(counts), np.where(rest > 0, batch - rest, 0)


def check_epoch_batches(micro_batches: int, layout: ParallelLayout, bucket_counts: list[int], *,
                        group_data: bool) -> None:
    """Refuse (``DataError``) an index whose epoch holds no batch for ``layout``: training could not run one
    step. ``osctl data bucket`` checks before writing the index, training before its first step."""
    if micro_batches > 0:
        return
    kept = sum(bucket_counts)
    where = (f"the largest of its {len(bucket_counts)} buckets holds {max(bucket_counts)} (data.group_data keeps "
             "each batch in one bucket)" if group_data and len(bucket_counts) > 1 else f"{kept} sample(s) are kept")
    raise DataError(
        f"an epoch has 0 batches: one micro-step needs {layout.micro_batch} samples ({layout.stream_batch} per "
        f"replica x {layout.dp_size} data-parallel replica(s); global batch {layout.global_batch}) but {where}; "
        "lower train.train_batch_size (parallel.train_sp_batch_size with sequence parallelism), use fewer "
        "processes, add data, or keep partial batches with data.leftover: pad.",
        hint="data.min_bucket_batches drops buckets with fewer samples than that many global batches (0 keeps all).")
