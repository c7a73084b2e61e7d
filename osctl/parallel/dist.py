"""Process-group set-up and tear-down for every multi-process command (train, sample).

Backend: NCCL when CUDA is available, gloo otherwise (so everything is testable on CPU).
Collectives get a timeout, so a stuck or dead rank makes the others fail instead of hanging.
"""

from __future__ import annotations

import datetime
import os
import sys
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

LAUNCHER_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits: global rank, world size, local rank and its device."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """True on rank 0, the only rank that prints progress and writes shared files."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """True when more than one process takes part."""
        return self.world_size > 1


def under_launcher() -> bool:
    """True when started by torchrun, the deepspeed launcher or SLURM with a process group to join."""
    if all(v in os.environ for v in ("RANK", "WORLD_SIZE")):
        return True
    return "SLURM_PROCID" in os.environ and "SLURM_NTASKS" in os.environ and int(os.environ["SLURM_NTASKS"]) > 1


def _env_from_slurm() -> None:
    if "RANK" not in os.environ and "SLURM_PROCID" in os.environ:
        os.environ.setdefault("RANK", os.environ["SLURM_PROCID"])
        os.environ.setdefault("WORLD_SIZE", os.environ["SLURM_NTASKS"])
        os.environ.setdefault("LOCAL_RANK", os.environ.get("SLURM_LOCALID", "0"))
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", "29500")


def init_distributed(timeout_s: float = 600.0) -> DistInfo:
    """Join the process group described by the launcher's environment (or run as a single process).

    A process started by a launcher first arranges to die with it (:func:`osctl.parallel.launch.die_with_launcher`).
    """
    if under_launcher():
        from osctl.parallel.launch import die_with_launcher

        die_with_launcher()
    _env_from_slurm()
    use_cuda = torch.cuda.is_available()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(
            backend="nccl" if use_cuda else "gloo",
            timeout=datetime.timedelta(seconds=timeout_s),
            device_id=device if use_cuda else None,
        )
    rank = dist.get_rank() if dist.is_initialized() else 0
    world = dist.get_world_size() if dist.is_initialized() else 1
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank, device=device)


def ensure_process_group(timeout_s: float = 600.0) -> None:
    """Start a one-process group when none exists: FSDP and DeepSpeed always need one, even alone.

    The group lives in an in-memory store, so no address or port is needed.
    """
    if dist.is_initialized():
        return
    use_cuda = torch.cuda.is_available()
    # device_id binds NCCL to this process's GPU (set by init_distributed); without it every barrier
    # warns and guesses the device
    dist.init_process_group(backend="nccl" if use_cuda else "gloo", store=dist.HashStore(), rank=0, world_size=1,
                            timeout=datetime.timedelta(seconds=timeout_s),
                            device_id=torch.device("cuda", torch.cuda.current_device()) if use_cuda else None)


def barrier() -> None:
    """Wait for every rank (no-op in a single process)."""
    if dist.is_initialized():
        dist.barrier()


def broadcast_object(value: Any) -> Any:
    """Rank 0's ``value`` on every rank (``value`` itself in a single process); every rank must call it."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_reduce_mean(value: float, device: torch.device) -> float:
    """Mean of a Python float over all ranks (the value itself in a single process)."""
    if not dist.is_initialized():
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return float(tensor.item()) / dist.get_world_size()


def shutdown(exit_code: int | None = None) -> None:
    """Leave the process group cleanly; with ``exit_code`` also end the process right away.

    gloo can abort at interpreter exit after the work is done; a barrier, destroying the group,
    flushing and ``os._exit`` avoids that.
    """
    if dist.is_initialized():
        try:
            dist.barrier()
        finally:
            dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    if exit_code is not None:
        os._exit(exit_code)
