"""LoRA adapters in ``ckpt``: what an adapter file is (``inspect``), its ComfyUI naming (``convert --to
comfyui-lora``) and merging it into base weights (``convert --merge-lora``).

The adapter format is diffusers' (see :mod:`osctl.train.lora`). ComfyUI loads a LoRA of a diffusion model
from keys ``diffusion_model.<its own module name>.lora_down.weight`` / ``.lora_up.weight`` / ``.alpha``
(its generic LoRA loader), where the module names are the model's original (non-diffusers) ones. So a
family has a ComfyUI naming only when ComfyUI has a loader for it; :data:`COMFYUI_NAMING` maps the
diffusers module names of each such family (Wan 2.1/2.2: ``blocks.N.attn1.to_q`` -> ``blocks.N.self_attn.q``,
the inverse of diffusers' own ``_convert_non_diffusers_wan_lora_to_diffusers``). Open-Sora-Plan v1.3 has
no ComfyUI loader, so it has none.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from osctl.errors import DataError, UsageError

ADAPTER_FORMAT = "lora-adapter"
#: the adapter file diffusers' ``save_lora_weights`` writes and ``load_lora_weights`` reads
LORA_WEIGHTS = "pytorch_lora_weights.safetensors"
PREFIX = "transformer"  # diffusers' pipelines load a transformer LoRA from keys with this prefix
DIFFUSERS_META_KEY = "lora_adapter_metadata"  # safetensors metadata: the LoraConfig, keys prefixed "transformer."
OSCTL_META_KEY = "osctl_adapter"  # safetensors metadata: osctl's AdapterSpec (base class and fingerprint, step)


def read_metadata(path: Path) -> dict[str, Any]:
    """The adapter facts in a file's safetensors metadata (diffusers' and osctl's), without reading tensors."""
    import json

    from osctl.ckpt.headers import read_header

    raw = dict(read_header(path).metadata or {})
    facts: dict[str, Any] = {}
    for key in (DIFFUSERS_META_KEY, OSCTL_META_KEY):
        if key in raw:
            try:
                facts[key] = json.loads(raw[key])
            except json.JSONDecodeError:
                raise DataError(f"{path}: the {key} metadata is not JSON; the file is damaged.") from None
    return facts


def _wan_name(module: str) -> str | None:
    """Diffusers' Wan module name -> the original Wan name ComfyUI uses (None: no counterpart)."""
    rules = (
        (r"^blocks\.(\d+)\.attn1\.to_(q|k|v)$", r"blocks.\1.self_attn.\2"),
        (r"^blocks\.(\d+)\.attn1\.to_out\.0$", r"blocks.\1.self_attn.o"),
        (r"^blocks\.(\d+)\.attn2\.to_(q|k|v)$", r"blocks.\1.cross_attn.\2"),
        (r"^blocks\.(\d+)\.attn2\.to_out\.0$", r"blocks.\1.cross_attn.o"),
        (r"^blocks\.(\d+)\.attn2\.add_k_proj$", r"blocks.\1.cross_attn.k_img"),
        (r"^blocks\.(\d+)\.attn2\.add_v_proj$", r"blocks.\1.cross_attn.v_img"),
        (r"^blocks\.(\d+)\.ffn\.net\.0\.proj$", r"blocks.\1.ffn.0"),
        (r"^blocks\.(\d+)\.ffn\.net\.2$", r"blocks.\1.ffn.2"),
        (r"^proj_out$", "head.head"),
    )
    for pattern, replacement in rules:
        if re.match(pattern, module):
            return re.sub(pattern, replacement, module)
    return None


#: base model class -> (family name, diffusers module name -> ComfyUI module name)
COMFYUI_NAMING: dict[str, tuple[str, Callable[[str], str | None]]] = {
    "WanTransformer3DModel": ("Wan 2.1/2.2", _wan_name),
}


def describe_adapter(file: Path) -> dict[str, Any]:
    """Rank, alpha, targets, adapted modules and base (class, fingerprint) of an adapter file, from its
    header alone (no tensor data read)."""
    from osctl.ckpt.headers import read_header

    header = read_header(file)
    meta = read_metadata(file)
    names = list(header.tensors)
    modules = sorted({re.sub(r"\.lora_[AB]\.(weight|bias)$", "", n).removeprefix(f"{PREFIX}.")
                      for n in names if ".lora_" in n})
    ranks = sorted({info.shape[0] for n, info in header.tensors.items() if ".lora_A." in n and info.shape})
    osctl_meta = meta.get(OSCTL_META_KEY, {})
    diffusers = {k.removeprefix(f"{PREFIX}."): v for k, v in meta.get(DIFFUSERS_META_KEY, {}).items()}
    rank = osctl_meta.get("rank", diffusers.get("r", ranks[-1] if ranks else None))
    return {
        "file": str(file),
        "format": "diffusers/PEFT LoRA (pytorch_lora_weights.safetensors)",
        "rank": rank,
        "alpha": osctl_meta.get("alpha", diffusers.get("lora_alpha", rank)),
        "target_modules": osctl_meta.get("target_modules") or diffusers.get("target_modules"),
        "modules": len(modules),
        "parameters": sum(info.numel for info in header.tensors.values()),
        "bytes": sum(info.nbytes for info in header.tensors.values()),
        "base": {"class": osctl_meta.get("base_class"), "fingerprint": osctl_meta.get("base_fingerprint")},
        "step": osctl_meta.get("step"),
        "comfyui": osctl_meta.get("base_class") in COMFYUI_NAMING,
    }


