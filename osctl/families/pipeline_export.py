"""``osctl ckpt convert CHECKPOINT --to diffusers-pipeline -o OUT``: a complete diffusers pipeline folder.

OUT gets ``model_index.json`` and one folder per component, so ``diffusers.DiffusionPipeline.from_pretrained(OUT)``
loads the family's pipeline (``WanPipeline`` ...) and runs it:

- ``transformer/`` (+ ``transformer_2/``): the checkpoint's trained weights (``model/``, or ``model_ema/`` with
  ``ema``), copied (cast with ``dtype``);
- ``vae/``, ``text_encoder/``, ``tokenizer/``: from the sources the checkpoint's recipe names, hard-linked where
  the file system allows and copied otherwise; a component the recipe builds from a preset (random test
  weights) is built and saved with ``save_pretrained``;
- ``scheduler/``: the recipe's sampler (``sample.sample_method`` with its options) as its diffusers config;
- ``model_index.json``: the pipeline class and its settings from the model plugin
  (``diffusers_pipeline()``: e.g. Wan's ``boundary_ratio``, ``expand_timesteps``), and ``[library, class]`` of
  every component, read from the folders written.

The model plugin's config says ``diffusers_pipeline()`` (``DiffusersModelConfig``: the family's pipeline class); a component config may define
``diffusers_components() -> {name: folder}`` (its files), else its built object ``diffusers_modules() ->
{name: object with save_pretrained}``. Everything is written into a temporary folder next to OUT and renamed
into place at the end; an existing OUT is replaced only with ``force``.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from osctl.errors import DataError, UsageError
from osctl.utils.atomic import atomic_dir

SCHEMA = "osctl.ckpt.convert/1"
TARGET = "diffusers-pipeline"


def export_pipeline(src: Path, output: Path | None, *, ema: bool = False, dtype: str | None = None,
                    force: bool = False, dry_run: bool = False, registry: Any = None) -> dict[str, Any]:
    """Write the pipeline folder of training checkpoint ``src``; returns the report (``ckpt convert`` schema)."""
    from osctl.plugin_manager import default_registry
    from osctl.recipe.load import load_recipe
    from osctl.recipe.validate import check_recipe
    from osctl.train.checkpoint import is_complete, latest_checkpoint

    src = Path(src).expanduser()
    if src.is_dir() and not is_complete(src):
        newest = latest_checkpoint(src)
        if newest is not None:
            src = newest
    if not (src / "recipe.yaml").is_file():
        raise UsageError(f"{src} is not an osctl training checkpoint with a recipe.yaml; --to {TARGET} needs one "
                         "(the recipe names the autoencoder, text encoder and sampler of the pipeline).")
    weights = src / ("model_ema" if ema else "model")
    if not weights.is_dir():
        raise UsageError(f"{src} has no {weights.name}/ folder" + ("; drop --ema (trained without EMA?)." if ema else "."))
    registry = registry or default_registry()
    checked = check_recipe(load_recipe(src / "recipe.yaml"), registry)
    model_cfg = checked.components["model"]
    pipeline = getattr(model_cfg, "diffusers_pipeline", None)
    if not callable(pipeline):
        raise UsageError(f"--to {TARGET} needs a model from a diffusers family (e.g. wan); the checkpoint's model "
                         f"{checked.loaded.recipe.model.name!r} has no diffusers pipeline; use --to diffusers.")
    target = Path(output) if output is not None else src.with_name(f"{src.name}{'-ema' if ema else ''}-pipeline")
    if target.resolve().is_relative_to(src.resolve()):
        raise UsageError(f"output {target} is inside the checkpoint {src}; choose an -o outside it.")
    exists = target.exists()
    if exists and not force and not dry_run:
        raise UsageError(f"{target} already exists; pass --force to replace it or choose another -o.")
    transformers = _transformer_folders(weights, model_cfg)
    report: dict[str, Any] = {
        "schema": SCHEMA, "source": {"path": str(src), "format": "osctl-checkpoint", "part": weights.name,
                                     "label": weights.name + "/"},
        "output": str(target), "to": TARGET, "layout": "folder", "dtype": dtype, "dry_run": dry_run,
        "replaced": exists and force, "tensors": 0, "parameters": 0, "bytes": 0, "files": [], "verified": None,
        "config_source": str(src / "recipe.yaml"), "notes": [],
    }
    if dry_run:
        report["files"] = [{"path": f"{name}/", "bytes": None, "tensors": 0, "sha256": None}
                           for name in [*transformers, "vae", *_text_names(checked), "scheduler"]]
        report["files"].append({"path": "model_index.json", "bytes": None, "tensors": 0, "sha256": None})
        if exists and not force:
            report["notes"].append(f"{target} exists: the real run needs --force to replace it")
        return report
    with atomic_dir(target, root=target.parent) as staging:
        index: dict[str, Any] = {}
        for name, folder in transformers.items():
            _copy_transformer(folder, staging / name, dtype, report)
        written: list[str] = []
        for section, names in (("autoencoder", ("vae",)), ("text_encoder", ("text_encoder", "tokenizer"))):
            written += _write_components(checked, registry, section, names, staging, report)
        scheduler = _scheduler(checked, registry)
        scheduler.save_pretrained(str(staging / "scheduler"))
        for name in [*transformers, *written, "scheduler"]:
            index[name] = _component_class(staging / name, name)
        for name in getattr(model_cfg, "TRANSFORMER_NAMES", ()):  # a pipeline slot the model leaves empty
            index.setdefault(name, [None, None])
        report["verified"] = _verify(staging, transformers)
        _write_index(staging, pipeline(), index)
        report["files"] = _listing(staging)
    report["bytes"] = sum(entry["bytes"] or 0 for entry in report["files"])
    return report


def _transformer_folders(weights: Path, model_cfg: Any) -> dict[str, Path]:
    """``{pipeline name: folder}`` of the trained transformer(s) in a checkpoint's ``model/`` folder."""
    names = tuple(model_cfg.transformer_names()) if callable(getattr(model_cfg, "transformer_names", None)) \
        else ("transformer",)
    if len(names) == 1:
        folders = {names[0]: weights}
    else:
        folders = {name: weights / name for name in names}
    for folder in folders.values():
        if not (folder / "config.json").is_file():
            raise DataError(f"{folder} has no config.json; the checkpoint is incomplete.")
    return folders


