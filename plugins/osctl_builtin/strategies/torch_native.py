"""Single-process and DistributedDataParallel training strategies on plain torch.

Mixed precision is autocast (bf16, or fp16 with a gradient scaler) over fp32 master weights, as
accelerate does for the reference. Optimizer, LR scheduler and scaler state are saved with
``torch.save`` and read back through ``osctl.train.checkpoint.restore_file`` (``weights_only=True``: no
code from a file runs, and a damaged or crafted file is an error naming it).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from osctl.train.checkpoint import restore_file
from osctl.utils.dtypes import torch_dtype


class SingleStrategy:
    """One process, one device."""

    name = "single"

    def __init__(self, *, mixed_precision: str = "bf16", device: torch.device | None = None, **_: Any) -> None:
        self.precision = mixed_precision
        self.device = device or torch.device("cpu")
        self.model: Any = None
        self.module: Any = None
        self.optimizer: Any = None
        self.lr_scheduler: Any = None
        use_scaler = mixed_precision == "fp16"
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=use_scaler) if use_scaler else None

    def _wrap(self, module: torch.nn.Module) -> torch.nn.Module:
        return module

    def prepare(self, model: torch.nn.Module, *, optimizer_factory: Any, lr_scheduler_factory: Any) -> None:
        """Move the model to the device (trainable weights in fp32; a frozen base keeps the storage dtype
        ``train.base_dtype`` gave it), wrap it, and build optimizer and schedule."""
        self.module = to_device_fp32(model, self.device)
        self.model = self._wrap(self.module)
        self.optimizer = optimizer_factory(self.module.parameters())
        self.lr_scheduler = lr_scheduler_factory(self.optimizer)

    def autocast(self) -> Any:
        """Autocast to the configured precision (nothing to do for fp32)."""
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch_dtype(self.precision))

    def no_sync(self, sync: bool) -> Any:
        """Nothing to synchronise in one process."""
        return contextlib.nullcontext()

    def backward(self, loss: torch.Tensor) -> None:
        """Back-propagate, scaled under fp16."""
        (self.scaler.scale(loss) if self.scaler else loss).backward()

    def clip_grad_norm(self, max_norm: float | None) -> float | None:
        """Clip the global gradient norm (after unscaling under fp16)."""
        if max_norm is None:
            return None
        if self.scaler:
            self.scaler.unscale_(self.optimizer)
        return float(torch.nn.utils.clip_grad_norm_(self.module.parameters(), max_norm))

    def optimizer_step(self) -> None:
        """Optimizer step, LR step and zero grad."""
        if self.scaler:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.lr_scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)

    def local_parameters(self) -> list[tuple[str, torch.Tensor]]:
        """Every trainable parameter (this rank holds them all)."""
        return [(n, p) for n, p in self.module.named_parameters() if p.requires_grad]

    def full_state_dict(self, local: list[tuple[str, torch.Tensor]] | None = None) -> dict[str, torch.Tensor] | None:
        """The model's state dict with ``local`` values substituted (e.g. EMA weights), on rank 0."""
        if dist.is_initialized() and dist.get_rank() != 0:
            return None
        state = {k: v.detach().cpu().clone() for k, v in self.module.state_dict().items()}
        for name, value in local or []:
            state[name] = value.detach().cpu().to(state[name].dtype).clone()
        return state

    def trainable_state_dict(self, local: list[tuple[str, torch.Tensor]] | None = None) -> dict[str, torch.Tensor] | None:
        """The trainable parameters alone (e.g. a LoRA adapter), ``local`` values substituted, on rank 0."""
        if dist.is_initialized() and dist.get_rank() != 0:
            return None
        replaced = dict(local or [])
        return {n: replaced.get(n, p).detach().cpu().float().clone() for n, p in self.module.named_parameters()
                if p.requires_grad}

    def save_state(self, folder: Path) -> None:
        """Optimizer, LR scheduler and scaler state (rank 0 writes; all ranks hold the same)."""
        if dist.is_initialized() and dist.get_rank() != 0:
            return
        folder.mkdir(parents=True, exist_ok=True)
        torch.save(self.optimizer.state_dict(), folder / "optimizer.pt")
        torch.save(self.lr_scheduler.state_dict(), folder / "lr_scheduler.pt")
        if self.scaler:
            torch.save(self.scaler.state_dict(), folder / "scaler.pt")

    def load_state(self, folder: Path) -> None:
        """Restore what ``save_state`` wrote (never unpickling code; a damaged file is named)."""
        restore_file(folder / "optimizer.pt", self.optimizer.load_state_dict, map_location=self.device)
        restore_file(folder / "lr_scheduler.pt", self.lr_scheduler.load_state_dict)
        if self.scaler and (folder / "scaler.pt").exists():
            restore_file(folder / "scaler.pt", self.scaler.load_state_dict)


def to_device_fp32(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``model`` on ``device`` with fp32 trainable parameters; frozen parameters keep their dtype (a LoRA run's
    base stored in bf16/fp8, see ``osctl.train.frozen_base``), everything else becomes fp32 as before.

    Blocks offloaded before this (``train.offload``, ``osctl.train.offload``) hold empty frozen placeholders on
    ``device`` already, each in its host copy's dtype: nothing of their weights moves, and neither branch changes a
    placeholder's dtype (the float32 one runs only when every frozen parameter is float32 already)."""
    if all(p.requires_grad or p.dtype == torch.float32 for p in model.parameters()):
        return model.to(device, torch.float32)
    model = model.to(device)
    for param in model.parameters():
        if param.requires_grad and param.dtype != torch.float32:
            param.data = param.data.float()
    return model


class DDPStrategy(SingleStrategy):
    """Data parallel over all ranks with torch's DistributedDataParallel."""

    name = "ddp"

    def _wrap(self, module: torch.nn.Module) -> torch.nn.Module:
        from torch.nn.parallel import DistributedDataParallel

        if not dist.is_initialized() or dist.get_world_size() == 1:
            return module
        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(module, device_ids=ids, broadcast_buffers=False)

    def no_sync(self, sync: bool) -> Any:
        """Skip the gradient all-reduce on accumulation micro-steps."""
        if sync or not hasattr(self.model, "no_sync"):
            return contextlib.nullcontext()
        return self.model.no_sync()
