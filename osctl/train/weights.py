"""Loading weights into a model: ``pretrained`` files and folders, never executing pickled code.

Accepted: a ``.safetensors`` file; a diffusers folder (``diffusion_pytorch_model*.safetensors``,
sharded with an index, or ``*.bin``); a ``.pt/.pth/.bin/.ckpt`` torch file read with
``weights_only=True`` (a ``state_dict``/``model``/``ema_state_dict`` entry is unwrapped). A file that
needs arbitrary unpickling is refused and nothing in it runs; a truncated or damaged file is a
``DataError`` naming it. Loading is non-strict and reported: loaded x/y tensors, and each skipped key
with its reason.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from osctl.errors import ConfigError, DataError

TORCH_SUFFIXES = {".pt", ".pth", ".bin", ".ckpt"}
#: what a refused weights file tells the user to do
REFUSED_ADVICE = "convert it to safetensors where you trust it (`osctl ckpt convert --trust-pickle`)"


@dataclass
class LoadReport:
    """What a non-strict load did."""

    source: str
    loaded: int = 0
    total: int = 0
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    #: the first values (float32) of tensors whose values as the file gave them are not in memory: stored in a
    #: smaller dtype (a LoRA base in ``train.base_dtype``, cast as it was read) or not loaded yet (a model sharded on
    #: the meta device, each rank to fill its own shards): what ``osctl.train.lora.base_fingerprint`` reads of them
    heads: dict[str, torch.Tensor] = field(default_factory=dict)

    def summary(self) -> str:
        """One line: loaded x/y plus counts of skipped keys by reason."""
        parts = [f"loaded {self.loaded}/{self.total} tensors from {self.source}"]
        if self.missing:
            parts.append(f"{len(self.missing)} missing (kept their initial values)")
        if self.unexpected:
            parts.append(f"{len(self.unexpected)} unexpected (ignored)")
        if self.mismatched:
            parts.append(f"{len(self.mismatched)} with a different shape (ignored)")
        return "; ".join(parts)

    def details(self) -> list[str]:
        """One line per skipped key with the reason."""
        lines = [f"missing: {k}" for k in self.missing]
        lines += [f"unexpected: {k}" for k in self.unexpected]
        lines += [f"shape mismatch: {k} checkpoint {list(a)} vs model {list(b)}" for k, a, b in self.mismatched]
        return lines


def load_torch_file(path: Path) -> dict[str, Any]:
    """A torch checkpoint read with ``weights_only=True``; code-carrying pickles are refused, damage is named."""
    from osctl.ckpt.torch_files import load_torch

    obj = load_torch(path, allowed=(), advice=REFUSED_ADVICE)
    if not isinstance(obj, dict):
        raise DataError(f"{path} holds a {type(obj).__name__}, not a state dict of tensors.")
    for key in ("ema_state_dict", "state_dict", "model", "module"):
        inner = obj.get(key)
        if isinstance(inner, dict) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
            return inner
    return obj


def load_safetensors_file(path: Path) -> dict[str, torch.Tensor]:
    """A ``.safetensors`` file, its header checked against the file first (a truncated file is named)."""
    from safetensors.torch import load_file

    from osctl.ckpt.headers import read_header
    from osctl.ckpt.torch_files import first_line

    read_header(path)
    try:
        return load_file(path)
    except Exception as exc:  # safetensors' own errors for damage the header check cannot see
        raise DataError(f"cannot read {path} ({first_line(exc)}); the file is damaged — copy it again.") from None


def weight_files(path: Path) -> tuple[str, list[Path]]:
    """The files holding the weights of ``path`` (a file or a diffusers/transformers folder) and their kind,
    ``"safetensors"`` or ``"torch"``; a missing path, an unknown format or a missing shard is a ``ConfigError``."""
    if not path.exists():
        raise ConfigError(f"weights path {path} does not exist; check train.pretrained / the --model-path.")
    if path.is_file():
        if path.suffix == ".safetensors":
            return "safetensors", [path]
        if path.suffix in TORCH_SUFFIXES:
            return "torch", [path]
        raise ConfigError(f"{path}: unknown weights format {path.suffix!r}; use .safetensors, .pt/.pth/.bin or a folder.")
    for index_name in ("diffusion_pytorch_model.safetensors.index.json", "model.safetensors.index.json"):
        index = path / index_name
        if index.is_file():
            from osctl.ckpt.headers import read_index

            shards = sorted(set(read_index(index).values()))
            for shard in shards:
                if not (path / shard).is_file():
                    raise ConfigError(f"{index} lists shard {shard}, which is missing from {path}.")
            return "safetensors", [path / shard for shard in shards]
    for name in ("diffusion_pytorch_model.safetensors", "model.safetensors"):
        if (path / name).is_file():
            return "safetensors", [path / name]
    for name in ("diffusion_pytorch_model.bin", "pytorch_model.bin"):
        if (path / name).is_file():
            return "torch", [path / name]
    raise ConfigError(f"{path} holds no weights file (diffusion_pytorch_model.safetensors, model.safetensors, *.bin).")


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of a weights file or diffusers/transformers folder, in memory at once (see :func:`load_into`
    for loading into a model without a second copy)."""
    kind, files = weight_files(path)
    state: dict[str, torch.Tensor] = {}
    for file in files:
        state.update(load_safetensors_file(file) if kind == "safetensors" else load_torch_file(file))
    return state


