"""Torch pickle files (``.pt/.pth/.bin/.ckpt``) read without running code, and the key layouts inside them.

A pickle can make the loader call any importable function (``os.system`` included), so every torch file
is read with ``torch.load(weights_only=True)``: only tensors, plain containers and a short allowlist of
torch types load, and a file that asks for anything else is refused before anything from it runs. The
allowlist gains inert stand-ins for the few DeepSpeed classes found in ZeRO optimizer files (a loss-scaler
record, a fragment address, the stage enum), so DeepSpeed checkpoints are read without unpickling code and
without importing DeepSpeed. ``trust_pickle=True`` lifts all of this; callers warn before using it.

Key layouts. Open-Sora-Plan's transformer and WF-VAE use the same tensor names as osctl's plugins (checked
against the reference fixtures). What differs between files is the wrapping:

- training wrappers prefix every name: ``module.`` (DDP, DeepSpeed), ``_orig_mod.`` (``torch.compile``),
  ``_fsdp_wrapped_module.`` / ``_checkpoint_wrapped_module.`` (FSDP1, activation checkpointing);
  :func:`normalize_keys` removes them and says so;
- whole training states nest the weights: ``state_dict`` / ``model`` / ``module`` for the weights and
  ``ema_state_dict`` / ``ema`` for the EMA (the WF-VAE training ``.ckpt`` holds both; the reference loads
  the EMA); :func:`split_torch_object` finds them, plus optimizer state and the step counters.
"""

from __future__ import annotations

import io
import pickle
import warnings
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from osctl.ckpt.headers import TensorInfo
from osctl.errors import DataError, UsageError

WEIGHT_KEYS = ("state_dict", "model_state_dict", "model", "module", "net", "weights")
EMA_KEYS = ("ema_state_dict", "ema", "model_ema", "ema_model", "ema_state")
OPTIMIZER_KEYS = ("optimizer", "optimizer_state_dict", "optim", "optimizer_states")
STEP_KEYS = ("global_step", "global_steps", "step", "iteration")
#: prefixes training wrappers put in front of every name (removed when every key has them)
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
#: wrapper segments that may appear anywhere in a name (always removed)
WRAPPER_INFIXES = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.")


class Opaque:
    """Stand-in for a record-like class a trusted engine pickles (its attributes, no behaviour)."""

    def __repr__(self) -> str:
        return f"Opaque({vars(self)})"


class OpaqueInt(int):
    """Stand-in for an ``IntEnum`` a trusted engine pickles (e.g. DeepSpeed's ``ZeroStageEnum``)."""


#: classes found in DeepSpeed checkpoints, read into inert stand-ins
DEEPSPEED_STAND_INS: tuple[tuple[type, str], ...] = (
    (Opaque, "deepspeed.runtime.fp16.loss_scaler.LossScaler"),
    (Opaque, "deepspeed.runtime.fp16.loss_scaler.DynamicLossScaler"),
    (Opaque, "deepspeed.utils.tensor_fragment.fragment_address"),
    (OpaqueInt, "deepspeed.runtime.zero.config.ZeroStageEnum"),
)


