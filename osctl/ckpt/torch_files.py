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

import contextlib
import io
import os
import pickle
import warnings
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from osctl.ckpt.headers import TensorInfo
from osctl.errors import DataError, OsctlError, UsageError

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


#: what a refusal tells the user to do, by default (the convert/inspect commands offer --trust-pickle)
TRUST_PICKLE_ADVICE = "convert it with --trust-pickle only if you trust where it came from"
#: plain values a record class admitted by weights_only loading may hold (checked after loading)
_PLAIN_SCALARS = (bool, int, float, complex, str, bytes, type(None))


def load_torch(source: Path | BinaryIO, *, trust_pickle: bool = False, mmap: bool = True,
               allowed: Sequence[Any] = DEEPSPEED_STAND_INS, map_location: Any = "cpu",
               advice: str = TRUST_PICKLE_ADVICE, name: str | None = None) -> Any:
    """``torch.load`` a file (or an in-memory stream) with ``weights_only=True``, memory-mapped when possible.

    ``allowed`` are the classes admitted beyond torch's own allowlist (``(class, "module.Name")``
    pairs or classes, as ``torch.serialization.safe_globals`` takes them); instances of them must hold
    plain data only. Refusals and damage are one-sentence ``DataError``\\ s naming the file (``name``
    for a stream) and ending with ``advice``; with ``trust_pickle`` the file is unpickled with full
    Python semantics (only for files whose origin the user trusts).
    """
    import torch

    label = name or str(source)
    if not isinstance(source, Path):
        source = io.BytesIO(source.read())
    kwargs: dict[str, Any] = {"map_location": map_location}
    try:
        if trust_pickle:
            return _load_with_mmap_fallback(torch, source, weights_only=False, mmap=mmap, **kwargs)
        with torch.serialization.safe_globals(list(allowed)):
            loaded = _load_with_mmap_fallback(torch, source, weights_only=True, mmap=mmap, **kwargs)
    except pickle.UnpicklingError as exc:
        admitted = {_global_name(entry) for entry in allowed}
        found = [] if trust_pickle else [g for g in unsafe_globals(source) if g not in admitted]
        if not found and (trust_pickle or "weights only load failed" not in str(exc).lower()):
            raise DataError(f"{label} cannot be unpickled ({first_line(exc)}); the file is damaged.") from None
        named = f" (it refers to {', '.join(found[:3])})" if found else ""
        raise DataError(f"{label} needs arbitrary unpickling{named}, so it was refused and nothing in it ran; "
                        f"{advice}.") from None
    except DataError:
        raise
    except Exception as exc:  # torch raises many types for damaged files; none of them ran file code
        raise DataError(f"{label} cannot be read as a torch file ({first_line(exc)}); it is damaged or not a "
                        "torch checkpoint.") from None
    records = tuple(_class_of(entry) for entry in allowed)
    if records:
        _check_plain_records(loaded, records, label)
    return loaded


def _load_with_mmap_fallback(torch: Any, source: Path | io.BytesIO, *, mmap: bool, **kwargs: Any) -> Any:
    load = getattr(torch.load, "osctl_real_load", torch.load)  # the real loader, also while a hold is active
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. "Detected pickle protocol 4": noise for a user
        if mmap and isinstance(source, Path) and zipfile.is_zipfile(source):
            return load(source, mmap=True, **kwargs)
        return load(source, **kwargs)  # legacy (non-zip) files and streams cannot be memory-mapped


def _class_of(entry: Any) -> type:
    return entry[0] if isinstance(entry, tuple) else entry


def _global_name(entry: Any) -> str:
    if isinstance(entry, tuple):
        return str(entry[1])
    return f"{entry.__module__}.{entry.__qualname__}"


def _check_plain_records(obj: Any, records: tuple[type, ...], label: str) -> None:
    """Instances of the admitted record classes must hold plain data (numbers, strings, tensors, dtypes and
    containers of them) and never shadow one of their class's methods: a file cannot smuggle a callable in."""
    import torch

    def plain(value: Any) -> bool:
        if isinstance(value, (*_PLAIN_SCALARS, torch.Tensor, torch.dtype, torch.device, torch.Size)):
            return True
        if isinstance(value, list | tuple | set | frozenset):
            return all(plain(v) for v in value)
        if isinstance(value, dict):
            return all(plain(k) and plain(v) for k, v in value.items())
        return False

    stack, seen = [obj], set()
    while stack:
        item = stack.pop()
        if id(item) in seen or isinstance(item, (*_PLAIN_SCALARS, torch.Tensor)):
            continue
        seen.add(id(item))
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list | tuple | set | frozenset):
            stack.extend(item)
        elif isinstance(item, records) and hasattr(item, "__dict__"):
            cls = type(item)
            for key, value in vars(item).items():
                if key.startswith("__") or callable(getattr(cls, key, None)) or not plain(value):
                    raise DataError(f"{label} holds a {cls.__module__}.{cls.__qualname__} whose {key!r} is not "
                                    "plain data; it was refused (the file is damaged or crafted).")


