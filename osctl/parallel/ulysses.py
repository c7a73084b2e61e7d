"""Ulysses-style sequence-parallel primitives: autograd-aware all-to-all, split and gather.

In Ulysses sequence parallelism every rank of a group holds a contiguous slice of the token sequence.
Around attention, one all-to-all turns "my tokens, all heads" into "all tokens, my heads" (so plain
attention runs on the full sequence) and a second one turns it back. These helpers are generic: they
work on any dimension of any tensor and know nothing about models.

Conventions:

- ``group`` is a ``torch.distributed`` process group, or ``None`` for "no parallelism": every helper
  is then the identity (unlike ``torch.distributed``, where ``None`` means the world group).
- ``sizes`` arguments list one size per rank, in group-rank order; they may be uneven. When they are
  omitted the split is even, and a size that does not divide by the group size is an error.
- Everything is built on ``torch.distributed.all_to_all_single`` on flat buffers, which gloo (CPU)
  and NCCL (GPU) both support, uneven splits included.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist

__all__ = [
    "all_to_all",
    "gather_along_dim",
    "gather_sizes",
    "group_rank",
    "group_size",
    "shard_sizes",
    "split_along_dim",
]


def group_size(group: Any) -> int:
    """Number of ranks in ``group`` (1 when ``group`` is None or torch.distributed is not initialised)."""
    if group is None or not dist.is_available() or not dist.is_initialized():
        return 1
    return dist.get_world_size(group)


def group_rank(group: Any) -> int:
    """This process's rank inside ``group`` (0 when there is no group)."""
    if group is None or not dist.is_available() or not dist.is_initialized():
        return 0
    return dist.get_rank(group)


def shard_sizes(total: int, world: int) -> list[int]:
    """A contiguous near-even partition of ``total`` items over ``world`` ranks (first ranks get the extra).

    This is the partition ``torch.tensor_split`` makes; use it to decide which slice each rank holds.
    """
    if world < 1:
        raise ValueError(f"world={world} must be at least 1; pass the size of the process group.")
    base, extra = divmod(total, world)
    return [base + (1 if r < extra else 0) for r in range(world)]