def load_torch(path: Path, *, trust_pickle: bool = False, mmap: bool = True, stand_ins: bool = True) -> Any:
    """``torch.load`` a file on CPU with ``weights_only=True`` (memory-mapped when possible).

    Refusals and damage are one-sentence ``DataError``\\ s naming the file; with ``trust_pickle`` the
    file is unpickled with full Python semantics (only for files whose origin the user trusts).
    """
    import torch

    kwargs: dict[str, Any] = {"map_location": "cpu"}
    try:
        if trust_pickle:
            return _load_with_mmap_fallback(torch, path, weights_only=False, mmap=mmap, **kwargs)
        allowed = list(DEEPSPEED_STAND_INS) if stand_ins else []
        with torch.serialization.safe_globals(allowed):
            return _load_with_mmap_fallback(torch, path, weights_only=True, mmap=mmap, **kwargs)
    except pickle.UnpicklingError as exc:
        found = [] if trust_pickle else unsafe_globals(path)
        if not found and (trust_pickle or "weights only load failed" not in str(exc).lower()):
            raise DataError(f"{path} cannot be unpickled ({_first_line(exc)}); the file is damaged.") from None
        named = f" (it refers to {', '.join(found[:3])})" if found else ""
        raise DataError(
            f"{path} needs arbitrary unpickling{named}, so it was refused and nothing in it ran; "
            "convert it with --trust-pickle only if you trust where it came from."
        ) from None
    except DataError:
        raise
    except Exception as exc:  # torch raises many types for damaged files; none of them ran file code
        raise DataError(f"{path} cannot be read as a torch file ({_first_line(exc)}); it is damaged or not a "
                        "torch checkpoint.") from None


def _load_with_mmap_fallback(torch: Any, path: Path, *, mmap: bool, **kwargs: Any) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. "Detected pickle protocol 4": noise for a user
        if mmap and zipfile.is_zipfile(path):
            return torch.load(path, mmap=True, **kwargs)
        return torch.load(path, **kwargs)  # legacy (non-zip) files cannot be memory-mapped


def unsafe_globals(path: Path) -> list[str]:
    """The globals a torch file asks for beyond what ``weights_only`` allows (read, never executed)."""
    import torch

    try:
        if zipfile.is_zipfile(path):
            return list(torch.serialization.get_unsafe_globals_in_checkpoint(path))
        return _scan_pickle_globals(path.read_bytes())
    except Exception:  # a best-effort explanation only
        return []


def _scan_pickle_globals(data: bytes) -> list[str]:
    import pickletools

    found: list[str] = []
    strings: list[str] = []
    try:
        for opcode, arg, _ in pickletools.genops(io.BytesIO(data)):
            if opcode.name == "GLOBAL" and isinstance(arg, str):
                found.append(arg.replace(" ", "."))
            elif opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
                found.append(f"{strings[-2]}.{strings[-1]}")
            elif isinstance(arg, str):
                strings.append(arg)
    except Exception:
        pass
    safe = ("torch.", "collections.OrderedDict", "builtins.set", "builtins.frozenset")
    return [name for name in dict.fromkeys(found) if not name.startswith(safe)]


def _first_line(exc: BaseException) -> str:
    """The first sentence of an exception message (torch's are long), for one-line errors."""
    lines = str(exc).strip().splitlines()
    text = lines[0] if lines else ""
    text = text.split(". ")[0].rstrip(".")[:160]
    if len(text) < 20:  # e.g. KeyError('101'): the type says more than the message
        return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return text


def is_tensor_dict(obj: Any) -> bool:
    """A non-empty mapping whose values are all tensors (a flat state dict)."""
    import torch

    return isinstance(obj, Mapping) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


@dataclass
class TorchContents:
    """What a loaded torch object holds: weights, EMA weights, optimizer state and counters."""

    weights: dict[str, Any] | None = None
    weights_key: str | None = None  # where the weights sat ("" for a flat state dict)
    ema: dict[str, Any] | None = None
    ema_key: str | None = None
    optimizer_bytes: int | None = None
    optimizer_key: str | None = None
    step: int | None = None
    other_keys: list[str] = field(default_factory=list)


def split_torch_object(obj: Any) -> TorchContents:
    """Find the weights, EMA, optimizer state and step counter in a loaded torch object."""
    contents = TorchContents()
    if is_tensor_dict(obj):
        contents.weights, contents.weights_key = dict(obj), ""
        return contents
    if not isinstance(obj, Mapping):
        return contents
    for key in WEIGHT_KEYS:
        if is_tensor_dict(obj.get(key)):
            contents.weights, contents.weights_key = dict(obj[key]), key
            break
    for key in EMA_KEYS:
        if is_tensor_dict(obj.get(key)):
            contents.ema, contents.ema_key = dict(obj[key]), key
            break
    for key in OPTIMIZER_KEYS:
        if obj.get(key) is not None:
            contents.optimizer_bytes, contents.optimizer_key = tensor_bytes(obj[key]), key
            break
    for key in STEP_KEYS:
        value = obj.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            contents.step = value
            break
    used = {contents.weights_key, contents.ema_key, contents.optimizer_key}
    contents.other_keys = [str(k) for k in obj if k not in used]
    return contents


