"""The data half of ``osctl train --dry-run``: buckets and batches planned without writing anything.

A dry run reads the run's existing sample index when it is fresh; otherwise it applies the recipe's
rules to the annotations in memory, exactly as training would before writing the index, and plans
the batches over that. No index, no folder, no cache file is written::

    index, settings, note = plan_index(recipe, layout, checked.geometry)
    plan = plan_stream(recipe, index, settings, note, layout=layout, dp_rank=0)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from osctl.data.bucket import BucketSettings
from osctl.data.build import bucket_annotations, check_index
from osctl.geometry import LatentGeometry
from osctl.parallel.layout import ParallelLayout


class BucketedIndex:
    """A sample index held in memory: the parts of :class:`~osctl.data.index.SampleIndex` a plan reads.

    ``path`` is where the index would be written; ``buckets`` and ``bucket_ids()`` are what the index
    file would hold (same order: data.txt order, then file order).
    """

    def __init__(self, result: Any, path: Path) -> None:
        self.path = path
        self.buckets = [{"id": b.id, "key": b.key, "t": b.t, "h": b.h, "w": b.w, "count": b.count,
                         "latent_tokens": b.latent_tokens} for b in result.buckets]
        kept = [outcome.bucket[outcome.reason == 0] for outcome in result.outcomes if outcome is not None]
        self._bucket_ids = np.concatenate(kept).astype(np.int32) if kept else np.zeros(0, dtype=np.int32)

    def __len__(self) -> int:
        return len(self._bucket_ids)

    def bucket_ids(self) -> np.ndarray:
        """The bucket id of every sample (int32)."""
        return self._bucket_ids


def plan_index(recipe: Any, layout: ParallelLayout, geometry: LatentGeometry) -> tuple[Any, Any, str]:
    """``(index, settings, note)`` for a plan: the fresh index on disk (read only), else one bucketed in
    memory from ``data.data``, both for the recipe's latent ``geometry``. Refuses what training would refuse
    (see ``check_index``)."""
    from osctl.data.index import INDEX_FILE, open_index

    settings = BucketSettings.from_recipe(recipe, geometry=geometry, layout=layout)
    check = check_index(recipe, settings)
    if check.rebuild is None:
        index = open_index(check.folder, data_txt=check.data_txt, settings=settings)
        return index, settings, check.note()
    assert check.data_txt is not None  # check_index refuses a rebuild without data.data
    result = bucket_annotations(check.data_txt, settings)
    note = f"{check.note(done=False)}; dry run: not written"
    return BucketedIndex(result, check.folder / INDEX_FILE), settings, note