def _even_sizes(size: int, world: int, what: str) -> list[int]:
    """``world`` equal sizes summing to ``size``; a size that does not divide is a clear error."""
    if size % world:
        raise ValueError(
            f"{what} has size {size}, which does not divide evenly over a group of {world} ranks; "
            f"use a size that is a multiple of {world} or pass explicit per-rank sizes."
        )
    return [size // world] * world


def _check_sizes(sizes: Sequence[int], world: int, what: str) -> list[int]:
    """Validate an explicit per-rank size list."""
    sizes = [int(s) for s in sizes]
    if len(sizes) != world:
        raise ValueError(f"{what}: got {len(sizes)} per-rank sizes for a group of {world} ranks; pass one per rank.")
    if any(s < 0 for s in sizes):
        raise ValueError(f"{what}: per-rank sizes {sizes} contain a negative value; sizes count items.")
    return sizes


def gather_sizes(local_size: int, group: Any, device: torch.device | str | None = None) -> list[int]:
    """Every rank's ``local_size`` in group-rank order (one small all-gather).

    ``device`` must suit the backend (CPU for gloo, the rank's GPU for NCCL).
    """
    world = group_size(group)
    if world == 1:
        return [int(local_size)]
    mine = torch.tensor([int(local_size)], dtype=torch.int64, device=device)
    out = [torch.zeros_like(mine) for _ in range(world)]
    dist.all_gather(out, mine, group=group)
    return [int(t.item()) for t in out]


def _all_to_all_raw(
    x: torch.Tensor,
    scatter_dim: int,
    gather_dim: int,
    group: Any,
    scatter_sizes: list[int],
    gather_sizes_: list[int],
) -> torch.Tensor:
    """The all-to-all itself (no autograd): chunk ``j`` of ``scatter_dim`` goes to rank ``j``; the
    pieces received are concatenated along ``gather_dim`` in rank order."""
    world = group_size(group)
    rank = group_rank(group)
    chunks = torch.split(x, scatter_sizes, dim=scatter_dim)
    send = torch.cat([c.contiguous().reshape(-1) for c in chunks]) if chunks else x.new_empty(0)
    send_counts = [c.numel() for c in chunks]
    # what rank j sends here: our scatter chunk, with rank j's extent along gather_dim
    recv_shapes = []
    for j in range(world):
        shape = list(x.shape)
        shape[scatter_dim] = scatter_sizes[rank]
        shape[gather_dim] = gather_sizes_[j]
        recv_shapes.append(shape)
    recv_counts = [int(torch.Size(s).numel()) for s in recv_shapes]
    recv = x.new_empty(sum(recv_counts))
    dist.all_to_all_single(recv, send, output_split_sizes=recv_counts, input_split_sizes=send_counts, group=group)
    pieces = [p.view(s) for p, s in zip(torch.split(recv, recv_counts), recv_shapes, strict=True)]
    return torch.cat(pieces, dim=gather_dim)


class _AllToAll(torch.autograd.Function):
    """Autograd wrapper: the backward of an all-to-all is the all-to-all with the roles swapped."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, scatter_dim: int, gather_dim: int, group: Any,
                scatter_sizes: list[int], gather_sizes_: list[int]) -> torch.Tensor:
        ctx.args = (scatter_dim, gather_dim, group, scatter_sizes, gather_sizes_)
        return _all_to_all_raw(x, scatter_dim, gather_dim, group, scatter_sizes, gather_sizes_)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        scatter_dim, gather_dim, group, scatter_sizes, gather_sizes_ = ctx.args
        grad_in = _all_to_all_raw(grad.contiguous(), gather_dim, scatter_dim, group, gather_sizes_, scatter_sizes)
        return grad_in, None, None, None, None, None


def all_to_all(
    x: torch.Tensor,
    scatter_dim: int,
    gather_dim: int,
    group: Any,
    *,
    scatter_sizes: Sequence[int] | None = None,
    gather_sizes: Sequence[int] | None = None,
) -> torch.Tensor:
    """Split ``x`` along ``scatter_dim`` over the group and concatenate what arrives along ``gather_dim``.

    Rank ``j`` receives chunk ``j`` of every rank's ``scatter_dim``; chunks are stacked along
    ``gather_dim`` in rank order. With Q/K/V laid out ``B x S_local x H x D``,
    ``all_to_all(q, scatter_dim=2, gather_dim=1, group)`` gives ``B x S x H/sp x D`` ("gather sequence,
    scatter heads"); swapping the two dims undoes it. ``scatter_sizes`` (identical on every rank) and
    ``gather_sizes`` (every rank's local extent of ``gather_dim``) allow uneven splits; the gradient
    flows back through the inverse all-to-all.
    """
    world = group_size(group)
    if world == 1:
        return x
    nd = x.dim()
    scatter_dim, gather_dim = scatter_dim % nd, gather_dim % nd
    if scatter_dim == gather_dim:
        raise ValueError(f"scatter_dim and gather_dim are both {scatter_dim}; they must be different dimensions.")
    if scatter_sizes is None:
        s_sizes = _even_sizes(x.shape[scatter_dim], world, f"dimension {scatter_dim} (scattered)")
    else:
        s_sizes = _check_sizes(scatter_sizes, world, "scatter_sizes")
        if sum(s_sizes) != x.shape[scatter_dim]:
            raise ValueError(
                f"scatter_sizes {s_sizes} sum to {sum(s_sizes)} but dimension {scatter_dim} has size "
                f"{x.shape[scatter_dim]}; pass sizes that add up to the tensor's extent."
            )
    if gather_sizes is None:
        g_sizes = [x.shape[gather_dim]] * world
    else:
        g_sizes = _check_sizes(gather_sizes, world, "gather_sizes")
        mine = g_sizes[group_rank(group)]
        if mine != x.shape[gather_dim]:
            raise ValueError(
                f"gather_sizes says this rank holds {mine} items along dimension {gather_dim} but the "
                f"tensor has {x.shape[gather_dim]}; pass every rank's actual local size."
            )
    return _AllToAll.apply(x, scatter_dim, gather_dim, group, s_sizes, g_sizes)


class _Split(torch.autograd.Function):
    """Keep this rank's slice; the gradient is gathered back to the full extent."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, dim: int, group: Any, sizes: list[int]) -> torch.Tensor:
        ctx.args = (dim, group, sizes)
        rank = group_rank(group)
        return x.narrow(dim, sum(sizes[:rank]), sizes[rank]).contiguous()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        dim, group, sizes = ctx.args
        world = len(sizes)
        stacked = grad.contiguous().unsqueeze(0).expand(world, *grad.shape)
        full = _all_to_all_raw(stacked, 0, dim + 1, group, [1] * world, sizes).squeeze(0)
        return full, None, None, None


def split_along_dim(x: torch.Tensor, dim: int, group: Any, sizes: Sequence[int] | None = None) -> torch.Tensor:
    """This rank's contiguous slice of ``x`` (replicated on every rank) along ``dim``.

    Even split unless ``sizes`` gives each rank's extent. Backward all-gathers the gradient, which is
    right when each rank's slice feeds a different part of the loss.
    """
    world = group_size(group)
    if world == 1:
        return x
    dim = dim % x.dim()
    if sizes is None:
        sz = _even_sizes(x.shape[dim], world, f"dimension {dim} (split)")
    else:
        sz = _check_sizes(sizes, world, "sizes")
        if sum(sz) != x.shape[dim]:
            raise ValueError(
                f"sizes {sz} sum to {sum(sz)} but dimension {dim} has size {x.shape[dim]}; "
                "pass sizes that add up to the tensor's extent."
            )
    return _Split.apply(x, dim, group, sz)


def gather_along_dim(x: torch.Tensor, dim: int, group: Any, sizes: Sequence[int] | None = None) -> torch.Tensor:
    """Concatenate every rank's ``x`` along ``dim`` in rank order (an all-gather), autograd-aware.

    ``sizes`` lists every rank's local extent along ``dim`` (default: all equal to this rank's).
    Backward is a reduce-scatter: each rank gets the sum over ranks of the gradient of its own slice,
    which is right when every rank uses the gathered tensor for its own part of the loss.
    """
    world = group_size(group)
    if world == 1:
        return x
    dim = dim % x.dim()
    stacked = x.unsqueeze(0).expand(world, *x.shape)
    out = all_to_all(stacked, 0, dim + 1, group, scatter_sizes=[1] * world, gather_sizes=sizes)
    return out.squeeze(0)