LOAD_CHUNK_BYTES = 256 * 2**20
"""Bytes of safetensors data :func:`load_into` holds in memory besides the model: it reads this much, copies it
into the model's tensors and lets it go before reading more."""


def _weight_sources(model: torch.nn.Module, source: Path) -> list[tuple[Path, str]]:
    """(file or folder, key prefix) of every part of ``model`` stored under ``source``.

    A model made of several diffusers models (``weight_parts()``, see :func:`osctl.train.export.save_model`)
    reads a folder part by part: each part's subfolder (or the folder itself), its keys given the part's prefix.
    """
    parts = getattr(model, "weight_parts", None)
    if not (callable(parts) and Path(source).is_dir()):
        return [(Path(source), "")]
    return [(Path(source) / subfolder if subfolder else Path(source), prefix) for subfolder, prefix, _ in parts()]


def read_model_state(model: torch.nn.Module, source: Path) -> dict[str, torch.Tensor]:
    """The tensors of ``source`` named as ``model``'s state dict, all in memory (see :func:`_weight_sources`)."""
    state: dict[str, torch.Tensor] = {}
    for path, prefix in _weight_sources(model, source):
        state.update({prefix + name: value for name, value in read_state_dict(path).items()})
    return state


def safetensors_chunks(file: Path, chunk_bytes: int,
                       names: AbstractSet[str] | None = None) -> Iterator[dict[str, torch.Tensor]]:
    """The tensors of ``file`` (or those ``names`` names), a few at a time (about ``chunk_bytes`` each, one tensor
    at least).

    Each chunk is read through its own ``safe_open``, which maps the file: closing it before the next chunk
    keeps the mapped pages of the file from adding up in the process's memory.
    """
    from safetensors import safe_open

    from osctl.ckpt.headers import read_header
    from osctl.ckpt.torch_files import first_line

    infos = [info for info in read_header(file).tensors.values() if names is None or info.name in names]
    start = 0
    while start < len(infos):
        stop, size = start, 0
        while stop < len(infos) and (stop == start or size + infos[stop].nbytes <= chunk_bytes):
            size += infos[stop].nbytes
            stop += 1
        try:
            with safe_open(str(file), framework="pt") as handle:
                chunk = {info.name: handle.get_tensor(info.name) for info in infos[start:stop]}
        except Exception as exc:  # safetensors' own errors for damage the header check cannot see
            raise DataError(f"cannot read {file} ({first_line(exc)}); the file is damaged — copy it again.") from None
        yield chunk
        start = stop


def safetensors_heads(file: Path, names: Iterable[str], count: int) -> dict[str, torch.Tensor]:
    """The first ``count`` values (flattened, in the file's dtype) of each tensor ``names`` names in ``file``, read
    through safetensors' slices: only the leading rows each needs, not the tensors. What a base fingerprint reads
    of weights that are not in memory whole (see :attr:`LoadReport.heads`)."""
    from safetensors import safe_open

    from osctl.ckpt.torch_files import first_line

    heads: dict[str, torch.Tensor] = {}
    try:
        with safe_open(str(file), framework="pt") as handle:
            for name in names:
                part = handle.get_slice(name)
                shape = part.get_shape()
                if not shape:
                    heads[name] = handle.get_tensor(name).reshape(-1)
                    continue
                row = math.prod(shape[1:])
                rows = shape[0] if row == 0 else min(shape[0], -(-count // row))
                heads[name] = part[:rows].reshape(-1)[:count].clone()
    except Exception as exc:  # safetensors' own errors for damage the header check cannot see
        raise DataError(f"cannot read {file} ({first_line(exc)}); the file is damaged — copy it again.") from None
    return heads


def load_into(model: torch.nn.Module, source: Path, *, chunk_bytes: int = LOAD_CHUNK_BYTES) -> LoadReport:
    """Copy every tensor of ``source`` whose name and shape match into ``model``; report the rest.

    Safetensors weights are read and copied a chunk at a time (:data:`LOAD_CHUNK_BYTES`), so loading needs
    the model's memory plus one chunk, not a second copy of the model; torch files are read whole.
    """
    own = model.state_dict()
    report = LoadReport(source=str(source), total=len(own))
    loaded: set[str] = set()
    for path, prefix in _weight_sources(model, source):
        kind, files = weight_files(path)
        for file in files:
            pieces = safetensors_chunks(file, chunk_bytes) if kind == "safetensors" else iter([load_torch_file(file)])
            for piece in pieces:
                usable = {}
                for name, value in piece.items():
                    key = prefix + name
                    if key not in own:
                        report.unexpected.append(key)
                    elif tuple(value.shape) != tuple(own[key].shape):
                        report.mismatched.append((key, tuple(value.shape), tuple(own[key].shape)))
                    else:
                        usable[key] = value
                model.load_state_dict(usable, strict=False)
                loaded.update(usable)
                del piece, usable
    report.missing = sorted(set(own) - loaded - {k for k, _, _ in report.mismatched})
    report.loaded = len(loaded)
    return report