def is_adapter_file(file: Path) -> bool:
    """True when a safetensors file holds a LoRA adapter (diffusers' metadata, or every tensor a LoRA matrix)."""
    from osctl.ckpt.headers import read_header

    header = read_header(file)
    if header.metadata.keys() & {DIFFUSERS_META_KEY, OSCTL_META_KEY}:
        return True
    return bool(header.tensors) and all(".lora_A." in n or ".lora_B." in n for n in header.tensors)


# --- convert ------------------------------------------------------------------------------------------------

def to_comfyui(src: Path, output: Path | None, *, force: bool = False, dry_run: bool = False) -> dict[str, Any]:
    """Write ``src``'s adapter with ComfyUI's key naming (one .safetensors file); returns the report."""
    from safetensors.torch import save_file

    from osctl.train.lora import adapter_file, read_adapter

    file = adapter_file(src)
    adapter = read_adapter(file)
    base = adapter.spec.base_class
    if base not in COMFYUI_NAMING:
        known = ", ".join(f"{family} ({cls})" for cls, (family, _) in COMFYUI_NAMING.items())
        raise UsageError(f"{file} adapts a {base or 'model of unknown class'}, which has no ComfyUI LoRA naming "
                         f"(ComfyUI has no loader for it); --to comfyui-lora knows {known}. Use the diffusers "
                         "file as it is.")
    family, rename = COMFYUI_NAMING[base]
    tensors = {}
    for module, (a, b) in sorted(adapter.modules.items()):
        name = rename(module)
        if name is None:
            raise UsageError(f"{file}: module {module!r} has no counterpart in ComfyUI's {family} naming; retrain "
                             "with train.lora.target_modules limited to attention, feed-forward and output layers.")
        key = f"diffusion_model.{name}"
        tensors[f"{key}.lora_down.weight"] = a.contiguous()
        tensors[f"{key}.lora_up.weight"] = b.contiguous()
        tensors[f"{key}.alpha"] = a.new_tensor(float(adapter.spec.alpha))
    target = output or file.with_name(file.stem + "_comfyui.safetensors")
    _check_target(target, force)
    if not dry_run:
        tmp = target.with_name(f".{target.name}.tmp")
        save_file(tensors, str(tmp), metadata={"format": "pt"})
        tmp.replace(target)
    return {"source": str(file), "output": str(target), "to": "comfyui-lora", "family": family,
            "modules": len(adapter.modules), "tensors": len(tensors), "dry_run": dry_run}


def merge_lora(base: Path, adapter_path: Path, output: Path, *, scale: float = 1.0, force: bool = False,
               dry_run: bool = False) -> dict[str, Any]:
    """Write ``base`` + ``scale`` x adapter: a diffusers folder when ``base`` is one (its config.json copied),
    else one .safetensors file. Every adapted module must exist in the base with the adapter's shape."""
    from osctl.train.export import save_model_folder
    from osctl.train.lora import merge_into, read_adapter
    from osctl.train.weights import read_state_dict

    adapter = read_adapter(adapter_path)
    state = read_state_dict(Path(base))
    merged = merge_into(state, adapter, scale)
    folder_output = Path(base).is_dir()
    if not folder_output and output.suffix != ".safetensors":
        raise UsageError(f"-o {output}: merging into a weights file writes one .safetensors file; end the name "
                         "with .safetensors.")
    _check_target(output, force)
    if not dry_run:
        staging = output.with_name(f".{output.name}.partial")
        if staging.exists():
            shutil.rmtree(staging) if staging.is_dir() else staging.unlink()
        if folder_output:
            import json

            config = json.loads((Path(base) / "config.json").read_text()) if (Path(base) / "config.json").is_file() \
                else {}
            save_model_folder(staging, config, state)
        else:
            from safetensors.torch import save_file

            save_file({k: v.contiguous() for k, v in state.items()}, str(staging), metadata={"format": "pt"})
        if output.exists():
            shutil.rmtree(output) if output.is_dir() else output.unlink()
        staging.replace(output)
    return {"source": str(base), "adapter": adapter.source, "output": str(output), "to": "merged", "scale": scale,
            "merged_modules": len(merged), "tensors": len(state), "dry_run": dry_run}


def _check_target(target: Path, force: bool) -> None:
    if target.exists() and not force:
        raise UsageError(f"{target} already exists; pass --force to replace it or choose another -o.")