def _copy_transformer(folder: Path, out: Path, dtype: str | None, report: dict[str, Any]) -> None:
    """The trained weights, copied file by file, or re-saved cast to ``dtype``."""
    from osctl.ckpt.headers import find_weights, read_weights

    weights = find_weights(folder, ["diffusion_pytorch_model"])
    if weights is None:
        raise DataError(f"{folder} holds no diffusion_pytorch_model safetensors; the checkpoint is incomplete.")
    described = read_weights(weights, root=folder)
    report["tensors"] += len(described.tensors)
    report["parameters"] += sum(i.numel for i in described.tensors.values())
    out.mkdir(parents=True)
    if dtype is None:
        shutil.copy2(folder / "config.json", out / "config.json")
        for file in {Path(p) for p in described.files} | ({weights} if weights.name.endswith(".json") else set()):
            shutil.copy2(file, out / file.name)
        return
    import torch
    from safetensors.torch import load_file

    from osctl.ckpt.convert import DTYPE_ALIASES
    from osctl.train.export import save_model_folder

    state: dict[str, Any] = {}
    for file in described.files:
        state.update(load_file(file))
    config = json.loads((folder / "config.json").read_text())
    save_model_folder(out, config, state, dtype=getattr(torch, DTYPE_ALIASES[dtype]))
    report["notes"].append(f"cast {out.name} to {dtype}")


def _text_names(checked: Any) -> list[str]:
    """The pipeline folders the recipe's text encoder fills (``text_encoder``, ``tokenizer``; HunyuanVideo's two
    encoders add ``text_encoder_2``, ``tokenizer_2``)."""
    config = checked.components["text_encoder"]
    sources = config.diffusers_components() if callable(getattr(config, "diffusers_components", None)) else None
    return list(sources) if sources else ["text_encoder", "tokenizer"]


