"""``osctl ckpt convert``: move weights between formats, atomically, and prove the result.

Sources: everything :mod:`osctl.ckpt.detect` recognises. Training checkpoints give their ``model/`` (or,
with ``ema``, ``model_ema/``) folder, falling back to the engine state (DeepSpeed ZeRO shards or a DCP
folder) when the folder is absent; engine folders are consolidated; torch files are read with
``weights_only=True`` unless ``trust_pickle``.

Targets:

- ``diffusers``: a folder with ``config.json`` + ``diffusion_pytorch_model.safetensors``, sharded as
  ``diffusion_pytorch_model-0000i-of-0000n.safetensors`` + ``.safetensors.index.json`` above the shard size;
- ``safetensors``: one file when the output ends in ``.safetensors``, else a folder of ``model*.safetensors``
  (+ ``model.safetensors.index.json`` when sharded);
- ``pt``: one ``torch.save`` file of a plain state dict (loads with ``weights_only=True``).

Every run: tensor names lose training-wrapper prefixes (``module.`` ...); floating tensors are cast with
``dtype``; the output is written into a temporary sibling (``.NAME.osctl-tmp-*``), re-read and compared
tensor by tensor (names, shapes, dtypes, SHA-256 of the bytes), and only then renamed into place. An
existing output is replaced only with ``force``; on any failure nothing is left behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from osctl.ckpt import detect as fmt
from osctl.ckpt.headers import INDEX_SUFFIX, TensorInfo, read_header, read_sharded, read_weights
from osctl.ckpt.inspect import EMA_CONFIG_KEYS, nearby_config
from osctl.ckpt.shards import Shard, index_name, plan_shards, write_shards
from osctl.errors import CheckFailed, DataError, UsageError
from osctl.utils.files import file_sha256

SCHEMA = "osctl.ckpt.convert/1"
TARGETS = ("diffusers", "safetensors", "pt")
DTYPE_ALIASES = {"fp32": "float32", "float32": "float32", "bf16": "bfloat16", "bfloat16": "bfloat16",
                 "fp16": "float16", "float16": "float16"}
#: dtypes ``--dtype`` casts (float8 and integer tensors are kept: casting them would change their meaning)
CASTABLE = ("float64", "float32", "float16", "bfloat16")
_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


@dataclass
class ConvertOptions:
    """What ``osctl ckpt convert`` was asked to do (see the module docstring)."""

    to: str
    output: Path | None = None
    ema: bool = False
    dtype: str | None = None
    max_shard_size: int | None = None
    config: Path | None = None
    dry_run: bool = False
    force: bool = False
    trust_pickle: bool = False


@dataclass
class Source:
    """Where the tensors come from: a description, their infos when known without loading, a loader."""

    detected: fmt.Detected
    label: str
    part: str
    load: Callable[[], dict[str, Any]]
    infos: Callable[[], list[TensorInfo]]
    config: dict[str, Any] | None = None
    config_source: str | None = None
    notes: list[str] = field(default_factory=list)


@dataclass
class PlannedFile:
    """One output file: its name inside the output, the tensors it holds and its size."""

    name: str
    tensors: list[str] = field(default_factory=list)
    bytes: int = 0
    sha256: str | None = None


def parse_size(text: str | int | None) -> int | None:
    """``"5GB"`` -> 5e9, ``"500MiB"`` -> 500*2**20, ``"123"`` -> 123 bytes; ``UsageError`` when unreadable."""
    if text is None or isinstance(text, int):
        return text
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(text))
    if not match or match.group(2).lower() not in _UNITS:
        raise UsageError(f"--max-shard-size {text!r} is not a size; write e.g. 5GB, 500MB, 2GiB or a number of bytes.")
    value = int(float(match.group(1)) * _UNITS[match.group(2).lower()])
    if value <= 0:
        raise UsageError(f"--max-shard-size {text!r} must be positive.")
    return value


def convert(src: Path, options: ConvertOptions) -> dict[str, Any]:
    """Convert ``src`` as ``options`` say; returns the report (schema ``osctl.ckpt.convert/1``)."""
    if options.to not in TARGETS:
        raise UsageError(f"--to {options.to!r} is not a target; use one of {', '.join(TARGETS)}.")
    dtype = _dtype(options.dtype)
    detected = fmt.detect(Path(src))
    source = resolve_source(detected, options)
    config = _target_config(source, options)
    target, single_file = _output_path(detected, options)
    _check_output(detected.path, target, options.force, options.dry_run)
    report: dict[str, Any] = {
        "schema": SCHEMA, "source": {"path": str(detected.path), "format": detected.format, "part": source.part,
                                     "label": source.label},
        "output": str(target), "to": options.to, "layout": "file" if single_file else "folder",
        "dtype": dtype, "dry_run": options.dry_run, "replaced": target.exists() or target.is_symlink(),
        "tensors": 0, "parameters": 0, "bytes": 0, "files": [], "verified": None, "notes": list(source.notes),
    }
    report["config_source"] = source.config_source if config is not None else None
    if options.dry_run:
        infos = [_cast_info(i, dtype) for i in source.infos()]
        plan = _plan(infos, options, single_file, target)
        _fill(report, infos, plan, config)
        exists = report["replaced"]
        report["replaced"] = exists and options.force
        if exists and not options.force:
            report["notes"].append(f"{target} exists: the real run needs --force to replace it")
        return report
    state = source.load()
    state, notes = _prepare(state, dtype)
    report["notes"].extend(notes)
    from osctl.ckpt.torch_files import tensor_infos

    infos = tensor_infos(state)
    plan = _plan(infos, options, single_file, target)
    expected = {name: _tensor_sha256(tensor) for name, tensor in state.items()}
    with _staging(target) as staging:
        written = _write(staging, plan, state, config, options.to, single_file)
        report["verified"] = _verify(staging, plan, infos, expected, options.to)
        sizes = {name: (staging / name).stat().st_size for name in written}
        _publish(staging, written, target, single_file, options.force)
    _fill(report, infos, plan, config, sizes)
    return report


# --- sources -----------------------------------------------------------------------------------------

def resolve_source(detected: fmt.Detected, options: ConvertOptions) -> Source:
    """The tensors ``convert`` reads from ``detected`` (model or EMA weights), without loading them yet."""
    kind = detected.format
    trust = options.trust_pickle
    if kind in (fmt.OSCTL_CHECKPOINT, fmt.OSP_TRAINING):
        folder = detected.ema_dir if options.ema else detected.model_dir
        if folder is not None:
            return _folder_source(detected, folder, trust, part=folder.name)
        if options.ema:
            raise UsageError(f"{detected.path} has no model_ema/ folder (trained without EMA?); drop --ema.")
        if detected.engine is not None:
            source = _engine_source(detected, options)
            source.notes.insert(0, f"{detected.path} has no model/ folder: consolidated the engine state instead")
            return source
        raise DataError(f"{detected.path} has neither a model/ folder nor engine state; the checkpoint is incomplete.")
    if kind in (fmt.DIFFUSERS, fmt.TRANSFORMERS, fmt.SAFETENSORS_FOLDER):
        source = _folder_source(detected, detected.path, trust, part=".")
        if options.ema and not (source.config and "decay" in source.config):
            raise UsageError(f"{detected.path} is a single set of weights with no separate EMA; drop --ema.")
        return source
    if kind in (fmt.DEEPSPEED, fmt.DCP):
        return _engine_source(detected, options)
    if kind == fmt.SAFETENSORS:
        if options.ema:
            raise UsageError(f"{detected.path} is a single set of weights with no separate EMA; drop --ema.")
        return _safetensors_source(detected, detected.path, detected.path.parent, part=detected.path.name)
    return _torch_source(detected, options)


def _folder_source(detected: fmt.Detected, folder: Path, trust: bool, *, part: str) -> Source:
    config_path = folder / "config.json"
    config = fmt.read_config(config_path) if config_path.is_file() else None
    weights = fmt.find_weights(folder, [fmt.DIFFUSERS_STEM, *fmt.TRANSFORMERS_STEMS]) or (
        detected.weights if folder == detected.path else None)
    label = "." if folder == detected.path else folder.name + "/"
    if weights is not None and weights.name.endswith((".safetensors", INDEX_SUFFIX)):
        source = _safetensors_source(detected, weights, detected.path, part=part)
    else:
        bin_path = next((folder / n for n in (f"{fmt.DIFFUSERS_STEM}.bin.index.json", f"{fmt.DIFFUSERS_STEM}.bin",
                                               "pytorch_model.bin.index.json", "pytorch_model.bin")
                         if (folder / n).is_file()), None)
        if bin_path is None:
            raise DataError(f"{folder} has no weights (diffusion_pytorch_model*.safetensors, model*.safetensors or "
                            "*.bin); the folder is incomplete.")
        from osctl.ckpt.torch_files import read_bin_folder, tensor_infos

        def load_bin() -> dict[str, Any]:
            return read_bin_folder(bin_path, trust_pickle=trust)

        source = Source(detected, label, part, load=load_bin, infos=lambda: tensor_infos(load_bin()))
    source.label = label
    if config is not None:
        source.config, source.config_source = config, str(config_path)
    return source


def _safetensors_source(detected: fmt.Detected, weights: Path, root: Path, *, part: str) -> Source:
    described = read_weights(weights, root=root)  # header/index checks happen here, before anything is written

    def load() -> dict[str, Any]:
        from safetensors.torch import load_file

        state: dict[str, Any] = {}
        for path in described.files:
            try:
                state.update(load_file(path))
            except Exception as exc:  # the headers were valid; the data is not
                raise DataError(f"cannot read {path}: {exc}; the file is damaged.") from None
        return {name: state[name] for name in described.tensors}

    return Source(detected, weights.name, part, load=load, infos=lambda: list(described.tensors.values()))


def _torch_source(detected: fmt.Detected, options: ConvertOptions) -> Source:
    from osctl.ckpt.torch_files import read_torch_weights, tensor_infos

    cache: dict[str, Any] = {}

    def load() -> dict[str, Any]:
        if "state" not in cache:
            cache["state"], cache["notes"] = read_torch_weights(detected.path, ema=options.ema,
                                                                trust_pickle=options.trust_pickle)
        return cache["state"]

    load()  # refusals (pickles needing code) and damage surface before any output path is touched
    source = Source(detected, detected.path.name, "ema" if options.ema else "weights", load=load,
                    infos=lambda: tensor_infos(load()), notes=list(cache["notes"]))
    return source


def _engine_source(detected: fmt.Detected, options: ConvertOptions) -> Source:
    assert detected.engine is not None
    engine = detected.engine
    config_path = nearby_config(detected.path) if detected.format in (fmt.DEEPSPEED, fmt.DCP) else detected.config
    config = fmt.read_config(config_path) if config_path is not None and config_path.is_file() else None
    if (engine / ".metadata").is_file():
        from osctl.ckpt.engines import EMA_GROUPS, MODEL_GROUPS, load_dcp, read_dcp

        dcp = read_dcp(engine)
        group = dcp.pick(EMA_GROUPS if options.ema else MODEL_GROUPS)
        if group is None:
            what = "EMA" if options.ema else "model"
            found = ", ".join(g or "(top level)" for g in dcp.groups())
            if options.ema:
                raise UsageError(f"{engine} holds no EMA tensors (groups: {found}); drop --ema.")
            raise DataError(f"{engine} holds no {what} tensors (groups: {found}); nothing to convert.")
        source = Source(detected, f"DCP group {group or '(top level)'}", group or "model",
                        load=lambda: load_dcp(dcp, group), infos=lambda: dcp.infos(group))
        model_group = dcp.pick(MODEL_GROUPS)
        if options.ema and model_group is not None:
            ema_names = {i.name for i in dcp.infos(group)}
            rest = [i for i in dcp.infos(model_group) if i.name not in ema_names]
            if rest:  # the EMA covers trainable parameters; buffers and frozen tensors come from the model
                def load_ema_and_rest() -> dict[str, Any]:
                    merged = load_dcp(dcp, model_group)
                    merged.update(load_dcp(dcp, group))
                    return merged

                source.load = load_ema_and_rest
                source.infos = lambda: [*dcp.infos(model_group)]
                source.notes.append(f"{len(rest)} tensors the EMA does not track (buffers, frozen weights) were "
                                    f"taken from the '{model_group}' group")
        source.notes.append(f"consolidated {dcp.ranks} rank(s) of DCP shards")
    else:
        if options.ema:
            raise UsageError(f"{engine} is DeepSpeed engine state, which holds no EMA weights; drop --ema.")
        from osctl.ckpt.engines import consolidate_deepspeed, read_deepspeed

        ds = read_deepspeed(engine, detected.engine_tag, trust_pickle=options.trust_pickle)
        source = Source(detected, f"DeepSpeed {ds.tag}", "fp32 master weights",
                        load=lambda: consolidate_deepspeed(engine, ds.tag, trust_pickle=options.trust_pickle),
                        infos=lambda: ds.infos)
        source.notes.append(f"consolidated ZeRO-{ds.zero_stage} shards of {ds.world_size} rank(s) into fp32 weights")
    if config is not None and config_path is not None:
        source.config, source.config_source = config, str(config_path)
    return source


# --- config, output path, plan ------------------------------------------------------------------------

def _target_config(source: Source, options: ConvertOptions) -> dict[str, Any] | None:
    if options.to != "diffusers":
        if options.config is not None:
            source.notes.append("--config is only used with --to diffusers; ignored")
        return None
    if options.config is not None:
        path = Path(options.config)
        path = path / "config.json" if path.is_dir() else path
        if not path.is_file():
            raise UsageError(f"--config {options.config} is not a config.json file or a folder holding one.")
        source.config, source.config_source = fmt.read_config(path), str(path)
    elif source.config is None and source.detected.format == fmt.SAFETENSORS:
        nearby = source.detected.path.parent / "config.json"
        if nearby.is_file():
            source.config, source.config_source = fmt.read_config(nearby), str(nearby)
            source.notes.append(f"used {nearby} as the model config")
    if source.config is None:
        raise UsageError(f"{source.detected.path} carries no config.json, which a diffusers folder needs; pass "
                         "--config PATH (e.g. the run's model/config.json) or use --to safetensors.")
    config = dict(source.config)
    dropped = [k for k in EMA_CONFIG_KEYS if k in config]
    for key in dropped:
        del config[key]
    if dropped:
        source.notes.append(f"dropped the EMA bookkeeping keys {', '.join(dropped)} from config.json")
    if "_class_name" not in config:
        source.notes.append("config.json has no _class_name; diffusers loaders may not recognise the folder")
    inner = fmt.unwrap_class_name(config.get("_class_name"))
    if inner is not None:
        source.notes.append(f"config.json named the FSDP wrapper {config['_class_name']}; wrote _class_name {inner}")
        config["_class_name"] = inner
    return config


def _output_path(detected: fmt.Detected, options: ConvertOptions) -> tuple[Path, bool]:
    """(output path, whether it is a single file)."""
    out = options.output
    base = detected.path
    stem = base.name[: -len(base.suffix)] if base.is_file() and base.suffix else base.name
    ema = "-ema" if options.ema else ""
    if options.to == "diffusers":
        return (Path(out) if out else base.with_name(f"{stem}{ema}-diffusers")), False
    if options.to == "pt":
        if options.max_shard_size is not None:
            raise UsageError("--max-shard-size applies to safetensors outputs; a .pt output is always one file.")
        return (Path(out) if out else base.with_name(f"{stem}{ema}.pt")), True
    if out is None:
        if options.max_shard_size is not None:
            return base.with_name(f"{stem}{ema}-safetensors"), False
        return base.with_name(f"{stem}{ema}.safetensors"), True
    single = str(out).endswith(".safetensors")
    if single and options.max_shard_size is not None:
        raise UsageError(f"-o {out} is one file but --max-shard-size asks for shards; give a folder as -o.")
    return Path(out), single


def _check_output(src: Path, target: Path, force: bool, dry_run: bool) -> None:
    src_r, out_r = src.resolve(), target.resolve()
    if out_r == src_r or src_r.is_relative_to(out_r) or out_r.is_relative_to(src_r):
        raise UsageError(f"output {target} overlaps the source {src}; choose an -o outside it.")
    if (target.exists() or target.is_symlink()) and not force:
        if dry_run:
            return
        raise UsageError(f"{target} already exists; pass --force to replace it or choose another -o.")


def _plan(infos: list[TensorInfo], options: ConvertOptions, single_file: bool, target: Path) -> list[PlannedFile]:
    if options.to == "pt" or single_file:
        one = PlannedFile(target.name, [i.name for i in infos], sum(i.nbytes for i in infos))
        return [one]
    shards = plan_shards({i.name: i.nbytes for i in infos}, _stem(options.to), options.max_shard_size)
    return [PlannedFile(shard.name, shard.tensors, shard.bytes) for shard in shards]


def _stem(to: str) -> str:
    """File stem of a folder output: ``diffusion_pytorch_model`` for diffusers, ``model`` for transformers-style."""
    return fmt.DIFFUSERS_STEM if to == "diffusers" else "model"


def _fill(report: dict[str, Any], infos: list[TensorInfo], plan: list[PlannedFile], config: Any,
          sizes: dict[str, int] | None = None) -> None:
    """Totals and the file list of the report (``sizes``: real sizes of written files; else estimates)."""
    report["tensors"] = len(infos)
    report["parameters"] = sum(i.numel for i in infos)
    report["bytes"] = sum(i.nbytes for i in infos)
    files = [{"path": f.name, "bytes": f.bytes, "tensors": len(f.tensors), "sha256": f.sha256} for f in plan]
    if len(plan) > 1:
        files.append({"path": index_name(_stem(report["to"])), "bytes": None, "tensors": 0, "sha256": None})
    if config is not None:
        files.insert(0, {"path": "config.json", "bytes": None, "tensors": 0, "sha256": None})
    for entry in files:
        if sizes is not None:
            entry["bytes"] = sizes.get(entry["path"], entry["bytes"])
    report["files"] = files


# --- tensors --------------------------------------------------------------------------------------------

def _dtype(name: str | None) -> str | None:
    if name is None:
        return None
    key = name.lower()
    if key not in DTYPE_ALIASES:
        raise UsageError(f"--dtype {name!r} is not supported; use fp32, bf16 or fp16.")
    return DTYPE_ALIASES[key]


def _cast_info(info: TensorInfo, dtype: str | None) -> TensorInfo:
    if dtype is None or info.dtype not in CASTABLE:
        return info
    return TensorInfo(name=info.name, shape=info.shape, dtype=dtype, file=info.file)


def _prepare(state: dict[str, Any], dtype: str | None) -> tuple[dict[str, Any], list[str]]:
    """Names normalised, floating tensors cast, every tensor contiguous and owning its memory."""
    import torch

    from osctl.ckpt.torch_files import dtype_name, normalize_keys

    state, notes = normalize_keys(dict(state))
    target = getattr(torch, dtype) if dtype else None
    out: dict[str, Any] = {}
    seen: set[int] = set()
    cast = 0
    for name, tensor in state.items():
        if not isinstance(tensor, torch.Tensor):
            raise DataError(f"entry {name!r} of the source is a {type(tensor).__name__}, not a tensor; cannot convert it.")
        value = tensor.detach()
        if target is not None and dtype_name(value.dtype) in CASTABLE and value.dtype != target:
            value = value.to(target)
            cast += 1
        value = value.contiguous()
        if value.numel() and value.untyped_storage().data_ptr() in seen:
            value = value.clone()  # tied weights: safetensors stores each tensor on its own
        if value.numel():
            seen.add(value.untyped_storage().data_ptr())
        out[name] = value
    if cast:
        notes.append(f"cast {cast} floating tensors to {dtype}")
    return out, notes


def _tensor_sha256(tensor: Any) -> str:
    import torch

    flat = tensor.reshape(-1)
    data = flat.view(torch.uint8) if flat.numel() else flat.new_empty(0, dtype=torch.uint8)
    return hashlib.sha256(data.numpy()).hexdigest()


# --- writing, verification, publishing --------------------------------------------------------------------

@contextlib.contextmanager
def _staging(target: Path) -> Iterator[Path]:
    """A temporary folder next to ``target`` (in its nearest existing ancestor); removed unless published."""
    anchor = target.parent
    while not anchor.exists():
        anchor = anchor.parent
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.osctl-tmp-", dir=anchor))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(staging, 0o777 & ~umask)  # mkdtemp makes 0700; the published folder gets the usual mode
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _write(staging: Path, plan: list[PlannedFile], state: dict[str, Any], config: dict[str, Any] | None,
           to: str, single_file: bool) -> list[str]:
    written = []
    if config is not None:
        (staging / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        written.append("config.json")
    if to == "pt":
        import torch

        torch.save(dict(state), staging / plan[0].name)
        return [*written, plan[0].name]
    shards = [Shard(f.name, f.tensors, f.bytes) for f in plan]
    return [*written, *write_shards(staging, _stem(to), shards, state)]


def _verify(staging: Path, plan: list[PlannedFile], infos: list[TensorInfo], expected: dict[str, str],
            to: str) -> dict[str, Any]:
    """Re-read what was written and compare names, shapes, dtypes and per-tensor SHA-256 with the source."""
    wanted = {i.name: i for i in infos}
    got: dict[str, tuple[tuple[int, ...], str, str]] = {}
    if to == "pt":
        from osctl.ckpt.torch_files import dtype_name, load_torch

        loaded = load_torch(staging / plan[0].name)
        for name, tensor in loaded.items():
            got[name] = (tuple(tensor.shape), dtype_name(tensor.dtype), _tensor_sha256(tensor))
        plan[0].sha256 = file_sha256(staging / plan[0].name)
    else:
        for shard in plan:
            header = read_header(staging / shard.name, label=shard.name)
            digests, shard.sha256 = _stream_digests(staging / shard.name, header.header_bytes, header.tensors)
            for name, info in header.tensors.items():
                got[name] = (info.shape, info.dtype, digests[name])
        if len(plan) > 1:
            read_sharded(staging / index_name(_stem(to)))  # the index agrees with the shards
    problems = []
    if set(got) != set(wanted):
        missing, extra = sorted(set(wanted) - set(got)), sorted(set(got) - set(wanted))
        problems.append(f"names differ (missing {missing[:3]}, unexpected {extra[:3]})")
    for name, info in wanted.items():
        if name not in got:
            continue
        shape, dtype, digest = got[name]
        if shape != info.shape or dtype != info.dtype:
            problems.append(f"{name!r} reads back as {dtype} {list(shape)} instead of {info.dtype} {list(info.shape)}")
        elif digest != expected[name]:
            problems.append(f"{name!r} reads back with different bytes (SHA-256 mismatch)")
    if problems:
        raise CheckFailed(f"verification of the written output failed: {problems[0]}; nothing was written.")
    return {"tensors": len(got), "names": True, "shapes": True, "dtypes": True, "checksums": True}


def _stream_digests(path: Path, header_bytes: int, tensors: dict[str, TensorInfo],
                    chunk: int = 1 << 22) -> tuple[dict[str, str], str]:
    """Per-tensor SHA-256 of the data bytes and the SHA-256 of the whole file, in one sequential read."""
    whole = hashlib.sha256()
    digests: dict[str, str] = {}
    with path.open("rb") as handle:
        whole.update(handle.read(header_bytes))
        position = header_bytes
        for info in sorted(tensors.values(), key=lambda i: i.begin):
            if info.begin != position:  # a gap (never written by safetensors): hash it into the file digest
                whole.update(handle.read(info.begin - position))
            digest = hashlib.sha256()
            remaining = info.end - info.begin
            while remaining:
                block = handle.read(min(chunk, remaining))
                if not block:
                    raise CheckFailed(f"{path.name} ended early while verifying {info.name!r}; nothing was written.")
                digest.update(block)
                whole.update(block)
                remaining -= len(block)
            digests[info.name] = digest.hexdigest()
            position = info.end
        while block := handle.read(chunk):
            whole.update(block)
    return digests, whole.hexdigest()



def _publish(staging: Path, written: list[str], target: Path, single_file: bool, force: bool) -> None:
    """Rename the verified output into place (an existing one is swapped out and removed, with ``force``)."""
    source = staging / written[0] if single_file else staging
    target.parent.mkdir(parents=True, exist_ok=True)
    aside = None
    if target.exists() or target.is_symlink():
        if not force:  # it appeared while we were writing
            raise UsageError(f"{target} already exists; pass --force to replace it or choose another -o.")
        aside = Path(tempfile.mkdtemp(prefix=f".{target.name}.osctl-old-", dir=target.parent))
        aside.rmdir()
        os.replace(target, aside)
    try:
        os.replace(source, target)
    except BaseException:
        if aside is not None:
            os.replace(aside, target)
        raise
    if aside is not None:
        if aside.is_dir() and not aside.is_symlink():
            shutil.rmtree(aside, ignore_errors=True)
        else:
            aside.unlink(missing_ok=True)
