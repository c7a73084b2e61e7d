"""DeepSpeed ZeRO stage 2 and 3 training, configured from the recipe.

The engine config starts from the reference's ``zero2.json`` / ``zero3.json`` (overlapping
communication, contiguous gradients, 5e8 buckets, stage-3 prefetch and 16-bit gathering on save,
fp32 gradient communication), takes precision, clipping, micro-batch and accumulation from
``train``, ZeRO stage and CPU offload from ``parallel``, and finally merges ``parallel.deepspeed_config``.

How the loop maps onto the engine. The loop runs ``accumulation`` micro-steps (each a
``backward`` of the loss already divided by ``accumulation``) and then ``clip_grad_norm`` and
``optimizer_step``. DeepSpeed's ``gradient_accumulation_steps`` equals the loop's, so its boundary
is the loop's last micro-step: ``backward`` calls ``engine.backward`` without DeepSpeed's own
division and, on the earlier micro-steps, ``engine.step()`` (which only counts them). DeepSpeed
clips inside its boundary step, so ``clip_grad_norm`` runs that step and returns the engine's
gradient norm; ``optimizer_step`` then has nothing left to do. The LR scheduler is handed to the
engine, which steps it with the optimizer.

EMA: under ZeRO-2 every rank holds all parameters and the EMA follows them (saved by rank 0).
Under ZeRO-3 each rank keeps an fp32 EMA of its own partition (``param.ds_tensor``, the engine's
copy of the weights in compute precision), saved per rank; ``model_ema/`` is written by gathering
the partitions exactly as the engine gathers weights. The reference's EMA reads whole parameters
and so breaks under ZeRO-3.

Start-up on CPU: DeepSpeed's communication set-up JIT-compiles a shared-memory all-reduce op
(25-30 s of gcc on each fresh start) that only its inference path uses; it is skipped here.
Optimizer offload needs DeepSpeed's compiled CPU Adam (about 45 s the first time, cached under
``TORCH_EXTENSIONS_DIR``). A build lock an interrupted build left there would make torch wait forever;
it is removed first (with a warning) when no process holds it (``build_lock``).
"""

from __future__ import annotations

