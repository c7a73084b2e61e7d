"""Loading weights into a model: ``pretrained`` files and folders, never executing pickled code.

Accepted: a ``.safetensors`` file; a diffusers folder (``diffusion_pytorch_model*.safetensors``,
sharded with an index, or ``*.bin``); a ``.pt/.pth/.bin/.ckpt`` torch file read with
``weights_only=True`` (a ``state_dict``/``model``/``ema_state_dict`` entry is unwrapped). A file that
needs arbitrary unpickling is refused and nothing in it runs; a truncated or damaged file is a
``DataError`` naming it. Loading is non-strict and reported: loaded x/y tensors, and each skipped key
with its reason.
"""

from __future__ import annotations

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


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of a weights file or diffusers/transformers folder."""
    if not path.exists():
        raise ConfigError(f"weights path {path} does not exist; check train.pretrained / the --model-path.")
    if path.is_file():
        if path.suffix == ".safetensors":
            return load_safetensors_file(path)
        if path.suffix in TORCH_SUFFIXES:
            return load_torch_file(path)
        raise ConfigError(f"{path}: unknown weights format {path.suffix!r}; use .safetensors, .pt/.pth/.bin or a folder.")
    for index_name in ("diffusion_pytorch_model.safetensors.index.json", "model.safetensors.index.json"):
        index = path / index_name
        if index.is_file():
            from osctl.ckpt.headers import read_index

            shards = sorted(set(read_index(index).values()))
            state: dict[str, torch.Tensor] = {}
            for shard in shards:
                if not (path / shard).is_file():
                    raise ConfigError(f"{index} lists shard {shard}, which is missing from {path}.")
                state.update(load_safetensors_file(path / shard))
            return state
    for name in ("diffusion_pytorch_model.safetensors", "model.safetensors"):
        if (path / name).is_file():
            return load_safetensors_file(path / name)
    for name in ("diffusion_pytorch_model.bin", "pytorch_model.bin"):
        if (path / name).is_file():
            return load_torch_file(path / name)
    raise ConfigError(f"{path} holds no weights file (diffusion_pytorch_model.safetensors, model.safetensors, *.bin).")


def read_model_state(model: torch.nn.Module, source: Path) -> dict[str, torch.Tensor]:
    """The tensors of ``source`` named as ``model``'s state dict.

    A model made of several diffusers models (``weight_parts()``, see :func:`osctl.train.export.save_model`)
    reads a folder part by part: each part's subfolder (or the folder itself), its keys given the part's prefix.
    """
    parts = getattr(model, "weight_parts", None)
    if not (callable(parts) and Path(source).is_dir()):
        return read_state_dict(source)
    state: dict[str, torch.Tensor] = {}
    for subfolder, prefix, _ in parts():
        folder = Path(source) / subfolder if subfolder else Path(source)
        state.update({prefix + name: value for name, value in read_state_dict(folder).items()})
    return state


def load_into(model: torch.nn.Module, source: Path) -> LoadReport:
    """Copy every tensor of ``source`` whose name and shape match into ``model``; report the rest."""
    incoming = read_model_state(model, source)
    own = model.state_dict()
    report = LoadReport(source=str(source), total=len(own))
    usable = {}
    for key, value in incoming.items():
        if key not in own:
            report.unexpected.append(key)
        elif tuple(value.shape) != tuple(own[key].shape):
            report.mismatched.append((key, tuple(value.shape), tuple(own[key].shape)))
        else:
            usable[key] = value
    report.missing = sorted(set(own) - set(usable) - {k for k, _, _ in report.mismatched})
    model.load_state_dict(usable, strict=False)
    report.loaded = len(usable)
    return report