def _write_components(checked: Any, registry: Any, section: str, names: tuple[str, ...], staging: Path,
                      report: dict[str, Any]) -> list[str]:
    """The recipe's ``section`` component as pipeline folders (at least ``names``; every folder the component
    has): linked/copied files, else saved. Returns the folder names written."""
    config = checked.components[section]
    sources = config.diffusers_components() if callable(getattr(config, "diffusers_components", None)) else None
    if sources is not None and set(names) <= set(sources):
        for name in sources:
            linked = _link_or_copy(Path(sources[name]), staging / name)
            report["notes"].append(f"{name}/ {'hard-linked' if linked else 'copied'} from {sources[name]}")
        return list(sources)
    import torch

    from osctl.recipe.schema import COMPONENT_SECTIONS

    component = registry.build(COMPONENT_SECTIONS[section], getattr(checked.loaded.recipe, section).name, config,
                               device="cpu", dtype=torch.float32)
    modules = component.diffusers_modules() if callable(getattr(component, "diffusers_modules", None)) else {}
    missing = [name for name in names if name not in modules]
    if missing:
        raise UsageError(f"{section} {getattr(checked.loaded.recipe, section).name!r} cannot be written as the "
                         f"pipeline's {', '.join(missing)}; use a {section} plugin of the family (e.g. wan_vae, t5).")
    for name in modules:
        modules[name].save_pretrained(str(staging / name))
        report["notes"].append(f"{name}/ saved from the recipe's {section} ({getattr(checked.loaded.recipe, section).name})")
    return list(modules)


def _link_or_copy(source: Path, out: Path) -> bool:
    """Hard-link every file of ``source`` into ``out`` (copy where linking fails); True when all were linked."""
    linked = True
    for file in sorted(source.rglob("*")):
        if file.is_dir() or file.name.startswith("."):
            continue
        dest = out / file.relative_to(source)
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(file.resolve(), dest)
        except OSError:
            shutil.copy2(file, dest)
            linked = False
    return linked


def _scheduler(checked: Any, registry: Any) -> Any:
    """The recipe's sampler (a diffusers scheduler with ``save_pretrained``)."""
    from osctl.build import build_sampler

    scheduler = build_sampler(checked.loaded.recipe, registry)
    if not callable(getattr(scheduler, "save_pretrained", None)):
        raise UsageError(f"sample.sample_method {checked.loaded.recipe.sample.sample_method!r} is not a diffusers "
                         "scheduler; choose one (e.g. UniPCMultistep) for the pipeline.")
    return scheduler


def _component_class(folder: Path, name: str) -> list[str]:
    """``[library, class]`` of a written component folder, as ``model_index.json`` lists it."""
    for file, library, key in (("scheduler_config.json", "diffusers", "_class_name"),
                               ("tokenizer_config.json", "transformers", "tokenizer_class"),
                               ("config.json", None, None)):
        path = folder / file
        if not path.is_file():
            continue
        data = json.loads(path.read_text(encoding="utf-8"))
        if library is not None:
            return [library, data[key]]
        if "_class_name" in data:
            return ["diffusers", data["_class_name"]]
        if data.get("architectures"):
            return ["transformers", data["architectures"][0]]
    raise DataError(f"the pipeline's {name}/ has no config naming its class; the source is incomplete.")


def _verify(staging: Path, transformers: dict[str, Path]) -> dict[str, Any]:
    """Every transformer's tensors read back with the names and shapes of the checkpoint's."""
    from osctl.ckpt.headers import find_weights, read_weights

    count = 0
    for name, folder in transformers.items():
        source = read_weights(find_weights(folder, ["diffusion_pytorch_model"]), root=folder).tensors  # type: ignore[arg-type]
        written_path = find_weights(staging / name, ["diffusion_pytorch_model"])
        written = read_weights(written_path, root=staging / name).tensors  # type: ignore[arg-type]
        if {k: v.shape for k, v in source.items()} != {k: v.shape for k, v in written.items()}:
            raise DataError(f"the written {name}/ does not hold the checkpoint's tensors; nothing was written.")
        count += len(written)
    return {"tensors": count, "names": True, "shapes": True, "dtypes": None, "checksums": None}


def _write_index(staging: Path, pipeline: dict[str, Any], index: dict[str, Any]) -> None:
    import diffusers

    data = {"_class_name": pipeline["_class_name"], "_diffusers_version": diffusers.__version__,
            **{k: v for k, v in pipeline.items() if k != "_class_name"}, **index}
    (staging / "model_index.json").write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _listing(staging: Path) -> list[dict[str, Any]]:
    files = []
    for file in sorted(p for p in staging.rglob("*") if p.is_file()):
        files.append({"path": file.relative_to(staging).as_posix(), "bytes": file.stat().st_size, "tensors": 0,
                      "sha256": None})
    return files
