"""Loading a model without a full-size host copy: parameters made on the meta device, then filled straight on
the target device from the memory-mapped safetensors files, a chunk at a time.

Why: the plain path builds every parameter on the CPU with a random init (a 14B model: 56 GB of float32 and
minutes of init) only for :func:`osctl.train.weights.load_into` or diffusers' ``from_pretrained`` to overwrite
it, and a GPU run then copies the whole host model to the device. Here the factory builds the model with its
parameters on the meta device (``empty=True``: no memory, no init; buffers such as rotary tables are computed
as usual, since they are not in the weight files), and :func:`materialise` gives each parameter and persistent
buffer a fresh tensor on the device, copied from the file. The host then holds at most one chunk of mapped
file pages (:data:`osctl.train.weights.LOAD_CHUNK_BYTES`) besides what lives on the device.

It gives the same model as a normal build plus ``load_into``, bit for bit, or is not used: :func:`plan_lean_load`
says no (and the caller builds normally) whenever that could differ: weights in torch files, a model tensor
absent from the files or of another shape (it would keep its initial value, which only a normal build makes),
parameters shared between modules, a buffer that depends on a parameter, or a module with its own
state-dict loading hooks.
"""

from __future__ import annotations

from collections.abc import Iterator
from collections.abc import Set as AbstractSet
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from osctl.train.lora import FINGERPRINT_VALUES
from osctl.train.weights import LOAD_CHUNK_BYTES, LoadReport, weight_files


def parameters_on_meta() -> AbstractContextManager[None]:
    """A context in which every parameter a module registers is moved to the meta device as it is registered,
    while buffers (rotary tables, position grids) are made as usual: accelerate's ``init_empty_weights`` without
    buffers (the same accelerate diffusers' ``from_pretrained`` builds its empty modules with). An init that writes
    to such a parameter then writes to nothing."""
    from accelerate import init_empty_weights

    return init_empty_weights(include_buffers=False)


def is_empty(model: nn.Module) -> bool:
    """True when some parameter of ``model`` is on the meta device (an ``empty=True`` build)."""
    return any(p.is_meta for p in model.parameters())


@dataclass
class LeanPlan:
    """Where each tensor of the model's state dict is read from, and what the load will report."""

    #: state-dict key -> (file, name in the file)
    locations: dict[str, tuple[Path, str]] = field(default_factory=dict)
    report: LoadReport = field(default_factory=lambda: LoadReport(source=""))


def plan_lean_load(model: nn.Module, sources: list[tuple[Path, str]], *, source: str) -> LeanPlan | None:
    """The plan to fill the empty ``model`` from ``sources`` ((file or folder, key prefix) pairs, as
    :func:`osctl.train.weights._weight_sources` gives them), read from the safetensors headers alone; None when
    the result could differ from a normal build plus ``load_into`` (see the module docstring)."""
    from osctl.ckpt.headers import read_header

    if _needs_normal_build(model):
        return None
    own = {key: (tuple(t.shape), t.dtype) for key, t in model.state_dict(keep_vars=True).items()}
    plan = LeanPlan(report=LoadReport(source=source, total=len(own)))
    for path, prefix in sources:
        kind, files = weight_files(path)
        if kind != "safetensors":
            return None
        for file in files:
            for info in read_header(file).tensors.values():
                key = prefix + info.name
                if key not in own:
                    plan.report.unexpected.append(key)
                elif tuple(info.shape) != own[key][0]:
                    return None  # load_into would leave this tensor at its initial value
                else:
                    plan.locations[key] = (file, info.name)
    if set(own) - set(plan.locations):
        return None
    plan.report.loaded = len(plan.locations)
    return plan


def _needs_normal_build(model: nn.Module) -> bool:
    """Shared parameters, a buffer still on the meta device (made from a parameter), or a module with its own
    state-dict loading: cases :func:`materialise` would not reproduce."""
    if len(list(model.named_parameters(remove_duplicate=False))) != len(list(model.named_parameters())):
        return True
    if any(b.is_meta for b in model.buffers()):
        return True
    for module in model.modules():
        if module._load_state_dict_pre_hooks or module._load_state_dict_post_hooks:
            return True
        if type(module)._load_from_state_dict is not nn.Module._load_from_state_dict:
            return True
    return False