@dataclass
class TorchLoadHold:
    """What happened under :func:`hold_torch_load`: the first refusal or damage its loads reported."""

    error: OsctlError | None = None


@contextlib.contextmanager
def hold_torch_load(*, trust_pickle: bool = False, allowed: Sequence[Any] = DEEPSPEED_STAND_INS,
                    advice: str = TRUST_PICKLE_ADVICE) -> Iterator[TorchLoadHold]:
    """Within the block every ``torch.load`` call is osctl's :func:`load_torch` (weights_only, ``allowed``).

    For third-party loaders (DeepSpeed's engine and ``zero_to_fp32``, diffusers' ``from_pretrained``)
    that call ``torch.load(..., weights_only=False)`` or wrap its errors in their own: the first
    ``DataError`` raised is kept in the yielded :class:`TorchLoadHold`, so the caller can report it
    even when the library replaced it with a vaguer exception.
    """
    import torch

    real = torch.load
    hold = TorchLoadHold()

    def held_load(f: Any, map_location: Any = None, *args: Any, **kwargs: Any) -> Any:
        source = Path(f) if isinstance(f, str | os.PathLike) else f
        name = None if isinstance(source, Path) else getattr(f, "name", None)
        try:
            return load_torch(source, trust_pickle=trust_pickle, allowed=allowed, advice=advice, name=name,
                              map_location=map_location if map_location is not None else "cpu",
                              mmap=bool(kwargs.get("mmap", False)))
        except OsctlError as exc:
            if hold.error is None:
                hold.error = exc
            raise

    held_load.osctl_real_load = getattr(real, "osctl_real_load", real)  # type: ignore[attr-defined]
    torch.load = held_load
    try:
        yield hold
    finally:
        torch.load = real


def deepspeed_classes() -> list[type]:
    """The real DeepSpeed classes behind :data:`DEEPSPEED_STAND_INS` (imports DeepSpeed).

    Resuming a ZeRO run needs them, not the stand-ins: the engine keeps the loaded loss scaler and calls
    its methods. Admitted through :func:`load_torch`, their instances are built without running any code
    and may hold plain data only.
    """
    import importlib

    classes = []
    for _, qualified in DEEPSPEED_STAND_INS:
        module, _, attribute = qualified.rpartition(".")
        classes.append(getattr(importlib.import_module(module), attribute))
    return classes


def unsafe_globals(source: Path | io.BytesIO) -> list[str]:
    """The globals a torch file asks for beyond what ``weights_only`` allows (read, never executed)."""
    import torch

    try:
        if isinstance(source, io.BytesIO):
            source.seek(0)
        if zipfile.is_zipfile(source):
            if isinstance(source, io.BytesIO):
                source.seek(0)
            return list(torch.serialization.get_unsafe_globals_in_checkpoint(source))
        data = source.getvalue() if isinstance(source, io.BytesIO) else source.read_bytes()
        return _scan_pickle_globals(data)
    except Exception:  # a best-effort explanation only
        return []


def _scan_pickle_globals(data: bytes) -> list[str]:
    """Globals named by a plain pickle, found by walking its opcodes (strings followed through the memo)."""
    import pickletools

    found: list[str] = []
    pushed: list[Any] = []  # values pushed onto the pickle stack (strings; None for anything else)
    memo: dict[Any, Any] = {}
    try:
        for opcode, arg, _ in pickletools.genops(io.BytesIO(data)):
            name = opcode.name
            if name == "GLOBAL" and isinstance(arg, str):
                found.append(arg.replace(" ", "."))
                pushed.append(None)
            elif name == "STACK_GLOBAL":
                if len(pushed) >= 2 and isinstance(pushed[-2], str) and isinstance(pushed[-1], str):
                    found.append(f"{pushed[-2]}.{pushed[-1]}")
                pushed.append(None)
            elif name == "MEMOIZE":
                memo[len(memo)] = pushed[-1] if pushed else None
            elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
                memo[arg] = pushed[-1] if pushed else None
            elif name in ("GET", "BINGET", "LONG_BINGET"):
                pushed.append(memo.get(arg))
            else:
                pushed.append(arg if isinstance(arg, str) else None)
    except Exception:
        pass
    safe = ("torch.", "collections.OrderedDict", "builtins.set", "builtins.frozenset")
    return [name for name in dict.fromkeys(found) if not name.startswith(safe)]


def first_line(exc: BaseException) -> str:
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
