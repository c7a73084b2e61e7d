"""Sequence-parallel and data-parallel process groups of a layout (:mod:`osctl.parallel.layout`).

With ``sp_size`` ranks per sequence-parallel (SP) group, the world is cut into consecutive groups
``[0..sp-1], [sp..2sp-1], ...`` (as the reference does, so one group sits on one node when
``sp_size`` divides the GPUs per node). Every rank of an SP group works on the same samples: it holds
a slice of each sample's latent frames and text tokens. The data-parallel (DP) groups are the ranks
with the same position inside their SP group; the DP rank (``rank // sp_size``) picks the data
shard and seeds the random streams, so an SP group reads one batch and draws one set of noise.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from osctl.parallel.layout import ParallelLayout


@dataclass
class ParallelGroups:
    """This rank's sequence-parallel and data-parallel groups (created on every rank, in the same order).

    ``sp_group`` is None when ``sp_size`` is 1; ``dp_group`` is None in a single process and the
    world group when ``sp_size`` is 1.
    """

    world: int
    rank: int
    sp_size: int = 1
    sp_group: Any = field(default=None, init=False)
    dp_group: Any = field(default=None, init=False)

    def __post_init__(self) -> None:
        ParallelLayout(world_size=self.world, sp_size=self.sp_size)  # refuses an sp_size that does not divide
        if self.world == 1:
            return
        import torch.distributed as dist

        if not dist.is_initialized():
            raise RuntimeError("ParallelGroups needs an initialised process group when the world has several ranks.")
        if self.sp_size == 1:
            self.dp_group = dist.group.WORLD
            return
        # every rank creates every group, in the same order (torch.distributed's rule for new_group)
        for start in range(0, self.world, self.sp_size):
            group = dist.new_group(list(range(start, start + self.sp_size)))
            if start <= self.rank < start + self.sp_size:
                self.sp_group = group
        for offset in range(self.sp_size):
            group = dist.new_group(list(range(offset, self.world, self.sp_size)))
            if self.rank % self.sp_size == offset:
                self.dp_group = group

    @property
    def dp_rank(self) -> int:
        """Index of this rank's SP group: which data shard it reads and which random stream it draws."""
        return self.rank // self.sp_size

    @property
    def dp_size(self) -> int:
        """Number of data-parallel replicas (SP groups)."""
        return self.world // self.sp_size

    @property
    def sp_rank(self) -> int:
        """Position inside the SP group: which slice of the time axis and of the text this rank holds."""
        return self.rank % self.sp_size
