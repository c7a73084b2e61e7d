"""Write a diffusers-style model folder (``config.json`` + safetensors) from a state dict.

The folder loads with the model class's ``from_pretrained`` (ours and the reference's). Large
state dicts are sharded with an index file, as diffusers does (:mod:`osctl.ckpt.shards`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

WEIGHTS_STEM = "diffusion_pytorch_model"


def save_model_folder(folder: Path, config: dict[str, Any], state_dict: dict[str, torch.Tensor], *,
                      dtype: torch.dtype | None = None, max_shard_bytes: int | None = None,
                      extra_files: dict[str, Any] | None = None) -> list[Path]:
    """Write ``config.json`` and the weights (sharded above ``max_shard_bytes``, default diffusers' 10 GB);
    returns the written files. The weights go through :mod:`osctl.ckpt.shards`, as ``ckpt convert``'s do."""
    from osctl.ckpt.shards import plan_shards, write_shards

    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).contiguous()
               for k, v in state_dict.items()}
    config_path = folder / "config.json"
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True, default=_json_default) + "\n")
    shards = plan_shards({k: v.numel() * v.element_size() for k, v in tensors.items()}, WEIGHTS_STEM, max_shard_bytes)
    written = [config_path, *(folder / name for name in write_shards(folder, WEIGHTS_STEM, shards, tensors))]
    for name, payload in (extra_files or {}).items():
        path = folder / name
        path.write_text(json.dumps(payload, indent=2, sort_keys=True, default=_json_default) + "\n")
        written.append(path)
    return written


def save_model(folder: Path, module: Any, state_dict: dict[str, torch.Tensor], *, dtype: torch.dtype | None = None,
               extra_files: dict[str, Any] | None = None) -> list[Path]:
    """Write ``module``'s weights (``state_dict``, its full state) as diffusers folder(s) under ``folder``.

    A module made of several diffusers models says so with ``weight_parts() -> [(subfolder, key prefix,
    submodule)]`` (osctl's diffusers families: ``transformer/`` and ``transformer_2/`` of a two-expert Wan
    2.2, or one transformer saved as ``folder`` itself); each part is written with its own config and its keys
    without the prefix, so the family's ``from_pretrained`` loads it. Other modules are one folder.
    ``extra_files`` go to ``folder`` itself.
    """
    parts = getattr(module, "weight_parts", None)
    if not callable(parts):
        return save_model_folder(folder, model_config(module), state_dict, dtype=dtype, extra_files=extra_files)
    written: list[Path] = []
    for subfolder, prefix, part in parts():
        tensors = {name[len(prefix):]: value for name, value in state_dict.items() if name.startswith(prefix)}
        written += save_model_folder(folder / subfolder if subfolder else folder, model_config(part), tensors,
                                     dtype=dtype)
    for name, payload in (extra_files or {}).items():
        path = folder / name
        path.write_text(json.dumps(payload, indent=2, sort_keys=True, default=_json_default) + "\n")
        written.append(path)
    return written


def model_config(module: Any) -> dict[str, Any]:
    """The diffusers config of ``module`` (``_class_name`` included), as written by ``save_pretrained``."""
    config = {k: v for k, v in dict(module.config).items() if not k.startswith("_")}
    config["_class_name"] = model_class(module).__name__
    try:
        import diffusers

        config["_diffusers_version"] = diffusers.__version__
    except ImportError:  # pragma: no cover - diffusers is a dependency
        pass
    return config


def model_class(module: Any) -> type:
    """The model's own class: FSDP2 swaps in a generated subclass (``FSDPOpenSoraT2V_v1_3``) that no
    loader knows, so skip classes defined by torch.distributed."""
    for cls in type(module).__mro__:
        if not cls.__module__.startswith("torch.distributed"):
            return cls
    return type(module)


def _json_default(value: Any) -> Any:
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")