def materialise(model: nn.Module, plan: LeanPlan, *, device: torch.device | str,
                chunk_bytes: int = LOAD_CHUNK_BYTES, storage: dict[str, torch.dtype] | None = None,
                host_keys: AbstractSet[str] = frozenset()) -> LoadReport:
    """Give every parameter and persistent buffer of ``model`` a new tensor on ``device`` holding its weights
    from ``plan``, a chunk of about ``chunk_bytes`` of file data at a time (one tensor at least), and move the
    other buffers to ``device``; returns the report ``load_into`` would give.

    ``storage`` names parameters kept in a smaller dtype (a LoRA run's frozen base in ``train.base_dtype``): each is
    cast as it is read, frozen, and its first values as the file gave them go to the report's ``heads``, so the
    float32 tensor never exists. ``host_keys`` names parameters made on the CPU instead: the frozen weights
    ``train.offload`` keeps in host memory (:func:`osctl.train.offload.offloaded_keys`), never on the device."""
    device = torch.device(device)
    slots = state_slots(model)
    storage = storage or {}
    for key, stored in _stored_tensors(plan, chunk_bytes):
        module, attr, is_param = slots[key]
        old = (module._parameters if is_param else module._buffers)[attr]
        assert old is not None
        value = torch.empty(old.shape, dtype=storage.get(key, old.dtype),
                            device="cpu" if key in host_keys else device)
        with torch.no_grad():
            value.copy_(stored)  # a copy: the mapped file is never written
        if key in storage:
            plan.report.heads[key] = stored.reshape(-1)[:FINGERPRINT_VALUES].to(old.dtype).clone()
        if is_param:
            module._parameters[attr] = nn.Parameter(value, requires_grad=old.requires_grad and key not in storage)
        else:
            module._buffers[attr] = value
    for module in model.modules():  # buffers not in the files (computed when the model was built)
        for attr, buffer in module._buffers.items():
            if buffer is not None and buffer.device != device:
                module._buffers[attr] = buffer.to(device)
    return plan.report


