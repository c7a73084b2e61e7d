"""Where each rank of a run is, so a rank that stops answering is named instead of a backend's timeout dump.

When one rank hangs (a stuck decode, a dead NFS mount) or dies, the others wait in their next
collective until ``parallel.timeout_s`` and then fail with a gloo/NCCL message (``[.../pair.cc:553]
Connection closed by peer`` or ``Timed out waiting 600000ms``) that names neither the rank nor the
step. So each rank records its position — ``(step, point, micro-step)`` — in the process group's
key-value store (the launcher's, which outlives the ranks) before each collective of the training
loop; a rank whose collective fails reads every rank's position and names the ranks behind it::

    rank 1 did not reach step 12's loss average within parallel.timeout_s (600 s) (rank 1 last seen
    at step 12's backward and optimizer step); it is stuck or died — its own output says which.

Cost: one small store write per point (a few per optimizer step). Without a store (one process, or
a backend without one) nothing is recorded and errors pass through unchanged.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

from osctl.errors import PeerFailed

POINTS: tuple[str, ...] = ("backward and optimizer step", "loss average", "logging", "checkpoint", "validation", "stop check",
                           "final checkpoint")
"""The loop's collectives in the order a step reaches them (the first: the micro-steps' gradient all-reduce and
the strategy's optimizer-step collectives)."""

_KEY = "osctl/progress/{rank}"
_BACKEND_WORDS = ("gloo", "nccl", "timed out", "timeout", "connection closed", "connection reset", "broken pipe")

Position = tuple[int, int, int]


def _default_store() -> Any:
    """The default process group's store, or None (no group, or an API this torch does not have)."""
    try:
        import torch.distributed as dist

        if not dist.is_initialized() or dist.get_world_size() == 1:
            return None
        return dist.distributed_c10d._get_default_store()
    except Exception:  # a private API: without it the loop just does not name laggards
        return None


def is_collective_failure(exc: BaseException) -> bool:
    """True for the errors a collective raises when a peer hangs or dies (gloo's RuntimeError, ``DistError``)."""
    try:
        from torch.distributed import DistError

        if isinstance(exc, DistError):
            return True
    except ImportError:  # pragma: no cover - every supported torch has it
        pass
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and any(word in text for word in _BACKEND_WORDS)


class RankProgress:
    """This rank's position in the training loop, shared through the store; :meth:`explain` names laggards."""

    def __init__(self, rank: int, world_size: int, timeout_s: float, store: Any = None) -> None:
        self.rank, self.world_size, self.timeout_s = rank, world_size, float(timeout_s)
        self.store = store if store is not None else _default_store()
        self.position: Position | None = None
        self._since = time.monotonic()

    def mark(self, step: int, point: str, micro: int = 0) -> None:
        """Record that this rank is about to enter ``point``'s collective(s) of optimizer step ``step``."""
        self.position = (int(step), POINTS.index(point), int(micro))
        self._since = time.monotonic()
        if self.store is None:
            return
        try:
            self.store.set(_KEY.format(rank=self.rank), " ".join(map(str, self.position)))
        except Exception:  # the store is gone (the launcher died): stop recording, the loop goes on
            self.store = None

    def positions(self) -> dict[int, Position | None]:
        """Every other rank's last recorded position (None: it never recorded one)."""
        out: dict[int, Position | None] = {}
        for rank in range(self.world_size):
            if rank == self.rank:
                continue
            key = _KEY.format(rank=rank)
            value = None
            with contextlib.suppress(Exception):
                if self.store.check([key]):
                    step, point, micro = (int(x) for x in self.store.get(key).decode().split())
                    value = (step, point, micro)
            out[rank] = value
        return out

    def explain(self, exc: BaseException) -> PeerFailed | None:
        """A one-sentence ``PeerFailed`` naming the ranks behind this one when ``exc`` is a collective failure,
        else None (the error is this rank's own, or nobody is behind: let it through unchanged)."""
        if self.store is None or self.position is None or not is_collective_failure(exc):
            return None
        behind = {rank: pos for rank, pos in self.positions().items() if pos is None or pos < self.position}
        if not behind:
            return None
        waited = time.monotonic() - self._since
        names = (f"rank {next(iter(behind))}" if len(behind) == 1 else
                 "ranks " + ", ".join(str(rank) for rank in behind))
        target = _where(self.position)
        last = "; ".join(f"rank {rank} last seen at {_where(pos)}" if pos else f"rank {rank} never reached a step"
                         for rank, pos in behind.items())
        if waited >= 0.9 * self.timeout_s:
            return PeerFailed(f"{names} did not reach {target} within parallel.timeout_s ({self.timeout_s:g} s) "
                              f"({last}); it is stuck or died — its own output says which.")
        return PeerFailed(f"{names} left the run before {target} ({last}); its process failed or was stopped — "
                          "its own output says why.")


def _where(position: Position) -> str:
    step, point, micro = position
    return f"step {step}'s {POINTS[point]}" + (f" (micro-step {micro + 1})" if micro else "")
