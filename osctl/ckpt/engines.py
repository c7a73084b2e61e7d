"""Training-engine state: DeepSpeed ZeRO folders and torch.distributed.checkpoint (FSDP/DCP) folders.

Both are described (tensor names/shapes/dtypes, optimizer size, ranks) and consolidated into one state
dict on CPU, in one process, without running code from the files:

- **DCP** (``.metadata`` + ``__R_K.distcp``): torch's own reader unpickles ``.metadata`` with plain
  ``pickle`` and non-tensor items with ``weights_only=False``. Here ``.metadata`` goes through
  :func:`osctl.ckpt.dcp_metadata.read_dcp_metadata` (only the DCP metadata classes, ``torch.Size`` and
  dtypes are admitted), and every item is read with ``torch.load(weights_only=True)``; chunks (one per rank for sharded FSDP parameters) are placed at
  their offsets. Items are grouped by their first key: ``model``, ``optim``/``optimizer``, ``ema``...
- **DeepSpeed** (``latest`` + ``global_stepN/`` with ``*model_states.pt`` and ``*optim_states.pt``):
  consolidated by DeepSpeed's ``get_fp32_state_dict_from_zero_checkpoint`` (ZeRO-1/2/3) with its
  ``torch.load`` held to ``weights_only=True`` plus inert stand-ins for DeepSpeed's record classes.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from osctl.ckpt.dcp_metadata import read_dcp_metadata
from osctl.ckpt.headers import ITEMSIZE, TensorInfo
from osctl.ckpt.torch_files import dtype_name, hold_torch_load, load_torch, normalize_keys
from osctl.errors import DataError

MODEL_GROUPS = ("model", "module", "state_dict", "")
EMA_GROUPS = ("ema", "model_ema", "ema_model", "ema_state_dict")
OPTIMIZER_GROUPS = ("optim", "optimizer", "optimizer_state_dict", "optimizers")


@dataclass
class DCPItem:
    """One entry of a DCP checkpoint: its group (first key), name inside the group, shape and dtype."""

    fqn: str
    group: str
    name: str
    shape: tuple[int, ...] | None  # None: a non-tensor ("bytes") item
    dtype: str | None
    chunks: list[tuple[tuple[int, ...], tuple[int, ...], Any]] = field(default_factory=list)
    storage: Any = None  # bytes items: their storage info

    @property
    def nbytes(self) -> int:
        """Bytes of the full tensor (0 for non-tensor items)."""
        if self.shape is None or self.dtype is None:
            return 0
        count = 1
        for dim in self.shape:
            count *= dim
        return int(count * ITEMSIZE.get(self.dtype, 4))


@dataclass
class DCPCheckpoint:
    """A described DCP folder: items by group, data files and the ranks that wrote them."""

    folder: Path
    items: list[DCPItem]
    files: list[Path]
    ranks: int

    def groups(self) -> dict[str, list[DCPItem]]:
        """Items by group, in file order."""
        out: dict[str, list[DCPItem]] = {}
        for item in self.items:
            out.setdefault(item.group, []).append(item)
        return out

    def pick(self, candidates: tuple[str, ...]) -> str | None:
        """The first group among ``candidates`` that holds tensors."""
        groups = self.groups()
        for name in candidates:
            if any(item.shape is not None for item in groups.get(name, [])):
                return name
        return None

    def infos(self, group: str) -> list[TensorInfo]:
        """``TensorInfo`` of the tensors of ``group``."""
        return [TensorInfo(name=i.name, shape=i.shape, dtype=i.dtype or "?", file=".metadata")
                for i in self.groups().get(group, []) if i.shape is not None]


def read_dcp(folder: Path) -> DCPCheckpoint:
    """Describe a DCP folder from its ``.metadata`` (restricted unpickling, no tensor data read)."""
    meta_path = folder / ".metadata"
    metadata = read_dcp_metadata(meta_path)
    state_md, storage = metadata.state_dict_metadata, metadata.storage_data
    planner = getattr(metadata, "planner_data", None) or {}
    by_chunk: dict[tuple[str, tuple[int, ...] | None], Any] = {}
    for index, info in storage.items():
        offset = tuple(index.offset) if getattr(index, "offset", None) is not None else None
        by_chunk[(index.fqn, offset)] = info
    items = []
    for fqn, md in state_md.items():
        group, name = _split_fqn(fqn, planner.get(fqn))
        if hasattr(md, "chunks"):
            chunks = []
            for chunk in md.chunks:
                offsets = tuple(chunk.offsets)
                info = by_chunk.get((fqn, offsets))
                if info is None:
                    raise DataError(f"{meta_path} lists a chunk of {fqn!r} at {list(offsets)} with no storage entry; "
                                    "the DCP folder is damaged.")
                chunks.append((offsets, tuple(chunk.sizes), info))
            items.append(DCPItem(fqn, group, name, tuple(md.size), dtype_name(md.properties.dtype), chunks))
        else:
            items.append(DCPItem(fqn, group, name, None, None, storage=by_chunk.get((fqn, None))))
    files = sorted(folder.glob("*.distcp"))
    ranks = len({m.group(1) for f in files if (m := re.match(r"^__(\d+)_", f.name))}) or len(files)
    return DCPCheckpoint(folder=folder, items=items, files=files, ranks=ranks)


def _split_fqn(fqn: str, path: Any) -> tuple[str, str]:
    if isinstance(path, tuple | list) and path:
        if len(path) == 1:
            return "", str(path[0])
        return str(path[0]), ".".join(str(p) for p in path[1:])
    head, _, rest = fqn.partition(".")
    return (head, rest) if rest else ("", fqn)


def load_dcp(checkpoint: DCPCheckpoint, group: str) -> dict[str, Any]:
    """Consolidate the tensors of ``group`` into full CPU tensors (chunks placed at their offsets)."""
    import torch

    out: dict[str, Any] = {}
    with contextlib.ExitStack() as stack:
        handles: dict[str, Any] = {}
        for item in checkpoint.groups().get(group, []):
            if item.shape is None:
                continue
            full = torch.empty(item.shape, dtype=getattr(torch, item.dtype or "float32"))
            covered = 0
            for offsets, sizes, info in item.chunks:
                if getattr(info, "transform_descriptors", None):
                    raise DataError(f"{checkpoint.folder}: {item.fqn!r} is stored with transforms "
                                    f"{list(info.transform_descriptors)}, which osctl cannot read yet.")
                name = info.relative_path
                if Path(name).name != name:
                    raise DataError(f"{checkpoint.folder}/.metadata points at {name!r}, outside the folder; refused.")
                if name not in handles:
                    path = checkpoint.folder / name
                    if not path.is_file():
                        raise DataError(f"{path} is missing; the DCP checkpoint is incomplete (a rank did not save?).")
                    handles[name] = stack.enter_context(path.open("rb"))
                handle = handles[name]
                handle.seek(info.offset)
                blob = handle.read(info.length)
                if len(blob) != info.length:
                    raise DataError(f"{checkpoint.folder / name} is truncated: {item.fqn!r} needs bytes "
                                    f"{info.offset}..{info.offset + info.length}; copy it again.")
                try:
                    part = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
                except Exception as exc:
                    raise DataError(f"{checkpoint.folder / name}: cannot read {item.fqn!r} "
                                    f"({type(exc).__name__}); the file is damaged or not plain tensor data.") from None
                if not isinstance(part, torch.Tensor) or tuple(part.shape) != sizes:
                    raise DataError(f"{checkpoint.folder / name}: {item.fqn!r} chunk at {list(offsets)} does not "
                                    f"have the shape {list(sizes)} the metadata records; the folder is damaged.")
                region = full
                for dim, (start, length) in enumerate(zip(offsets, sizes, strict=True)):
                    region = region.narrow(dim, start, length)
                region.copy_(part)
                covered += part.numel()
            if covered < full.numel():
                raise DataError(f"{checkpoint.folder}: the chunks of {item.fqn!r} cover {covered} of {full.numel()} "
                                "elements; a rank's shard is missing.")
            out[item.name] = full
    return out


# --- DeepSpeed -----------------------------------------------------------------------------------------

@dataclass
class DeepSpeedCheckpoint:
    """A described DeepSpeed checkpoint: tag folder, files, ZeRO stage and the parameter shapes."""

    root: Path
    tag: str
    folder: Path
    model_files: list[Path]
    optim_files: list[Path]
    zero_stage: int | None
    world_size: int
    global_step: int | None
    ds_version: str | None
    infos: list[TensorInfo]
    module_dtypes: list[str]


def read_deepspeed(root: Path, tag: str | None, *, trust_pickle: bool = False) -> DeepSpeedCheckpoint:
    """Describe a DeepSpeed checkpoint from its first model-states file (memory-mapped, weights_only)."""
    if not tag:
        raise DataError(f"{root} has no 'latest' file and no global_step folder; pass the tag folder itself.")
    folder = root / tag
    if not folder.is_dir():
        raise DataError(f"{root}/latest names the tag {tag!r} but {folder} does not exist; the checkpoint is incomplete.")
    model_files = sorted(folder.glob("*model_states.pt"), key=_natural)
    optim_files = sorted(folder.glob("*optim_states.pt"), key=_natural)
    if not model_files:
        raise DataError(f"{folder} holds no *model_states.pt; it is not a complete DeepSpeed checkpoint.")
    states = load_torch(model_files[0], trust_pickle=trust_pickle)
    if not isinstance(states, dict):
        raise DataError(f"{model_files[0]} is not a DeepSpeed model-states file.")
    config = states.get("ds_config") if isinstance(states.get("ds_config"), dict) else {}
    zero = config.get("zero_optimization") if isinstance(config.get("zero_optimization"), dict) else {}
    stage = zero.get("stage")
    infos = []
    for group in states.get("param_shapes") or []:
        for name, shape in dict(group).items():
            infos.append(TensorInfo(name=name, shape=tuple(shape), dtype="float32", file=f"{tag}/*optim_states.pt"))
    for name, shape in dict(states.get("frozen_param_shapes") or {}).items():
        infos.append(TensorInfo(name=name, shape=tuple(shape), dtype="float32", file=f"{tag}/{model_files[0].name}"))
    module = states.get("module") if isinstance(states.get("module"), dict) else {}
    for name in states.get("buffer_names") or []:
        tensor = module.get(name)
        if tensor is not None:
            infos.append(TensorInfo(name=name, shape=tuple(tensor.shape), dtype=dtype_name(tensor.dtype),
                                    file=f"{tag}/{model_files[0].name}"))
    if not infos and module:  # ZeRO-0/1 style: the module holds full weights
        infos = [TensorInfo(name=k, shape=tuple(v.shape), dtype=dtype_name(v.dtype), file=f"{tag}/{model_files[0].name}")
                 for k, v in module.items()]
    renamed, _ = normalize_keys({i.name: i for i in infos})
    infos = [TensorInfo(name=k, shape=i.shape, dtype=i.dtype, file=i.file) for k, i in renamed.items()]
    step = states.get("global_steps")
    match = re.match(r"^global_step(\d+)$", tag)
    return DeepSpeedCheckpoint(
        root=root, tag=tag, folder=folder, model_files=model_files, optim_files=optim_files,
        zero_stage=int(stage) if isinstance(stage, int) else None,
        world_size=len(optim_files) or int(states.get("dp_world_size") or 1),
        global_step=int(step) if isinstance(step, int) else (int(match.group(1)) if match else None),
        ds_version=str(states.get("ds_version")) if states.get("ds_version") else None,
        infos=infos, module_dtypes=sorted({dtype_name(v.dtype) for v in module.values() if hasattr(v, "dtype")}),
    )


def consolidate_deepspeed(root: Path, tag: str | None, *, trust_pickle: bool = False) -> dict[str, Any]:
    """fp32 weights of a ZeRO-1/2/3 checkpoint via DeepSpeed's ``get_fp32_state_dict_from_zero_checkpoint``.

    Its ``torch.load`` calls are held to ``weights_only=True`` (plus stand-ins for DeepSpeed's record
    classes) unless ``trust_pickle``; its progress output is swallowed so ``--json`` stays clean.
    """
    described = read_deepspeed(root, tag, trust_pickle=trust_pickle)
    if not described.optim_files:
        raise DataError(f"{described.folder} holds no *optim_states.pt, so there are no fp32 master weights "
                        "to consolidate; the checkpoint is incomplete.")
    os.environ.setdefault("DS_ACCELERATOR", "cpu")  # consolidation runs on CPU; skip accelerator probing
    sink = io.StringIO()
    with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        try:
            from deepspeed.utils import zero_to_fp32
        except ImportError:
            raise DataError("consolidating a DeepSpeed checkpoint needs the deepspeed package; install it "
                            "(pip install -c constraints.txt deepspeed).") from None
        with hold_torch_load(trust_pickle=trust_pickle) as held:
            try:
                state = zero_to_fp32.get_fp32_state_dict_from_zero_checkpoint(str(root), tag=described.tag)
            except DataError:
                raise
            except Exception as exc:
                if held.error is not None:
                    raise held.error from None
                raise DataError(f"DeepSpeed could not consolidate {described.folder}: {type(exc).__name__}: "
                                f"{str(exc).splitlines()[0] if str(exc) else ''}".rstrip(": ") + ".") from None
    state, _ = normalize_keys(dict(state))
    return state


def _natural(path: Path) -> list[Any]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path.name)]