def fill_shards(model: nn.Module, plan: LeanPlan, *, chunk_bytes: int = LOAD_CHUNK_BYTES,
                slots: dict[str, tuple[nn.Module, str, bool]] | None = None,
                keys: AbstractSet[str] | None = None) -> LoadReport:
    """Copy the weights of ``plan`` into the tensors ``model`` already has where they live: for a parameter that
    is a DTensor (sharded by FSDP2 on the meta device, then given memory by ``to_empty``), only this rank's
    shard, sliced from the file's tensor without communication (``distribute_tensor`` with
    ``src_data_rank=None``); a plain parameter or persistent buffer whole. Host memory holds about one
    ``chunk_bytes`` of file data at a time; returns the report ``load_into`` would give.

    ``slots`` (:func:`state_slots` of the model when it was planned) finds each tensor under the key the plan
    knows, also after an adapter wrapped its layer (peft's ``<layer>.base_layer.weight``); default: ``model``'s
    slots now. ``keys``: only these (a strategy placing the model block by block), read alone from the files."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    slots = slots if slots is not None else state_slots(model)
    with torch.no_grad():
        for key, stored in _stored_tensors(plan, chunk_bytes, keys):
            module, attr, is_param = slots[key]
            target = (module._parameters if is_param else module._buffers)[attr]
            assert target is not None and not target.is_meta, key
            if isinstance(target, DTensor):
                local = target.to_local()
                local.copy_(distribute_tensor(stored, target.device_mesh, target.placements,
                                              src_data_rank=None).to_local())
            else:
                target.copy_(stored)
    return plan.report


def file_heads(plan: LeanPlan) -> dict[str, torch.Tensor]:
    """The first :data:`~osctl.train.lora.FINGERPRINT_VALUES` values of every tensor of ``plan`` as its file holds
    them, by state-dict key (:func:`osctl.train.weights.safetensors_heads`): what a base fingerprint reads of a model
    whose weights are not loaded yet."""
    from osctl.train.weights import safetensors_heads

    by_file: dict[Path, dict[str, str]] = {}
    for key, (file, name) in plan.locations.items():
        by_file.setdefault(file, {})[name] = key
    heads: dict[str, torch.Tensor] = {}
    for file, keys in by_file.items():
        for name, head in safetensors_heads(file, keys, FINGERPRINT_VALUES).items():
            heads[keys[name]] = head
    return heads


def _stored_tensors(plan: LeanPlan, chunk_bytes: int,
                    only: AbstractSet[str] | None = None) -> Iterator[tuple[str, torch.Tensor]]:
    """(state-dict key, tensor read from its file) for every key of ``plan`` (or of ``only``), file by file, about
    ``chunk_bytes`` of data at a time (:func:`osctl.train.weights.safetensors_chunks`, the reader ``load_into``
    uses)."""
    from osctl.train.weights import safetensors_chunks

    keys = {where: key for key, where in plan.locations.items() if only is None or key in only}
    for file in sorted({file for file, _ in keys}, key=str):
        names = None if only is None else {name for where, name in keys if where == file}
        for chunk in safetensors_chunks(file, chunk_bytes, names):
            while chunk:  # handed out and let go one by one: nothing of a chunk is held while the next is read
                name, tensor = chunk.popitem()
                key = keys.get((file, name))
                if key is not None:  # (a tensor the model lacks is reported, not loaded)
                    yield key, tensor
                del tensor


def state_slots(model: nn.Module) -> dict[str, tuple[nn.Module, str, bool]]:
    """State-dict key -> (owning module, attribute name, is a parameter) for every parameter and persistent
    buffer of ``model``."""
    slots: dict[str, tuple[nn.Module, str, bool]] = {}
    for prefix, module in model.named_modules():
        base = f"{prefix}." if prefix else ""
        for attr, param in module._parameters.items():
            if param is not None:
                slots[base + attr] = (module, attr, True)
        for attr, buffer in module._buffers.items():
            if buffer is not None and attr not in module._non_persistent_buffers_set:
                slots[base + attr] = (module, attr, False)
    return slots


#: strategies that move the whole model to the process's device as it is (DeepSpeed's engine takes it there whole
#: too before partitioning, unless ZeRO-3 loads sharded: see :func:`loads_sharded`)
DEVICE_LOADING_STRATEGIES = ("single", "ddp", "deepspeed")

#: strategies that take the model empty (``prepare_empty``): they shard it on the meta device and each rank then
#: fills its own shards from the files (:func:`fill_shards`); DeepSpeed does so with ZeRO-3 (it partitions the
#: parameters block by block as they are filled), see :func:`loads_sharded`
SHARD_LOADING_STRATEGIES = ("fsdp",)


def loads_on_device(recipe: Any, strategy: str) -> bool:
    """True when training builds and loads the model straight on the process's device: the strategy would move the
    whole model there anyway (:data:`DEVICE_LOADING_STRATEGIES`). A LoRA base in a ``train.base_dtype`` below fp32
    loads there too, in that dtype (see :func:`build_loaded_model`); with ``train.offload`` the frozen weights of the
    offloaded blocks are read into host memory instead (``host_blocks``), everything else to the device. A normal
    build of either (weights the lean path does not take) stays on the CPU, where the base shrinks or is offloaded
    before it is moved (:func:`normal_load_on_cpu`). Otherwise on the CPU, as before."""
    return strategy in DEVICE_LOADING_STRATEGIES


def loads_sharded(recipe: Any, strategy: str) -> bool:
    """True when training gives the strategy the model empty and each rank reads only its own shards of the
    weights (:data:`SHARD_LOADING_STRATEGIES`, and DeepSpeed ZeRO-3): full fine-tuning, and LoRA runs (the adapter
    is added to the empty base, on the CPU, and sharded with it: see
    :func:`osctl.train.frozen_base.float32_placeholders`)."""
    zero3 = strategy == "deepspeed" and recipe.parallel.zero_stage == 3
    return (strategy in SHARD_LOADING_STRATEGIES or zero3) and recipe.train.offload is None


def normal_load_on_cpu(recipe: Any) -> bool:
    """True when a normal (float32) build must stay on the CPU even where the lean load goes to the device: a LoRA
    base stored in less than fp32, or one with ``train.offload``, would otherwise be built whole in float32 on the
    device first."""
    train_cfg = recipe.train
    return train_cfg.lora is not None and (train_cfg.base_dtype != "fp32" or train_cfg.offload is not None)


def lean_source(recipe: Any) -> Path | None:
    """The safetensors weights a run's model is built from, lean (``train.pretrained``, else ``model.path``), as
    far as the recipe tells; None for a fresh preset or torch files (a plan's guess: a checkpoint to resume, or
    weights that miss keys, are known only when the run starts)."""
    for value in (recipe.train.pretrained, recipe.model.options.get("path")):
        if not value:
            continue
        path = Path(str(value)).expanduser()
        if path.is_file():
            return path if path.suffix == ".safetensors" else None
        return path if path.is_dir() and any(path.rglob("*.safetensors")) else None
    return None


@dataclass
class LoadedModel:
    """A built model with its weights, and how they got there."""

    model: Any
    report: LoadReport | None  # None: a fresh preset, or model.path loaded by the factory itself
    lean: bool  # True: built on the meta device and filled on the target device (no host copy)
    #: set when the weights are still to be read (``shards=True``): the model's parameters are on the meta device,
    #: and the strategy calls this once it has sharded and placed them, to fill each rank's shards
    fill: PendingFill | None = None


@dataclass
class PendingFill:
    """The weights of a model built empty, still to be read (:func:`fill_shards`): the strategy calls it once it
    has placed the parameters, for the whole model or ``modules`` at a time (a strategy that partitions block by
    block); each tensor is read once, whatever the order."""

    plan: LeanPlan
    slots: dict[str, tuple[nn.Module, str, bool]]  # as planned: a LoRA adapter renames the layers it wraps
    chunk_bytes: int = LOAD_CHUNK_BYTES
    done: set[str] = field(default_factory=set)

    def __call__(self, model: nn.Module, modules: list[nn.Module] | None = None) -> LoadReport:
        owners = None if modules is None else {id(m) for root in modules for m in root.modules()}
        keys = {key for key, (module, _, _) in self.slots.items()
                if key in self.plan.locations and key not in self.done and (owners is None or id(module) in owners)}
        fill_shards(model, self.plan, chunk_bytes=self.chunk_bytes, slots=self.slots, keys=keys)
        self.done |= keys
        return self.plan.report


def build_loaded_model(checked: Any, registry: Any, *, weights: Path | None, device: torch.device | str,
                       dtype: torch.dtype | None, chunk_bytes: int = LOAD_CHUNK_BYTES,
                       shards: bool = False, base_dtype: str = "fp32",
                       normal_device: torch.device | str | None = None, host_blocks: int = 0) -> LoadedModel:
    """The recipe's model on ``device`` with its weights: ``weights`` (a checkpoint's ``model/``,
    ``train.pretrained``, a LoRA checkpoint's base) or, when None, the files ``model.path`` names.

    Lean (meta build, filled on ``device``) when the factory supports ``empty=True`` and :func:`plan_lean_load`
    agrees; otherwise the normal build (random init or diffusers' ``from_pretrained``) plus
    :func:`osctl.train.weights.load_into`, exactly as before. Either way the report lists the same keys.
    With ``shards`` (:func:`loads_sharded`) a lean model comes back still empty (buffers on ``device``), with
    ``fill``: the strategy's ``prepare_empty`` shards it, then fills each rank's shards (:func:`fill_shards`).
    ``base_dtype`` (a LoRA run's ``train.base_dtype``): a lean load stores the block linears' weights in it as it
    reads them (:func:`osctl.train.frozen_base.storage_plan`). ``normal_device``: where the normal build goes
    (default ``device``; the CPU when only the lean load keeps the model small enough for ``device``).
    ``host_blocks`` (``train.offload``'s count, :func:`osctl.train.offload.offload_count`): a lean load reads the
    weights of that many last blocks into host memory (:func:`osctl.train.offload.offloaded_keys`)."""
    from osctl.build import build_model
    from osctl.train.weights import _weight_sources, load_into

    def normal() -> LoadedModel:
        model = build_model(checked, registry, device=normal_device or device, dtype=dtype)
        return LoadedModel(model, load_into(model, weights, chunk_bytes=chunk_bytes) if weights else None, False)

    config = checked.components["model"]
    path_sources = getattr(config, "weight_sources", lambda: [])()
    if weights is None and not path_sources:  # a fresh preset: the random init is the weights
        return normal()
    with torch.random.fork_rng(devices=[]):  # a normal build after this one draws as if this one never ran
        model = build_model(checked, registry, device=device, dtype=dtype, empty=True)
    if not is_empty(model):  # a factory without empty builds: it made (and placed) the model itself
        return LoadedModel(model, load_into(model, weights, chunk_bytes=chunk_bytes) if weights else None, False)
    if path_sources and dtype not in (None, torch.float32) and \
            any(getattr(m, "_keep_in_fp32_modules", None) for m in model.modules()):
        return normal()  # from_pretrained keeps some modules in float32 in a lower precision: leave that to it
    sources = _weight_sources(model, weights) if weights is not None else path_sources
    plan = plan_lean_load(model, sources, source=str(weights if weights is not None else sources[0][0]))
    if plan is None:
        del model
        return normal()
    if shards:  # a LoRA run fingerprints its base before any shard is read: the heads come from the files now
        plan.report.heads = file_heads(plan)
        return LoadedModel(model, plan.report, True, fill=PendingFill(plan, state_slots(model), chunk_bytes))
    from osctl.train.frozen_base import storage_plan
    from osctl.train.offload import offloaded_keys

    return LoadedModel(model, materialise(model, plan, device=device, chunk_bytes=chunk_bytes,
                                          storage=storage_plan(model, base_dtype),
                                          host_keys=offloaded_keys(model, host_blocks)), True)