import contextlib
import copy
import os
import sys
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from osctl.errors import ConfigError, DataError, OsctlError
from osctl.parallel import dist as pdist
from osctl.train.activations import block_modules
from osctl.train.checkpoint import STATE_FILE_ADVICE
from osctl.utils.dtypes import torch_dtype


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """``extra`` merged into a copy of ``base``, dictionaries key by key."""
    out = copy.deepcopy(base)
    for key, value in extra.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def deepspeed_config(*, precision: str, zero_stage: int, micro_batch: int, accumulation: int, world: int,
                     max_grad_norm: float | None, offload_optimizer: bool = False, offload_params: bool = False,
                     extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The engine config for a recipe: the reference's zero2/zero3 settings plus the recipe's choices."""
    zero: dict[str, Any] = {
        "stage": zero_stage, "overlap_comm": True, "contiguous_gradients": True, "reduce_scatter": True,
        "reduce_bucket_size": 5e8, "allgather_partitions": True, "allgather_bucket_size": 5e8, "sub_group_size": 1e9,
    }
    if zero_stage == 3:
        zero.update({"stage3_prefetch_bucket_size": 5e8, "stage3_max_live_parameters": 1e9,
                     "stage3_max_reuse_distance": 1e9, "stage3_gather_16bit_weights_on_model_save": True})
    if offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
    if offload_params:
        zero["offload_param"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
    config: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": micro_batch,
        "gradient_accumulation_steps": accumulation,
        "train_batch_size": micro_batch * accumulation * world,
        "gradient_clipping": float(max_grad_norm or 0.0),
        "communication_data_type": "fp32",
        "zero_optimization": zero,
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 2**62,
        "wall_clock_breakdown": False,
    }
    if precision == "bf16":
        config["bf16"] = {"enabled": True}
    elif precision == "fp16":
        config["fp16"] = {"enabled": True, "loss_scale": 0, "initial_scale_power": 16, "loss_scale_window": 1000,
                          "hysteresis": 2, "min_loss_scale": 1}
    return _merge(config, extra or {})


def skip_shm_comm_build() -> None:
    """Keep DeepSpeed from compiling its shared-memory all-reduce op on the CPU accelerator.

    The op only serves ``inference_all_reduce``; training collectives go through torch.distributed,
    and DeepSpeed falls back to it when the op is absent.
    """
    from deepspeed.accelerator import get_accelerator

    module = sys.modules.get("deepspeed.comm.torch")
    if module is not None and get_accelerator().device_name() == "cpu" and hasattr(module, "build_shm_op"):
        module.build_shm_op = lambda: None


def clear_stale_build_locks(builders: list[str]) -> None:
    """Remove build locks of DeepSpeed ops that an interrupted build left behind (see ``build_lock``).

    Every rank checks, then all wait for each other, so no rank of this run starts building (and takes a
    fresh lock) while another still looks.
    """
    from deepspeed.accelerator import get_accelerator

    from osctl_builtin.strategies.build_lock import clear_stale_lock, extension_lock

    world = dist.get_world_size()
    single_machine = int(os.environ.get("LOCAL_WORLD_SIZE", "1" if world == 1 else "0")) >= world
    for builder in builders:
        clear_stale_lock(extension_lock(get_accelerator().get_op_builder(builder).NAME), single_machine=single_machine)
    dist.barrier()


class DeepSpeedStrategy:
    """ZeRO-2/3 data parallel through ``deepspeed.initialize``."""

    name = "deepspeed"
    supports_resharding = False

    def __init__(self, *, mixed_precision: str = "bf16", device: torch.device | None = None, parallel: Any = None,
                 train: Any = None, **_: Any) -> None:
        if parallel is None or train is None:
            raise ConfigError("the deepspeed strategy is configured from the recipe's parallel and train sections; "
                              "build it through osctl.build.build_strategy.")
        if parallel.offload_params and parallel.zero_stage != 3:
            raise ConfigError(f"parallel.offload_params needs parallel.zero_stage 3, got {parallel.zero_stage}; "
                              "set zero_stage: 3 or offload_params: false.")
        if parallel.offload_optimizer and train.optimizer.lower() != "adamw":
            raise ConfigError(f"parallel.offload_optimizer runs DeepSpeed's CPU AdamW, but train.optimizer is "
                              f"{train.optimizer!r}; set train.optimizer: adamw or offload_optimizer: false.")
        if mixed_precision == "fp16" and not torch.cuda.is_available():
            raise ConfigError("train.mixed_precision fp16 is not supported by DeepSpeed's CPU accelerator; "
                              "use bf16 or fp32 on CPU.")
        os.environ.setdefault("DS_ACCELERATOR", "cuda" if torch.cuda.is_available() else "cpu")
        os.environ.setdefault("LOCAL_RANK", "0")
        pdist.ensure_process_group(parallel.timeout_s)
        self.precision = mixed_precision
        self.device = device or torch.device("cpu")
        self.parallel, self.train = parallel, train
        self.zero_stage = parallel.zero_stage
        self.shards_parameters = parallel.zero_stage == 3
        self.engine: Any = None
        self.model: Any = None
        self.module: Any = None
        self.optimizer: Any = None
        self.lr_scheduler: Any = None
        self._boundary = True
        self._stepped = False

    def _config(self) -> dict[str, Any]:
        """The engine config for this run (:func:`deepspeed_config`)."""
        from osctl.parallel.layout import ParallelLayout

        skip_shm_comm_build()
        layout = ParallelLayout.from_sections(self.train, self.parallel, world_size=dist.get_world_size())
        return deepspeed_config(
            precision=self.precision, zero_stage=self.zero_stage, micro_batch=layout.stream_batch,
            accumulation=layout.grad_accum, world=layout.world_size,
            max_grad_norm=self.train.max_grad_norm, offload_optimizer=self.parallel.offload_optimizer,
            offload_params=self.parallel.offload_params, extra=self.parallel.deepspeed_config,
        )

    def prepare(self, model: torch.nn.Module, *, optimizer_factory: Any, lr_scheduler_factory: Any) -> None:
        """Build the engine: ZeRO-wrapped optimizer (DeepSpeed's CPU AdamW when offloading), LR scheduler."""
        config = self._config()
        self._initialize(model.to(self.device, torch.float32), config, optimizer_factory, lr_scheduler_factory)

    def prepare_empty(self, model: torch.nn.Module, fill: Any, *, optimizer_factory: Any,
                      lr_scheduler_factory: Any) -> None:
        """ZeRO-3 from a model whose parameters are on the meta device: block by block (``_no_split_modules``, then
        what is left), give the parameters memory on the device, ``fill`` them from the weight files, cast them to
        the compute dtype as the engine would, and partition them (``deepspeed.zero.Init`` on the module, with the
        engine's own settings), so a device holds its partitions plus one block, never the whole model; then build
        the engine, which finds every parameter partitioned already."""
        import deepspeed
        from deepspeed.accelerator import get_accelerator

        config = self._config()
        # deepspeed.comm over this run's process group, as deepspeed.initialize sets it up (Init reads its world size)
        deepspeed.comm.init_distributed(dist_backend=get_accelerator().communication_backend_name(),
                                        dist_init_required=False)
        dtype = torch_dtype(self.precision)  # the engine's parameter dtype (deepspeed_config enables it)
        first: Any = None
        for part in [*block_modules(model), model]:  # the model last: what no block holds
            params = _place_empty(part, self.device)
            fill(model, [part])
            if not params:
                continue
            for param in params:  # what the engine does to a model that is not partitioned yet
                if param.is_floating_point() and param.dtype != dtype:
                    param.data = param.data.to(dtype)
            if first is None:  # one Init for all: later parts join it, as the engine converts parameters it finds
                deepspeed.zero.Init(module=part, config_dict_or_path=config, dtype=dtype)
                first = params[0]
            else:
                first.convert_to_zero_parameters(param_list=params)
        self._initialize(model, config, optimizer_factory, lr_scheduler_factory)

    def _initialize(self, model: torch.nn.Module, config: dict[str, Any], optimizer_factory: Any,
                    lr_scheduler_factory: Any) -> None:
        import deepspeed

        if self.parallel.offload_optimizer:
            from deepspeed.ops.adam import DeepSpeedCPUAdam

            clear_stale_build_locks(["CPUAdamBuilder"])

            t = self.train
            optimizer = DeepSpeedCPUAdam([p for p in model.parameters() if p.requires_grad], lr=t.learning_rate,
                                         betas=(t.adam_beta1, t.adam_beta2), eps=t.adam_epsilon,
                                         weight_decay=t.adam_weight_decay, adamw_mode=True)
        else:
            optimizer = optimizer_factory(model.parameters())
        self.engine, self.optimizer, _, self.lr_scheduler = deepspeed.initialize(
            model=model, optimizer=optimizer, lr_scheduler=lr_scheduler_factory, config=config,
            dist_init_required=False,
        )
        self.model = self.engine
        self.module = self.engine.module

    def autocast(self) -> Any:
        """Nothing to do: the engine holds the weights in the compute precision."""
        return contextlib.nullcontext()

    def no_sync(self, sync: bool) -> Any:
        """Note whether this micro-step ends the accumulation (DeepSpeed reduces at its own boundary)."""
        self._boundary = sync
        return contextlib.nullcontext()

    def backward(self, loss: torch.Tensor) -> None:
        """``engine.backward`` of the loss the loop already divided by the accumulation steps."""
        if self.engine.is_gradient_accumulation_boundary() != self._boundary:
            raise RuntimeError("DeepSpeed's gradient-accumulation boundary disagrees with the training loop's; "
                               "its gradient_accumulation_steps must equal train.gradient_accumulation_steps.")
        self.engine.backward(loss, scale_wrt_gas=False)
        if not self._boundary:
            self.engine.step()  # inside the accumulation window this only advances DeepSpeed's micro-step count

    def clip_grad_norm(self, max_norm: float | None) -> float | None:
        """Run the engine's boundary step, which clips to its ``gradient_clipping`` (set from
        ``train.max_grad_norm``, the ``max_norm`` the loop passes); returns the engine's gradient norm."""
        self.engine.step()
        self._stepped = True
        norm = self.engine.get_global_grad_norm()
        return None if norm is None else float(norm)

    def optimizer_step(self) -> None:
        """Step the engine unless ``clip_grad_norm`` already did (DeepSpeed steps the LR scheduler itself)."""
        if not self._stepped:
            self.engine.step()
        self._stepped = False

    def local_parameters(self) -> list[tuple[str, torch.Tensor]]:
        """ZeRO-2: every trainable parameter; ZeRO-3: this rank's flat partition of each."""
        params = [(n, p) for n, p in self.module.named_parameters() if p.requires_grad]
        if self.zero_stage == 3:
            return [(n, p.ds_tensor) for n, p in params]
        return params

    def full_state_dict(self, local: list[tuple[str, torch.Tensor]] | None = None) -> dict[str, torch.Tensor] | None:
        """The full weights on rank 0 (every rank takes part under ZeRO-3); ``local`` replaces parameter values."""
        rank0 = dist.get_rank() == 0
        replaced = dict(local or [])
        state: dict[str, torch.Tensor] = {}
        if self.zero_stage == 3:
            import deepspeed

            names = set()
            for name, param in self.module.named_parameters():
                names.add(name)
                if name in replaced:
                    value = _gather_partition(replaced[name].to(self.device), param)
                else:
                    with deepspeed.zero.GatheredParameters([param], modifier_rank=None):
                        value = param.detach().clone()
                if rank0:
                    state[name] = value.cpu()
            if rank0:  # buffers are not partitioned
                state.update({k: v.detach().cpu().clone() for k, v in self.module.state_dict().items() if k not in names})
            return state if rank0 else None
        if not rank0:
            return None
        state = {k: v.detach().cpu().clone() for k, v in self.module.state_dict().items()}
        for name, value in replaced.items():
            state[name] = value.detach().cpu().to(state[name].dtype).clone()
        return state

    def trainable_state_dict(self, local: list[tuple[str, torch.Tensor]] | None = None) -> dict[str, torch.Tensor] | None:
        """The full trainable parameters alone (a LoRA adapter) on rank 0 (every rank takes part under ZeRO-3)."""
        trainable = {n for n, p in self.module.named_parameters() if p.requires_grad}
        if self.zero_stage == 3:
            full = self.full_state_dict(local)
            return None if full is None else {k: v.float() for k, v in full.items() if k in trainable}
        if dist.get_rank() != 0:
            return None
        replaced = dict(local or [])
        return {n: replaced.get(n, p).detach().cpu().float().clone() for n, p in self.module.named_parameters()
                if n in trainable}

    def _frozen(self) -> bool:
        """True when part of the model is frozen (a LoRA base): the engine checkpoint then leaves it out."""
        return any(not p.requires_grad for p in self.module.parameters())

    def save_state(self, folder: Path) -> None:
        """The engine's own checkpoint (module, ZeRO optimizer partitions, LR scheduler) in ``deepspeed/``; a
        frozen base (reloaded from its own weights on every start) is left out."""
        self.engine.save_checkpoint(str(folder / "deepspeed"), exclude_frozen_parameters=self._frozen())

    def load_state(self, folder: Path) -> None:
        """Restore the engine checkpoint written by ``save_state`` (same world size), never running code from it.

        The engine reads its files with ``torch.load(weights_only=False)``; here every ``torch.load`` it
        makes is osctl's weights-only ``load_torch`` admitting only the DeepSpeed record classes a ZeRO
        checkpoint holds (loss scaler, fragment address, stage enum; plain data only). A refused or
        damaged file is a ``DataError`` naming it.
        """
        from osctl.ckpt.torch_files import deepspeed_classes, first_line, hold_torch_load

        engine_dir = folder / "deepspeed"
        with hold_torch_load(allowed=deepspeed_classes(), advice=STATE_FILE_ADVICE) as held:
            try:
                path, _ = self.engine.load_checkpoint(str(engine_dir), load_module_strict=not self._frozen())
            except OsctlError:
                raise
            except Exception as exc:
                if held.error is not None:
                    raise held.error from None
                raise DataError(f"DeepSpeed could not restore {engine_dir} ({first_line(exc)}); the engine state is "
                                "damaged or from another run — resume from an earlier checkpoint.") from None
        if path is None:
            raise ConfigError(f"{folder.parent.name} has no DeepSpeed engine state in training_state/deepspeed/; "
                              "resume with the strategy that wrote it.")


def _place_empty(module: torch.nn.Module, device: torch.device) -> list[torch.nn.Parameter]:
    """Give every parameter of ``module`` that is on the meta device an empty tensor on ``device`` (the caller fills
    it) and move the buffers to ``device``; returns the parameters not partitioned yet."""
    pending = []
    for sub in module.modules():
        for name, param in sub._parameters.items():
            if param is None or hasattr(param, "ds_id"):
                continue
            if param.is_meta:
                param = torch.nn.Parameter(torch.empty(param.shape, dtype=param.dtype, device=device),
                                           requires_grad=param.requires_grad)
                sub._parameters[name] = param
            pending.append(param)
        for name, buffer in sub._buffers.items():
            if buffer is not None:
                sub._buffers[name] = buffer.to(device)
    return pending


def _gather_partition(partition: torch.Tensor, param: Any) -> torch.Tensor:
    """The full tensor of a ZeRO-3 parameter from every rank's flat partition (the last one padded)."""
    parts = [torch.empty_like(partition) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, partition.contiguous())
    return torch.cat(parts)[: param.ds_numel].view(param.ds_shape)