def tensor_bytes(obj: Any) -> int:
    """Bytes of all tensors inside a nested structure (dicts, lists, tuples)."""
    import torch

    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, Mapping):
        return sum(tensor_bytes(v) for v in obj.values())
    if isinstance(obj, list | tuple):
        return sum(tensor_bytes(v) for v in obj)
    return 0


def tensor_infos(state: Mapping[str, Any], file: str = "") -> list[TensorInfo]:
    """``TensorInfo`` for every tensor of a state dict (no data is read from a memory-mapped file)."""
    return [TensorInfo(name=str(k), shape=tuple(v.shape), dtype=dtype_name(v.dtype), file=file) for k, v in state.items()]


def dtype_name(dtype: Any) -> str:
    """``torch.bfloat16`` -> ``"bfloat16"``."""
    return str(dtype).removeprefix("torch.")


def normalize_keys(state: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Remove training-wrapper prefixes from tensor names; returns the new dict and what was done."""
    notes = []
    for prefix in WRAPPER_PREFIXES:
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
            notes.append(f"removed the {prefix!r} prefix from all {len(state)} tensor names (training wrapper)")
    for infix in WRAPPER_INFIXES:
        count = sum(infix in k for k in state)
        if count:
            state = {k.replace(infix, ""): v for k, v in state.items()}
            notes.append(f"removed {infix!r} from {count} tensor names (wrapper)")
    return state, notes


def read_torch_weights(path: Path, *, ema: bool = False, trust_pickle: bool = False) -> tuple[dict[str, Any], list[str]]:
    """The state dict of a torch file (``ema``: its EMA weights), wrapper prefixes removed; plus notes."""
    contents = split_torch_object(load_torch(path, trust_pickle=trust_pickle))
    if ema:
        if contents.ema is None:
            raise UsageError(f"{path} holds no EMA weights (no {' / '.join(EMA_KEYS[:2])} entry); drop --ema.")
        state, key = contents.ema, contents.ema_key
    else:
        if contents.weights is None:
            raise DataError(f"{path} holds no state dict of tensors (looked at the top level and "
                            f"{', '.join(WEIGHT_KEYS)}); it is not a weights file.")
        state, key = contents.weights, contents.weights_key
    notes = [f"took the tensors under {key!r}"] if key else []
    state, more = normalize_keys(state)
    return state, notes + more


def read_bin_folder(index_or_file: Path, *, trust_pickle: bool = False) -> dict[str, Any]:
    """The tensors of a ``*.bin`` weights file or a ``*.bin.index.json`` with its shards."""
    import json

    if not index_or_file.name.endswith(".index.json"):
        return read_torch_weights(index_or_file, trust_pickle=trust_pickle)[0]
    try:
        weight_map = json.loads(index_or_file.read_text(encoding="utf-8"))["weight_map"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(f"cannot read the index {index_or_file}: {exc}.") from None
    state: dict[str, Any] = {}
    for shard in sorted(set(weight_map.values())):
        shard_path = index_or_file.parent / Path(shard).name
        if not shard_path.is_file():
            raise DataError(f"shard {shard_path} listed in {index_or_file} is missing; copy or download it again.")
        state.update(read_torch_weights(shard_path, trust_pickle=trust_pickle)[0])
    missing = [k for k in weight_map if k not in state]
    if missing:
        raise DataError(f"{index_or_file} is wrong: tensor {missing[0]!r} is not in the shard it names.")
    return state
