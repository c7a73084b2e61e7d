"""``osctl ckpt inspect``: what a checkpoint is, what it holds and whether it is intact.

:func:`inspect_path` returns one JSON-able dict (schema ``osctl.ckpt.inspect/1``, documented in the
command's help and the README). safetensors files and diffusers folders are described from their
headers alone (no torch import, no tensor data read); torch files are memory-mapped with
``weights_only=True``; engine folders are read through :mod:`osctl.ckpt.engines`.

Integrity: an osctl checkpoint's ``manifest.json`` lists every file with size and SHA-256; sizes are
always compared, hashes with ``verify_hashes`` (they read every byte). Other formats are checked for
self-consistency (headers against file sizes, indexes against shards); damage there is a ``DataError``.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from osctl.ckpt import detect as fmt
from osctl.ckpt.headers import TensorInfo, read_header, read_weights
from osctl.errors import DataError, UsageError
from osctl.utils.files import file_sha256

SCHEMA = "osctl.ckpt.inspect/1"
#: config keys of diffusers' EMAModel bookkeeping (present in an OSP ``model_ema/config.json``)
EMA_CONFIG_KEYS = ("decay", "min_decay", "optimization_step", "update_after_step", "use_ema_warmup", "inv_gamma", "power")
#: config keys shown first in the human output (the rest are in --json)
HEADLINE_KEYS = ("num_layers", "num_attention_heads", "attention_head_dim", "in_channels", "out_channels",
                 "caption_channels", "patch_size", "patch_size_t", "sparse1d", "sparse_n", "latent_dim",
                 "base_channels", "d_model", "num_heads", "vocab_size")


def summarize(infos: Iterable[TensorInfo], path: str | None = None) -> dict[str, Any]:
    """Tensor count, element count (parameters and persistent buffers), bytes, dtypes and top-level modules."""
    infos = list(infos)
    dtypes: dict[str, dict[str, int]] = {}
    modules: dict[str, int] = {}
    for info in infos:
        entry = dtypes.setdefault(info.dtype, {"tensors": 0, "parameters": 0})
        entry["tensors"] += 1
        entry["parameters"] += info.numel
        top = info.name.split(".", 1)[0]
        modules[top] = modules.get(top, 0) + info.numel
    return {
        "path": path,
        "tensors": len(infos),
        "parameters": sum(i.numel for i in infos),
        "bytes": sum(i.nbytes for i in infos),
        "dtypes": dtypes,
        "modules": modules,
        "files": sorted({i.file for i in infos if i.file}),
    }


def inspect_path(path: Path, *, tensors: bool = False, recipe: Path | None = None,
                 recipe_overrides: list[str] | None = None, verify_hashes: bool = False,
                 trust_pickle: bool = False) -> dict[str, Any]:
    """Describe ``path`` (schema ``osctl.ckpt.inspect/1``); see the module docstring for what is read.

    Unreadable or damaged inputs raise ``DataError`` (one sentence, exit 1); manifest mismatches of an
    osctl checkpoint are reported in ``integrity`` (``ok: false``) so the rest can still be shown.
    """
    found = fmt.detect(Path(path))
    report: dict[str, Any] = {
        "schema": SCHEMA, "path": str(found.path), "format": found.format, "description": found.description,
        "size_bytes": 0, "file_count": 0, "architecture": None, "weights": None,
        "ema": {"present": False}, "global_step": None, "training": None, "engine": None,
        "optimizer": {"present": False, "bytes": 0, "files": []},
        "recipe": {"fingerprint": None}, "integrity": {"ok": True, "manifest": None, "problems": []},
        "notes": list(found.notes),
    }
    report["size_bytes"], report["file_count"] = _disk_usage(found.path)
    handler = _HANDLERS[found.format]
    try:
        infos = handler(found, report, trust_pickle=trust_pickle, verify_hashes=verify_hashes)
    except DataError as exc:
        if report["integrity"]["ok"]:
            raise
        infos = []  # damage the manifest check already reported; show what could be read
        report["notes"].append(f"could not describe everything: {exc.message}")
    _adapters(found, report)
    if report["architecture"] is None and infos:
        guessed = fmt.guess_class([i.name for i in infos])
        if guessed:
            report["architecture"] = _architecture(guessed, None, "tensor names", None)
    if recipe is not None:
        _compare_recipe(found, report, recipe, recipe_overrides or [])
    if tensors:
        report["tensors"] = [i.as_dict() for i in infos]
    return report


# --- per-format handlers: fill ``report`` and return the main weights' tensor infos ---------------------

def _osctl_checkpoint(found: fmt.Detected, report: dict[str, Any], *, trust_pickle: bool,
                      verify_hashes: bool) -> list[TensorInfo]:
    root = found.path
    report["integrity"] = check_manifest(root, verify_hashes=verify_hashes)
    if found.partial:
        _unfinished(found, report)
    state_file = root / "trainer_state.json"
    if state_file.is_file():
        state = _read_json(state_file)
        report["global_step"] = state.get("step")
        report["recipe"]["fingerprint"] = state.get("recipe_fingerprint")
        report["training"] = {k: v for k, v in state.items() if k not in ("step", "recipe_fingerprint")}
    else:
        report["notes"].append("trainer_state.json is missing (the save did not finish?)")
    infos = _training_weights(found, report, trust_pickle=trust_pickle)
    if found.ema_dir is not None and (found.ema_dir / "ema.json").is_file():
        report["ema"]["details"] = _read_json(found.ema_dir / "ema.json")
    state_dir = root / "training_state"
    files = [p for p in (state_dir / n for n in ("optimizer.pt", "lr_scheduler.pt", "scaler.pt")) if p.is_file()]
    if (state_dir / "optimizer.pt").is_file():
        optimizer = state_dir / "optimizer.pt"
        report["optimizer"] = {"present": True, "bytes": optimizer.stat().st_size, "files": [_rel(optimizer, root)]}
        report["engine"] = {"kind": "torch", "path": "training_state", "files": [_rel(p, root) for p in files]}
    _engine(found, report, trust_pickle=trust_pickle)
    return infos


def _unfinished(found: fmt.Detected, report: dict[str, Any]) -> None:
    """A ``.checkpoint-N.partial`` folder fails integrity whatever it holds: its save never finished."""
    match = fmt.PARTIAL_NAME.match(found.path.name)
    name = match.group(1) if match else found.path.name
    integrity = report["integrity"]
    sentence = (f"{found.path} is the unfinished save of {name} (the run stopped while writing it); it is not "
                "resumable and may miss files — use a complete checkpoint-N.")
    kept = integrity["problems"] if integrity.get("manifest") else []  # "manifest missing" says less than this
    integrity.update(ok=False, problems=[sentence, *kept])
    report["notes"].append(f"an interrupted save: osctl train writes {name} here and renames it when complete")


def _osp_training(found: fmt.Detected, report: dict[str, Any], *, trust_pickle: bool,
                  verify_hashes: bool) -> list[TensorInfo]:
    match = fmt.CHECKPOINT_NAME.match(found.path.name)
    if match:
        report["global_step"] = int(match.group(1))
    infos = _training_weights(found, report, trust_pickle=trust_pickle)
    if found.ema_dir is not None:
        config = fmt.read_config(found.ema_dir / "config.json")
        details = {k: config[k] for k in EMA_CONFIG_KEYS if k in config}
        if details:
            report["ema"]["details"] = details
    report["integrity"]["checked"] = "safetensors headers and indexes"
    for name in ("optimizer.bin", "optimizer.pt"):  # accelerate without DeepSpeed
        if (found.path / name).is_file():
            report["optimizer"] = {"present": True, "bytes": (found.path / name).stat().st_size, "files": [name]}
    _engine(found, report, trust_pickle=trust_pickle)
    if report["global_step"] is None and report["ema"].get("details", {}).get("optimization_step") is not None:
        report["global_step"] = report["ema"]["details"]["optimization_step"]
    return infos


def _training_weights(found: fmt.Detected, report: dict[str, Any], *, trust_pickle: bool) -> list[TensorInfo]:
    root = found.path
    infos: list[TensorInfo] = []
    if found.model_dir is not None:
        infos = _model_folder(found.model_dir, root, report, trust_pickle=trust_pickle)
    else:
        report["notes"].append("no model/ folder: weights are described from the engine state")
    if found.ema_dir is not None:
        ema_infos = _folder_infos(found.ema_dir, root, trust_pickle=trust_pickle)
        report["ema"] = {"present": True, **summarize(ema_infos, _rel(found.ema_dir, root))}
    return infos


def _model_folder(folder: Path, root: Path, report: dict[str, Any], *, trust_pickle: bool) -> list[TensorInfo]:
    parts = fmt.part_folders(folder)
    if parts:  # a model saved in parts (e.g. model/transformer/ + model/transformer_2/)
        infos = _folder_infos(folder, root, trust_pickle=trust_pickle)
        report["weights"] = summarize(infos, _rel(folder, root))
        report["parts"] = {p.name: summarize(_folder_infos(p, root, trust_pickle=trust_pickle), _rel(p, root))
                           for p in parts}
        config = fmt.read_config(parts[0] / "config.json")
        report["architecture"] = _architecture(fmt.class_name_of(config), config,
                                               _rel(parts[0] / "config.json", root), folder)
        return infos
    config_path = folder / "config.json"
    config = fmt.read_config(config_path) if config_path.is_file() else None
    infos = _folder_infos(folder, root, trust_pickle=trust_pickle)
    report["weights"] = summarize(infos, _rel(folder, root))
    if config is not None:
        report["architecture"] = _architecture(fmt.class_name_of(config), config, _rel(config_path, root), folder)
        if any(k in config for k in ("decay", "optimization_step")) and folder == root:
            report["ema"] = {"present": True, "path": ".", "details": {k: config[k] for k in EMA_CONFIG_KEYS
                                                                       if k in config}}
            report["notes"].append("config.json carries EMA bookkeeping: this folder holds EMA weights")
    return infos


def _folder_infos(folder: Path, root: Path, *, trust_pickle: bool) -> list[TensorInfo]:
    parts = fmt.part_folders(folder)
    if parts:  # tensors named as the whole model's state dict: "<part>.<name>"
        return [dataclasses.replace(i, name=f"{p.name}.{i.name}")
                for p in parts for i in _folder_infos(p, root, trust_pickle=trust_pickle)]
    weights = fmt.find_weights(folder, [fmt.DIFFUSERS_STEM, *fmt.TRANSFORMERS_STEMS])
    if weights is not None:
        return list(read_weights(weights, root=root).tensors.values())
    for name in (f"{fmt.DIFFUSERS_STEM}.bin.index.json", f"{fmt.DIFFUSERS_STEM}.bin", "pytorch_model.bin"):
        if (folder / name).is_file():
            from osctl.ckpt.torch_files import read_bin_folder, tensor_infos

            return tensor_infos(read_bin_folder(folder / name, trust_pickle=trust_pickle), _rel(folder / name, root))
    raise DataError(f"{folder} has no weights (diffusion_pytorch_model*.safetensors, model*.safetensors or *.bin); "
                    "the folder is incomplete.")


def _engine(found: fmt.Detected, report: dict[str, Any], *, trust_pickle: bool) -> list[TensorInfo]:
    """Describe the DeepSpeed/DCP engine state of a training checkpoint (optimizer size, stage, ranks)."""
    if found.engine is None:
        if found.format == fmt.OSP_TRAINING and (found.path / "pytorch_model").is_dir():
            report["notes"].append("pytorch_model/ present but no 'latest' file: engine state not described")
        return []
    root = found.path
    if (found.engine / ".metadata").is_file():
        from osctl.ckpt.engines import EMA_GROUPS, MODEL_GROUPS, OPTIMIZER_GROUPS, read_dcp

        dcp = read_dcp(found.engine)
        groups = dcp.groups()
        optim_group = dcp.pick(OPTIMIZER_GROUPS)
        optim_bytes = sum(i.nbytes for i in groups.get(optim_group, [])) if optim_group else 0
        report["engine"] = {"kind": "dcp", "path": _rel(found.engine, root), "ranks": dcp.ranks,
                            "groups": {g or "(top level)": len(items) for g, items in groups.items()},
                            "files": [_rel(p, root) for p in dcp.files]}
        if optim_group:
            report["optimizer"] = {"present": True, "bytes": optim_bytes, "files": [_rel(p, root) for p in dcp.files],
                                   "group": optim_group}
        model_group = dcp.pick(MODEL_GROUPS)
        ema_group = dcp.pick(EMA_GROUPS)
        if ema_group and not report["ema"]["present"]:
            report["ema"] = {"present": True, **summarize(dcp.infos(ema_group), f"{_rel(found.engine, root)}:{ema_group}")}
        return dcp.infos(model_group) if model_group is not None else []
    from osctl.ckpt.engines import read_deepspeed

    ds = read_deepspeed(found.engine, found.engine_tag, trust_pickle=trust_pickle)
    report["engine"] = {"kind": "deepspeed", "path": _rel(found.engine, root), "tag": ds.tag,
                        "zero_stage": ds.zero_stage, "world_size": ds.world_size, "ds_version": ds.ds_version,
                        "model_states": [_rel(p, root) for p in ds.model_files],
                        "optim_states": [_rel(p, root) for p in ds.optim_files]}
    if ds.optim_files:
        report["optimizer"] = {"present": True, "bytes": sum(p.stat().st_size for p in ds.optim_files),
                               "files": [_rel(p, root) for p in ds.optim_files]}
    if report["global_step"] is None:
        report["global_step"] = ds.global_step
    return ds.infos


def _diffusers(found: fmt.Detected, report: dict[str, Any], *, trust_pickle: bool,
               verify_hashes: bool) -> list[TensorInfo]:
    report["integrity"]["checked"] = "safetensors headers and index"
    return _model_folder(found.path, found.path, report, trust_pickle=trust_pickle)


def _pipeline(found: fmt.Detected, report: dict[str, Any], *, trust_pickle: bool,
              verify_hashes: bool) -> list[TensorInfo]:
    """A released (or exported) diffusers pipeline: its class, each component's class, loader and size; the
    transformer(s) are the weights."""
    root = found.path
    index = fmt.read_config(root / "model_index.json")
    components: dict[str, Any] = {}
    transformers: list[TensorInfo] = []
    for name, entry in sorted(index.items()):
        if name.startswith("_") or not isinstance(entry, list) or len(entry) != 2:
            continue
        library, class_name = entry
        if class_name is None:
            continue
        folder = root / name
        info: dict[str, Any] = {"library": library, "class_name": class_name, "loads_with": fmt.loader_for(class_name),
                                "path": name, "present": folder.is_dir()}
        if folder.is_dir() and (folder / "config.json").is_file():
            try:
                infos = _folder_infos(folder, root, trust_pickle=trust_pickle)
            except DataError as exc:
                info["problem"] = exc.message
            else:
                info["parameters"] = sum(i.numel for i in infos)
                info["bytes"] = sum(i.nbytes for i in infos)
                if name.startswith("transformer"):
                    transformers += [dataclasses.replace(i, name=f"{name}.{i.name}") for i in infos]
        components[name] = info
    settings = {k: v for k, v in index.items() if not k.startswith("_") and not isinstance(v, list)}
    report["pipeline"] = {"class_name": index.get("_class_name"), "settings": settings, "components": components}
    first = next((c for n, c in components.items() if n.startswith("transformer")), None)
    if first is not None:
        config_path = root / first["path"] / "config.json"
        config = fmt.read_config(config_path) if config_path.is_file() else None
        report["architecture"] = _architecture(first["class_name"], config, _rel(config_path, root), None)
        report["architecture"]["pipeline"] = index.get("_class_name")
    if transformers:
        report["weights"] = summarize(transformers, ".")
    missing = [n for n, c in components.items() if not c["present"]]
    if missing:
        report["integrity"].update(ok=False, problems=[f"model_index.json lists {', '.join(missing)} but the folder "
                                                       "has no such subfolder: the download is incomplete."])
    report["integrity"]["checked"] = "model_index.json against the component folders, safetensors headers"
    return transformers


def _safetensors_folder(found: fmt.Detected, report: dict[str, Any], *, trust_pickle: bool,
                        verify_hashes: bool) -> list[TensorInfo]:
    assert found.weights is not None
    report["integrity"]["checked"] = "safetensors headers and index"
    weights = read_weights(found.weights, root=found.path)
    infos = list(weights.tensors.values())
    report["weights"] = summarize(infos, ".")
    return infos


def _safetensors(found: fmt.Detected, report: dict[str, Any], *, trust_pickle: bool,
                 verify_hashes: bool) -> list[TensorInfo]:
    header = read_header(found.path, label=found.path.name)
    infos = list(header.tensors.values())
    report["integrity"]["checked"] = "safetensors header against the file size"
    report["weights"] = summarize(infos, found.path.name)
    if header.metadata:
        report["metadata"] = header.metadata
    config_path = found.path.parent / "config.json"
    if config_path.is_file():
        report["notes"].append(f"a config.json lies next to it ({config_path}); convert --to diffusers can use it "
                               "with --config")
    return infos


def _torch_file(found: fmt.Detected, report: dict[str, Any], *, trust_pickle: bool,
                verify_hashes: bool) -> list[TensorInfo]:
    from osctl.ckpt.torch_files import load_torch, normalize_keys, split_torch_object, tensor_infos

    obj = load_torch(found.path, trust_pickle=trust_pickle)
    contents = split_torch_object(obj)
    label = found.path.name
    report["integrity"]["checked"] = "torch zip/pickle structure (weights_only)"
    infos: list[TensorInfo] = []
    if contents.weights is not None:
        weights, notes = normalize_keys(contents.weights)
        infos = tensor_infos(weights, label)
        where = f"{label}:{contents.weights_key}" if contents.weights_key else label
        report["weights"] = summarize(infos, where)
        report["notes"].extend(notes)
    else:
        report["notes"].append(f"no state dict of tensors found (top-level keys: {', '.join(contents.other_keys[:8])})")
    if contents.ema is not None:
        ema, _ = normalize_keys(contents.ema)
        report["ema"] = {"present": True, **summarize(tensor_infos(ema, label), f"{label}:{contents.ema_key}")}
    if contents.optimizer_key is not None:
        report["optimizer"] = {"present": True, "bytes": contents.optimizer_bytes or 0,
                               "files": [f"{label}:{contents.optimizer_key}"]}
    report["global_step"] = contents.step
    if contents.other_keys and contents.weights_key:
        report["notes"].append(f"other top-level entries: {', '.join(contents.other_keys[:10])}")
    return infos


def _deepspeed(found: fmt.Detected, report: dict[str, Any], *, trust_pickle: bool,
               verify_hashes: bool) -> list[TensorInfo]:
    infos = _engine(found, report, trust_pickle=trust_pickle)
    report["weights"] = summarize(infos, report["engine"]["path"])
    report["notes"].append("parameter shapes come from the model-states file; fp32 master weights live in the "
                           "optimizer shards (convert consolidates them)")
    _config_nearby(found, report)
    return infos


def _dcp(found: fmt.Detected, report: dict[str, Any], *, trust_pickle: bool, verify_hashes: bool) -> list[TensorInfo]:
    infos = _engine(found, report, trust_pickle=trust_pickle)
    report["weights"] = summarize(infos, ".") if infos else None
    if not infos:
        report["notes"].append("no model tensors found (groups: " + ", ".join(report["engine"]["groups"]) + ")")
    _config_nearby(found, report)
    return infos


def _config_nearby(found: fmt.Detected, report: dict[str, Any]) -> None:
    """Engine folders inside an osctl checkpoint: take the architecture from ``../../model/config.json``."""
    config = nearby_config(found.path)
    if config is not None:
        data = fmt.read_config(config)
        report["architecture"] = _architecture(fmt.class_name_of(data), data, str(config), None)


def nearby_config(path: Path) -> Path | None:
    """The ``model/config.json`` of the osctl/OSP checkpoint an engine folder belongs to, if any."""
    for parent in list(path.parents)[:3]:
        candidate = parent / "model" / "config.json"
        if candidate.is_file():
            return candidate
    return None


def _lora_adapter(found: fmt.Detected, report: dict[str, Any], *, trust_pickle: bool,
                  verify_hashes: bool) -> list[TensorInfo]:
    """A LoRA adapter file (or its folder): its tensors; ``_adapters`` adds what the adapter is."""
    assert found.weights is not None
    header = read_header(found.weights, label=found.weights.name)
    report["integrity"]["checked"] = "safetensors header against the file size"
    report["weights"] = summarize(header.tensors.values(), _rel(found.weights, found.path) if found.path.is_dir()
                                  else found.weights.name)
    return list(header.tensors.values())


def _adapters(found: fmt.Detected, report: dict[str, Any]) -> None:
    """``adapter`` (and ``adapter_ema``): rank, alpha, targets and base of a LoRA adapter or LoRA checkpoint."""
    from osctl.ckpt.adapters import LORA_WEIGHTS, describe_adapter

    files: dict[str, Path] = {}
    if found.format == fmt.LORA_ADAPTER and found.weights is not None:
        files["adapter"] = found.weights
    elif found.format == fmt.OSCTL_CHECKPOINT:
        for key, sub in (("adapter", "adapter"), ("adapter_ema", "adapter_ema")):
            if (found.path / sub / LORA_WEIGHTS).is_file():
                files[key] = found.path / sub / LORA_WEIGHTS
        if files and report["weights"] is None:
            report["notes"] = [n for n in report["notes"] if not n.startswith("no model/ folder")]
            report["notes"].append("a LoRA run's checkpoint: it holds the adapter alone (the base comes from the "
                                   "recipe's model.path / train.pretrained)")
    for key, file in files.items():
        facts = describe_adapter(file)
        facts["file"] = _rel(file, found.path) if found.path.is_dir() else file.name
        report[key] = facts
    if "adapter_ema" in report:
        report["ema"] = {"present": True, "path": report["adapter_ema"]["file"]}


_HANDLERS = {
    fmt.OSCTL_CHECKPOINT: _osctl_checkpoint, fmt.OSP_TRAINING: _osp_training, fmt.DIFFUSERS: _diffusers,
    fmt.DIFFUSERS_PIPELINE: _pipeline,
    fmt.TRANSFORMERS: _diffusers, fmt.SAFETENSORS_FOLDER: _safetensors_folder, fmt.SAFETENSORS: _safetensors,
    fmt.TORCH: _torch_file, fmt.DEEPSPEED: _deepspeed, fmt.DCP: _dcp, fmt.LORA_ADAPTER: _lora_adapter,
}


def _architecture(class_name: str | None, config: dict[str, Any] | None, source: str,
                  folder: Path | None) -> dict[str, Any]:
    recorded = class_name
    class_name = fmt.unwrap_class_name(class_name) or class_name
    loader = fmt.loader_for(class_name)
    arch: dict[str, Any] = {"class_name": class_name, "source": source, "loads_with": loader,
                            "config": {k: v for k, v in (config or {}).items() if k not in EMA_CONFIG_KEYS} or None}
    if recorded != class_name:
        arch["recorded_class_name"] = recorded
        arch["warning"] = (f"{source} names {recorded}, the FSDP wrapper of {class_name}; loaders that check "
                           f"_class_name may refuse it: `osctl ckpt convert --to diffusers` writes {class_name}")
    if loader is not None and folder is not None and recorded == class_name:
        arch["recipe_section"] = {loader["kind"]: {"name": loader["name"], "path": str(folder)}}
    return arch


# --- integrity ----------------------------------------------------------------------------------------

def check_manifest(root: Path, *, verify_hashes: bool = False) -> dict[str, Any]:
    """Compare an osctl checkpoint with its ``manifest.json``: every file present, same size (and hash)."""
    manifest_path = root / "manifest.json"
    result: dict[str, Any] = {"ok": True, "manifest": "manifest.json", "checked_files": 0,
                              "hashes_verified": verify_hashes, "problems": [], "unlisted": []}
    if not manifest_path.is_file():
        result.update(ok=False, manifest=None,
                      problems=[f"{manifest_path} is missing: the checkpoint was not sealed (interrupted save?); "
                                "use an earlier checkpoint."])
        return result
    manifest = _read_json(manifest_path)
    entries = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(entries, list):
        result.update(ok=False, problems=[f"{manifest_path} has no 'files' list; the manifest is damaged."])
        return result
    listed = set()
    for entry in entries:
        rel = str(entry.get("path", "")) if isinstance(entry, dict) else ""
        target = root / rel
        if not rel or Path(rel).is_absolute() or ".." in Path(rel).parts:
            result["problems"].append(f"{manifest_path} lists an invalid path {rel!r}; the manifest is damaged.")
            continue
        listed.add(rel)
        result["checked_files"] += 1
        if not target.is_file():
            result["problems"].append(f"{target} is listed in manifest.json but missing; the checkpoint is incomplete.")
            continue
        size = target.stat().st_size
        if size != entry.get("bytes"):
            result["problems"].append(f"{target} is {size} bytes but manifest.json records {entry.get('bytes')}; "
                                      "the file is damaged — restore it or use an earlier checkpoint.")
            continue
        if verify_hashes and entry.get("sha256") and file_sha256(target) != entry["sha256"]:
            result["problems"].append(f"{target} does not match its SHA-256 in manifest.json; the file is damaged — "
                                      "restore it or use an earlier checkpoint.")
    on_disk = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()} - {"manifest.json"}
    result["unlisted"] = sorted(on_disk - listed)
    result["ok"] = not result["problems"]
    return result


def integrity_error(report: dict[str, Any]) -> str | None:
    """One sentence for a failed integrity check (None when it passed)."""
    problems = report["integrity"]["problems"]
    if not problems:
        return None
    if len(problems) == 1:
        return problems[0]
    return f"{len(problems)} files of {report['path']} fail the manifest check; first: {problems[0]}"


# --- recipe ---------------------------------------------------------------------------------------------

def _compare_recipe(found: fmt.Detected, report: dict[str, Any], recipe: Path, overrides: list[str]) -> None:
    from osctl.recipe.load import load_recipe, recipe_hash

    given = load_recipe(recipe, overrides).resolved()
    fingerprint = recipe_hash(given)
    section = report["recipe"]
    section.update(compared_with=str(recipe), given_fingerprint=fingerprint,
                   same=(fingerprint == section["fingerprint"]) if section["fingerprint"] else None)
    saved_path = found.path / "recipe.yaml"
    if found.format != fmt.OSCTL_CHECKPOINT or not saved_path.is_file():
        report["notes"].append(f"{found.path} stores no recipe.yaml, so --recipe was only fingerprinted")
        return
    import yaml

    from osctl.train.run import recipe_changes

    saved = yaml.safe_load(saved_path.read_text(encoding="utf-8")) or {}
    shaping, harmless = recipe_changes(saved, given)
    section.update(shaping_changes=shaping, other_changes=harmless)
    if section["same"] is None:
        section["same"] = not shaping and not harmless


# --- small helpers ----------------------------------------------------------------------------------------

def _disk_usage(path: Path) -> tuple[int, int]:
    if path.is_file():
        return path.stat().st_size, 1
    sizes = [p.stat().st_size for p in path.rglob("*") if p.is_file()]
    return sum(sizes), len(sizes)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"cannot read {path}: {exc}; the file is damaged.") from None


def _rel(path: Path, root: Path) -> str:
    try:
        rel = path.relative_to(root).as_posix()
    except ValueError:
        return str(path)
    return rel or "."


def check_recipe_arg(recipe: Path | None) -> None:
    """``--recipe`` must name an existing file (usage error otherwise)."""
    if recipe is not None and not Path(recipe).is_file():
        raise UsageError(f"--recipe {recipe} does not exist; give the YAML recipe to compare with.")

