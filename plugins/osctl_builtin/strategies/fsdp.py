"""Fully sharded data parallel training with torch FSDP2 (``fully_shard``).

Each block class the model lists in ``_no_split_modules`` (diffusers' convention; the OSP
transformer block) and then the root are sharded over all ranks. Parameters stay fp32 shards
(DTensors); ``MixedPrecisionPolicy`` gathers them in ``train.mixed_precision`` for compute and
reduces gradients in fp32. The optimizer works on the local shards.

State: ``training_state/dcp/`` is a ``torch.distributed.checkpoint`` of model, optimizer and EMA
shards (DCP re-shards on load, so a run can resume on another world size), plus
``lr_scheduler.pt``. Both are read back without running code from them: DCP through
``osctl.ckpt.dcp_reader`` (restricted metadata unpickler, weights-only items), the scheduler through
``osctl.train.checkpoint.restore_file``. The EMA keeps fp32 copies of the local shards only; exporting it (``model_ema/``)
gathers them the same way as the weights.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from osctl.errors import ConfigError
from osctl.parallel import dist as pdist
from osctl.train.activations import block_modules
from osctl.train.checkpoint import restore_file
from osctl_builtin.strategies.torch_native import SingleStrategy

_PARAM_DTYPES = {"bf16": torch.bfloat16, "fp32": None}


class FSDPStrategy(SingleStrategy):
    """FSDP2 over every rank; parameters, gradients, optimizer state and EMA are sharded."""

    name = "fsdp"
    shards_parameters = True
    supports_resharding = True
    saves_ema = True

    def __init__(self, *, mixed_precision: str = "bf16", device: torch.device | None = None,
                 parallel: Any = None, **_: Any) -> None:
        if mixed_precision not in _PARAM_DTYPES:
            raise ConfigError(
                f"train.mixed_precision {mixed_precision} is not supported by the fsdp strategy (fp16 needs a "
                "sharded loss scaler); use bf16 or fp32, or the ddp or deepspeed strategy."
            )
        super().__init__(mixed_precision=mixed_precision, device=device)
        pdist.ensure_process_group(getattr(parallel, "timeout_s", 600.0))
        self.ema: Any = None

    def prepare(self, model: torch.nn.Module, *, optimizer_factory: Any, lr_scheduler_factory: Any) -> None:
        """Shard every block and the root, then build the optimizer over the shards.

        The model comes in on the CPU and is sharded there: ``fully_shard`` moves each block's parameters to the
        process's device as it shards that block, so the device holds one whole block at a time besides the
        shards, never the whole model (which a 14B model in float32, 56 GB, would not fit in)."""
        self._shard(model)
        self._build_optimizer(model, optimizer_factory, lr_scheduler_factory)

    def prepare_empty(self, model: torch.nn.Module, fill: Callable[[torch.nn.Module], Any], *,
                      optimizer_factory: Any, lr_scheduler_factory: Any) -> None:
        """Like :meth:`prepare` for a model whose parameters are on the meta device (buffers real): shard it there
        (parameters become meta DTensors), give this rank's shards memory on the device, ``fill`` them from the
        weight files (:func:`osctl.train.lean_load.fill_shards`), then build the optimizer over them. No process
        ever holds the whole model, in host memory or on the device.

        ``to_empty`` replaces every tensor, buffers too: the buffers (computed when the model was built, moved to
        the device by ``fully_shard``) are put back as they were, and ``fill`` overwrites the persistent ones.
        Parameters that came in with values (a LoRA adapter added to the empty base) keep them: their shards are
        copied into the new tensors."""
        self._shard(model)
        buffers = [(module, name, buffer) for module in model.modules()
                   for name, buffer in module._buffers.items() if buffer is not None]
        real = {name: param.detach().clone() for name, param in model.named_parameters() if not param.is_meta}
        model.to_empty(device=self.device)
        for module, name, buffer in buffers:
            module._buffers[name] = buffer
        with torch.no_grad():
            for name, param in model.named_parameters():
                if name in real:
                    _local(param).copy_(_local(real[name]))
        fill(model)
        self._build_optimizer(model, optimizer_factory, lr_scheduler_factory)

    def _shard(self, model: torch.nn.Module) -> None:
        """``fully_shard`` each block (``_no_split_modules``), then the root, parameters in float32."""
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        model.to(torch.float32)
        policy = MixedPrecisionPolicy(param_dtype=_PARAM_DTYPES[self.precision], reduce_dtype=torch.float32)
        for module in block_modules(model):
            fully_shard(module, mp_policy=policy)
        fully_shard(model, mp_policy=policy)

    def _build_optimizer(self, model: torch.nn.Module, optimizer_factory: Any, lr_scheduler_factory: Any) -> None:
        self.module = self.model = model
        self.optimizer = optimizer_factory(model.parameters())
        self.lr_scheduler = lr_scheduler_factory(self.optimizer)

    def autocast(self) -> Any:
        """Nothing to do: FSDP's mixed-precision policy casts parameters and inputs for compute."""
        return contextlib.nullcontext()

    @contextlib.contextmanager
    def no_sync(self, sync: bool) -> Iterator[None]:
        """Reduce-scatter gradients only on the last micro-step (earlier ones accumulate unsharded)."""
        self.model.set_requires_gradient_sync(sync)
        yield

    def clip_grad_norm(self, max_norm: float | None) -> float | None:
        """Clip the norm of the full (sharded) gradient; returns it before clipping."""
        if max_norm is None:
            return None
        norm = torch.nn.utils.clip_grad_norm_(self.module.parameters(), max_norm)
        return float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)

    def local_parameters(self) -> list[tuple[str, torch.Tensor]]:
        """This rank's shard of every trainable parameter."""
        return [(n, p.to_local()) for n, p in self.module.named_parameters() if p.requires_grad]

    def attach_ema(self, ema: Any) -> None:
        """Keep the EMA shards in the DCP checkpoint, so they re-shard with the weights on resume."""
        self.ema = ema

    def full_state_dict(self, local: list[tuple[str, torch.Tensor]] | None = None) -> dict[str, torch.Tensor] | None:
        """Gather the full state dict to rank 0 (every rank takes part); ``local`` replaces parameter shards."""
        replaced = dict(local or [])
        rank0 = dist.get_rank() == 0
        state: dict[str, torch.Tensor] = {}
        for name, value in self.module.state_dict().items():
            if hasattr(value, "full_tensor"):
                if name in replaced:
                    value = _like(value, replaced[name])
                value = value.full_tensor()
            if rank0:
                state[name] = value.detach().cpu().clone()
        return state if rank0 else None

    def trainable_state_dict(self, local: list[tuple[str, torch.Tensor]] | None = None) -> dict[str, torch.Tensor] | None:
        """The full trainable parameters alone (a LoRA adapter), gathered to rank 0 (every rank takes part)."""
        replaced = dict(local or [])
        rank0 = dist.get_rank() == 0
        state: dict[str, torch.Tensor] = {}
        for name, param in self.module.named_parameters():
            if not param.requires_grad:
                continue
            value = _like(param, replaced[name]) if name in replaced else param
            value = value.full_tensor() if hasattr(value, "full_tensor") else value
            if rank0:
                state[name] = value.detach().cpu().float().clone()
        return state if rank0 else None

    def _options(self) -> Any:
        """DCP state options: a model with frozen parameters (a LoRA base, loaded from its own weights on every
        start) keeps only the trainable ones in the checkpoint."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions

        frozen = any(not p.requires_grad for p in self.module.parameters())
        return StateDictOptions(ignore_frozen_params=frozen, strict=not frozen)

    def _dcp_state(self) -> dict[str, Any]:
        from torch.distributed.checkpoint.state_dict import get_state_dict

        model_state, optim_state = get_state_dict(self.module, self.optimizer, options=self._options())
        state: dict[str, Any] = {"model": model_state, "optimizer": optim_state}
        if self.ema is not None:
            trainable = [(n, p) for n, p in self.module.named_parameters() if p.requires_grad]
            state["ema"] = {n: _like(p, shadow) for (n, p), shadow in zip(trainable, self.ema.shadow, strict=True)}
            state["ema_step"] = torch.tensor(self.ema.optimization_step)
        return state

    def save_state(self, folder: Path) -> None:
        """Sharded model, optimizer and EMA through DCP (all ranks); LR scheduler from rank 0."""
        import torch.distributed.checkpoint as dcp

        dcp.save(self._dcp_state(), checkpoint_id=folder / "dcp")
        if dist.get_rank() == 0:
            torch.save(self.lr_scheduler.state_dict(), folder / "lr_scheduler.pt")

    def load_state(self, folder: Path) -> None:
        """Restore model, optimizer and EMA shards (re-sharded to this world size) and the LR scheduler."""
        from torch.distributed.checkpoint.state_dict import set_state_dict

        from osctl.ckpt.dcp_reader import load_dcp_state

        if not (folder / "dcp").is_dir():
            raise ConfigError(f"{folder.parent.name} has no training_state/dcp/ (it was not saved by the fsdp "
                              "strategy); resume with the strategy that wrote it.")
        state = self._dcp_state()
        load_dcp_state(state, folder / "dcp")
        set_state_dict(self.module, self.optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"],
                       options=self._options())
        if self.ema is not None:
            for shadow, loaded in zip(self.ema.shadow, state["ema"].values(), strict=True):
                shadow.copy_(loaded.to_local())
            self.ema.optimization_step = int(state["ema_step"])
        restore_file(folder / "lr_scheduler.pt", self.lr_scheduler.load_state_dict)


def _like(param: Any, local: torch.Tensor) -> Any:
    """A DTensor laid out like ``param`` whose local shard is ``local``."""
    from torch.distributed.tensor import DTensor

    local = local.to(param.to_local().device, param.dtype)  # an offloaded EMA lives on the CPU
    return DTensor.from_local(local, param.device_mesh, param.placements, shape=param.shape, stride=param.stride(),
                              run_check=False)


def _local(tensor: torch.Tensor) -> torch.Tensor:
    """This rank's part of ``tensor``: a DTensor's local shard, a plain tensor itself."""
    to_local = getattr(tensor, "to_local", None)
    return to_local() if callable(to_local) else tensor
