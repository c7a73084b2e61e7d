"""LoRA adapters: add them to a frozen base model, save and read them in diffusers' format, merge them.

Training (``train.lora``): every base parameter is frozen and ``peft`` injects LoRA layers into the
target modules (the model plugin's ``metadata["lora_target_modules"]``, by default the attention and
feed-forward projections). Only the adapter parameters require gradients, so the optimizer, the EMA and
the checkpoints hold them alone.

On disk an adapter is diffusers' LoRA format, the file ``Pipeline.load_lora_weights()`` reads:
``pytorch_lora_weights.safetensors`` with keys ``transformer.<module>.lora_A.weight`` /
``lora_B.weight`` and, in the safetensors metadata, ``lora_adapter_metadata`` (the ``LoraConfig``
fields with the ``transformer.`` prefix: rank, alpha, targets) plus ``osctl_adapter`` (what osctl needs
to use it safely: the base model's class and fingerprint). A training checkpoint of a LoRA run holds
``adapter/`` (and ``adapter_ema/``) instead of ``model/`` (and ``model_ema/``).

The update of a module is ``W' = W + scale * (alpha / rank) * B @ A``; :func:`merge_into` applies it to
weights (sampling with ``--lora``, ``ckpt convert --merge-lora``), in float32.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from osctl.ckpt.adapters import DIFFUSERS_META_KEY, LORA_WEIGHTS, OSCTL_META_KEY, PREFIX, read_metadata
from osctl.errors import ConfigError, DataError, UsageError

ADAPTER_DIR = "adapter"
ADAPTER_EMA_DIR = "adapter_ema"
ADAPTER_NAME = "default"
#: attention and feed-forward projections of diffusers-style transformers (used when a plugin names none)
GENERIC_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2", "ffn.net.0.proj", "ffn.net.2")
_PEFT_KEY = re.compile(r"^(?P<module>.+)\.(?P<part>lora_[AB])\.(?P<adapter>[^.]+)\.(?P<kind>weight|bias)$")
_FILE_KEY = re.compile(r"^(?P<module>.+)\.(?P<part>lora_[AB])\.(?P<kind>weight|bias)$")


@dataclass
class AdapterSpec:
    """What an adapter is: its shape, where it sits, and which base it was trained on."""

    rank: int
    alpha: float
    target_modules: list[str]
    dropout: float = 0.0
    init: str = "default"
    base_class: str | None = None
    base_fingerprint: str | None = None
    step: int | None = None

    @property
    def scaling(self) -> float:
        """The factor ``alpha / rank`` the update ``B @ A`` is multiplied by."""
        return self.alpha / self.rank

    def peft_config(self) -> Any:
        """The ``peft.LoraConfig`` that builds this adapter."""
        from peft import LoraConfig

        init: Any = {"default": True, "gaussian": "gaussian", "random": False}[self.init]
        return LoraConfig(r=self.rank, lora_alpha=self.alpha, lora_dropout=self.dropout,
                          target_modules=list(self.target_modules), init_lora_weights=init)

    def diffusers_metadata(self) -> dict[str, Any]:
        """``LoraConfig`` keyword arguments as diffusers stores them (before its ``transformer.`` prefix)."""
        return {"r": self.rank, "lora_alpha": self.alpha, "lora_dropout": self.dropout,
                "target_modules": sorted(self.target_modules), "bias": "none", "use_dora": False}


@dataclass
class Adapter:
    """An adapter read from disk: per-module ``(A, B)`` matrices and its spec."""

    spec: AdapterSpec
    modules: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    alphas: dict[str, float] = field(default_factory=dict)  # per module, when the file says so
    source: str = ""

    def parameters(self) -> int:
        """Adapter parameters (elements of every A and B)."""
        return sum(a.numel() + b.numel() for a, b in self.modules.values())


# --- building the adapter ----------------------------------------------------------------------------------

def default_targets(model: torch.nn.Module, declared: Iterable[str] | None = None) -> list[str]:
    """The target module names of ``model``: the plugin's ``declared`` list, else the diffusers names of
    attention and feed-forward projections that the model has (``ConfigError`` when it has none)."""
    candidates = list(declared) if declared else list(GENERIC_TARGETS)
    names = [name for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)]
    found = [target for target in candidates if any(n == target or n.endswith("." + target) for n in names)]
    if not found:
        raise ConfigError(f"{type(model).__name__} has no module named like {', '.join(candidates)}; set "
                          "train.lora.target_modules to the names of its linear layers (`osctl ckpt inspect "
                          "--tensors` lists them).")
    return found


def spec_from_settings(settings: Any, model: torch.nn.Module, declared: Iterable[str] | None = None) -> AdapterSpec:
    """The adapter a recipe's ``train.lora`` section asks for on ``model``."""
    targets = list(settings.target_modules) if settings.target_modules else default_targets(model, declared)
    return AdapterSpec(rank=settings.rank, alpha=float(settings.alpha), target_modules=targets,
                       dropout=settings.dropout, init=settings.init, base_class=_class_name(model))


def add_adapter(model: torch.nn.Module, spec: AdapterSpec) -> None:
    """Freeze every parameter of ``model`` and inject ``spec``'s LoRA layers (trainable, float32) with peft."""
    from peft import inject_adapter_in_model

    for param in model.parameters():
        param.requires_grad_(False)
    trained = getattr(model, "trained", None)  # a family module of several transformers adapts the trained ones
    roots = [getattr(model, name) for name in trained] if trained and callable(getattr(model, "weight_parts", None)) \
        else [model]
    try:
        for root in roots:
            inject_adapter_in_model(spec.peft_config(), root, adapter_name=ADAPTER_NAME)
    except ValueError as exc:  # peft: a target module that does not exist or is not supported
        raise ConfigError(f"train.lora.target_modules {spec.target_modules}: {str(exc).splitlines()[0]}") from None
    for name, param in model.named_parameters():
        if ".lora_" in name:
            param.data = param.data.float()
            param.requires_grad_(True)


def is_adapted(model: torch.nn.Module) -> bool:
    """True when ``model`` carries peft LoRA layers."""
    return any(".lora_A." in name for name, _ in model.named_parameters())


#: values of each tensor the base fingerprint reads
FINGERPRINT_VALUES = 1024


def base_fingerprint(state: Mapping[str, torch.Tensor], heads: Mapping[str, torch.Tensor] | None = None) -> str:
    """A cheap identity of base weights, independent of file layout and storage dtype: the SHA-256 of every
    tensor's name, shape and first :data:`FINGERPRINT_VALUES` values (as float32), in name order. Adapter layers
    are left out. ``heads`` gives those first values for tensors stored in a smaller dtype or not loaded yet (as
    the file holds them: :attr:`osctl.train.weights.LoadReport.heads`), so a base cast while it was loaded, or
    sharded before it was read, has the fingerprint of the same base loaded in float32."""
    digest = hashlib.sha256()
    heads = heads or {}
    for name in sorted(state):
        if ".lora_" in name:
            continue
        tensor = state[name]
        plain = name.replace(".base_layer.", ".")
        digest.update(plain.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        source = heads.get(plain, None if tensor.device.type == "meta" else tensor.detach())
        if source is not None and source.numel():
            head = source.reshape(-1)[:FINGERPRINT_VALUES].to("cpu", torch.float32).contiguous()
            digest.update(head.numpy().tobytes())
    return "sha256:" + digest.hexdigest()[:16]


# --- names: peft's module keys <-> diffusers' file keys ----------------------------------------------------

def adapter_state(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The adapter tensors of a model state dict (peft keys) under diffusers' file keys, float32 on the CPU."""
    out = {}
    for key, value in state.items():
        match = _PEFT_KEY.match(key)
        if match and match["adapter"] == ADAPTER_NAME:
            out[f"{PREFIX}.{match['module']}.{match['part']}.{match['kind']}"] = \
                value.detach().to("cpu", torch.float32).contiguous()
    return out


def to_model_keys(tensors: Mapping[str, torch.Tensor], adapter_name: str = ADAPTER_NAME) -> dict[str, torch.Tensor]:
    """Diffusers' file keys -> the peft keys of a model with adapter ``adapter_name``."""
    out = {}
    for key, value in tensors.items():
        match = _FILE_KEY.match(key.removeprefix(f"{PREFIX}."))
        if match:
            out[f"{match['module']}.{match['part']}.{adapter_name}.{match['kind']}"] = value
    return out


# --- files --------------------------------------------------------------------------------------------------

def adapter_parts(model: torch.nn.Module) -> list[tuple[str, str, torch.nn.Module]]:
    """``(subfolder, key prefix, module)`` of each diffusers model inside ``model`` (a family's
    ``weight_parts()``: one transformer is ``("", "transformer.", ...)``, Wan 2.2's experts are
    ``transformer/`` and ``transformer_2/``); a plain model is ``[("", "", model)]``. Each part's adapter
    is its own file, with keys relative to that diffusers model, so a pipeline loads it."""
    parts = getattr(model, "weight_parts", None)
    return list(parts()) if callable(parts) else [("", "", model)]


def part_prefix(model: torch.nn.Module, file: Path) -> str:
    """The key prefix in ``model`` of the part an adapter ``file`` belongs to (its folder names the part when
    the model has several)."""
    parts = adapter_parts(model)
    if len(parts) == 1:
        return parts[0][1]
    for sub, prefix, _ in parts:
        if Path(file).parent.name == sub:
            return prefix
    raise UsageError(f"{file} does not say which of {', '.join(s for s, _, _ in parts)} it adapts; give the "
                     "adapter folder of a LoRA checkpoint (adapter/<transformer>/...) or apply it to a "
                     "one-transformer model.")


def adapter_files(path: Path, *, ema: bool = True) -> list[Path]:
    """Every adapter file ``path`` names: :func:`adapter_file`, or one per part (``adapter/transformer/``,
    ``adapter/transformer_2/`` of a two-expert checkpoint)."""
    path = Path(path).expanduser()
    try:
        return [adapter_file(path, ema=ema)]
    except UsageError:
        if not path.is_dir():
            raise
    folder = path
    for sub in ((ADAPTER_EMA_DIR, ADAPTER_DIR) if ema else (ADAPTER_DIR,)):
        if (path / sub).is_dir():
            folder = path / sub
            break
    found = sorted(folder.glob(f"*/{LORA_WEIGHTS}"))
    if not found:
        return [adapter_file(path, ema=ema)]  # its error names what is missing
    return found

def save_adapter(folder: Path, tensors: Mapping[str, torch.Tensor], spec: AdapterSpec) -> Path:
    """Write ``folder/pytorch_lora_weights.safetensors`` (diffusers' keys and metadata, plus osctl's)."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    metadata = {
        "format": "pt",
        DIFFUSERS_META_KEY: json.dumps({f"{PREFIX}.{k}": v for k, v in spec.diffusers_metadata().items()},
                                       indent=2, sort_keys=True),
        OSCTL_META_KEY: json.dumps(asdict(spec), sort_keys=True),
    }
    path = folder / LORA_WEIGHTS
    tmp = path.with_name(f".{path.name}.tmp")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
    tmp.replace(path)
    return path


def adapter_file(path: Path, *, ema: bool = True) -> Path:
    """The adapter file ``path`` names: the file itself, a folder holding ``pytorch_lora_weights.safetensors``,
    or a LoRA training checkpoint (its ``adapter_ema/``, else ``adapter/``; ``ema=False``: ``adapter/``)."""
    path = Path(path).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        if (path / LORA_WEIGHTS).is_file():
            return path / LORA_WEIGHTS
        order = (ADAPTER_EMA_DIR, ADAPTER_DIR) if ema else (ADAPTER_DIR,)
        for sub in order:
            if (path / sub / LORA_WEIGHTS).is_file():
                return path / sub / LORA_WEIGHTS
        raise UsageError(f"{path} holds no {LORA_WEIGHTS} (nor adapter/ of a LoRA checkpoint); give the adapter "
                         "file or the folder that holds it.")
    raise UsageError(f"LoRA adapter {path} does not exist; give a {LORA_WEIGHTS} file or its folder.")


def read_adapter(path: Path, *, ema: bool = True) -> Adapter:
    """Read an adapter (see :func:`adapter_file` for what ``path`` may be); ``DataError`` for a file that is
    not a LoRA adapter in diffusers' format."""
    from osctl.train.weights import load_safetensors_file

    file = adapter_file(path, ema=ema)
    if file.suffix != ".safetensors":
        raise UsageError(f"{file} is not a .safetensors adapter; osctl reads LoRA adapters in diffusers' "
                         f"{LORA_WEIGHTS} format.")
    meta = read_metadata(file)
    tensors = load_safetensors_file(file)
    modules: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        match = _FILE_KEY.match(key.removeprefix(f"{PREFIX}."))
        if match is None or match["kind"] != "weight":
            if key.endswith(".lora_B.bias"):
                raise DataError(f"{file}: adapters with a lora_B bias are not supported; retrain without bias.")
            raise DataError(f"{file}: tensor {key!r} is not a LoRA weight in diffusers' format "
                            "(<module>.lora_A.weight / lora_B.weight); convert the adapter to that format first.")
        modules.setdefault(match["module"], {})[match["part"]] = value
    pairs = {}
    for module, parts in modules.items():
        if set(parts) != {"lora_A", "lora_B"}:
            raise DataError(f"{file}: module {module!r} has {sorted(parts)} but needs lora_A and lora_B.")
        pairs[module] = (parts["lora_A"], parts["lora_B"])
    if not pairs:
        raise DataError(f"{file} holds no LoRA weights.")
    spec = _spec_from_metadata(meta, pairs)
    return Adapter(spec=spec, modules=pairs, source=str(file))


def _spec_from_metadata(meta: dict[str, Any], pairs: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> AdapterSpec:
    """The spec from osctl's metadata, else diffusers' (alpha = rank when neither says, as diffusers assumes)."""
    ranks = {a.shape[0] for a, _ in pairs.values()}
    rank = max(ranks)
    if OSCTL_META_KEY in meta:
        known = {k: v for k, v in meta[OSCTL_META_KEY].items() if k in AdapterSpec.__dataclass_fields__}
        return AdapterSpec(**known)
    diffusers = {k.removeprefix(f"{PREFIX}."): v for k, v in meta.get(DIFFUSERS_META_KEY, {}).items()}
    targets = diffusers.get("target_modules") or sorted({m.rsplit(".", 1)[-1] for m in pairs})
    return AdapterSpec(rank=int(diffusers.get("r", rank)), alpha=float(diffusers.get("lora_alpha", rank)),
                       target_modules=list(targets), dropout=float(diffusers.get("lora_dropout", 0.0)))


# --- using an adapter ---------------------------------------------------------------------------------------

def load_adapter_weights(model: torch.nn.Module, adapter: Adapter) -> None:
    """Copy ``adapter``'s weights into the LoRA layers of an adapted ``model`` (every one must match)."""
    wanted = to_model_keys({f"{PREFIX}.{m}.lora_A.weight": a for m, (a, _) in adapter.modules.items()}
                           | {f"{PREFIX}.{m}.lora_B.weight": b for m, (_, b) in adapter.modules.items()})
    own = {name: p for name, p in model.named_parameters() if ".lora_" in name}
    missing = sorted(set(own) - set(wanted))
    unexpected = sorted(set(wanted) - set(own))
    if missing or unexpected:
        raise ConfigError(f"{adapter.source} does not fit this model's adapter ({len(missing)} missing, "
                          f"{len(unexpected)} unexpected, e.g. {(missing or unexpected)[0]}); train.lora must be the "
                          "one it was trained with.")
    with torch.no_grad():
        for name, param in own.items():
            value = wanted[name]
            if tuple(value.shape) != tuple(param.shape):
                raise ConfigError(f"{adapter.source}: {name} has shape {tuple(value.shape)}, the model's adapter "
                                  f"{tuple(param.shape)}; train.lora.rank must be the one it was trained with.")
            param.copy_(value.to(param.device, param.dtype))


def merge_into(state: dict[str, torch.Tensor], adapter: Adapter, scale: float = 1.0) -> list[str]:
    """Add ``scale * alpha/rank * B @ A`` to ``state[<module>.weight]`` for every adapted module (computed in
    float32, stored in the weight's dtype); returns the merged module names. ``ConfigError`` when a module
    is missing or has another shape (the adapter belongs to another model)."""
    merged = []
    for module, (a, b) in adapter.modules.items():
        key = f"{module}.weight"
        if key not in state:
            raise ConfigError(f"{adapter.source} adapts {module!r}, which this model does not have; the adapter was "
                              "trained on another model family.")
        weight = state[key]
        delta = (b.float() @ a.float()) * (scale * adapter.alphas.get(module, adapter.spec.alpha) / a.shape[0])
        if tuple(delta.shape) != tuple(weight.shape):
            raise ConfigError(f"{adapter.source}: the update of {module!r} has shape {tuple(delta.shape)} but the "
                              f"weight {tuple(weight.shape)}; the adapter was trained on another model size.")
        state[key] = (weight.float() + delta.to(weight.device)).to(weight.dtype)
        merged.append(module)
    return merged


def merge_into_model(model: torch.nn.Module, adapter: Adapter, scale: float = 1.0, prefix: str | None = None) -> list[str]:
    """:func:`merge_into` on a plain (not adapted) model's weights, in place; ``prefix``: where the adapted
    diffusers model sits in ``model`` (default: from the adapter file's place, see :func:`part_prefix`)."""
    if prefix is None:
        prefix = part_prefix(model, Path(adapter.source)) if adapter.source else ""
    if prefix:
        adapter = Adapter(spec=adapter.spec, modules={prefix + m: pair for m, pair in adapter.modules.items()},
                          alphas={prefix + m: a for m, a in adapter.alphas.items()}, source=adapter.source)
    params = dict(model.named_parameters())
    state = {f"{m}.weight": params[f"{m}.weight"].data for m in adapter.modules if f"{m}.weight" in params}
    missing = [m for m in adapter.modules if f"{m}.weight" not in params]
    if missing:
        raise ConfigError(f"{adapter.source} adapts {missing[0]!r}, which {type(model).__name__} does not have; the "
                          "adapter was trained on another model family.")
    merged = merge_into(state, adapter, scale)
    with torch.no_grad():
        for key, value in state.items():
            params[key].data.copy_(value)
    return merged


def _class_name(model: torch.nn.Module) -> str:
    from osctl.train.export import model_class

    return model_class(model).__name__


# --- training: the model of a LoRA run, and its checkpoints -----------------------------------------------

def prepare_lora_model(model: torch.nn.Module, recipe: Any, registry: Any, resume_dir: Path | None,
                       notes: list[str], base_report: Any = None) -> AdapterSpec:
    """Make ``model`` the model of a LoRA run: the base weights (``train.pretrained``, also when resuming: a
    LoRA checkpoint holds the adapter alone; ``base_report``: the LoadReport of a model built with them already,
    see :mod:`osctl.train.lean_load`), frozen; the adapter injected and, when resuming, restored from
    ``resume_dir/adapter`` after checking it was trained on this base. Returns the adapter's spec."""
    from osctl.train.weights import load_into

    train_cfg = recipe.train
    if train_cfg.pretrained:
        report = base_report if base_report is not None else load_into(model, Path(train_cfg.pretrained))
        notes.append(f"LoRA base: {report.summary()}")
    fingerprint = base_fingerprint(model.state_dict(), heads=base_report.heads if base_report is not None else None)
    declared = None
    try:
        declared = registry.get("model", recipe.model.name).spec.metadata.get("lora_target_modules")
    except Exception:  # an unregistered model (tests build diffusers classes directly): generic names
        declared = None
    spec = spec_from_settings(train_cfg.lora, model, declared)
    spec.base_fingerprint = fingerprint
    from osctl.train.frozen_base import float32_placeholders

    with float32_placeholders(model):  # a base in train.base_dtype or still empty: a float32 adapter with values
        add_adapter(model, spec)
    model._osctl_adapter_spec = spec  # validation builds its sampling copy with the same adapter layers
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    notes.append(f"LoRA rank {spec.rank}, alpha {spec.alpha:g} on {', '.join(spec.target_modules)}: "
                 f"{trainable / 1e6:.3f} M adapter parameters; base {fingerprint} frozen")
    if resume_dir is not None:
        for file in adapter_files(resume_dir / ADAPTER_DIR, ema=False):
            recorded = read_metadata(file).get(OSCTL_META_KEY, {}).get("base_fingerprint")
            if recorded and recorded != fingerprint:
                raise ConfigError(f"{resume_dir}/{ADAPTER_DIR} was trained on base {recorded} but this run's base "
                                  f"is {fingerprint}; resume with the base weights it was trained on (model.path / "
                                  "train.pretrained).")
        load_checkpoint_adapters(model, resume_dir / ADAPTER_DIR)
    return spec


def trainable_state(strategy: Any, local: list[tuple[str, torch.Tensor]] | None = None) -> dict[str, torch.Tensor] | None:
    """The trainable parameters (the adapter) as full tensors on rank 0, ``local`` substituted (e.g. EMA)."""
    gather = getattr(strategy, "trainable_state_dict", None)
    if callable(gather):
        return gather(local)
    trainable = {n for n, p in strategy.module.named_parameters() if p.requires_grad}
    full = strategy.full_state_dict(local)
    return None if full is None else {k: v for k, v in full.items() if k in trainable}


def save_checkpoint_adapters(folder: Path, strategy: Any, ema: Any, spec: AdapterSpec, *, is_main: bool,
                             step: int) -> None:
    """``adapter/`` (and ``adapter_ema/``) of a LoRA checkpoint; every rank takes part, rank 0 writes."""
    state = trainable_state(strategy)
    ema_state = None
    if ema is not None:
        names = [name for name, _ in strategy.local_parameters()]
        ema_state = trainable_state(strategy, list(zip(names, ema.shadow, strict=True)))
    if not is_main:
        return
    model = strategy.module
    for sub, prefix, part in adapter_parts(model):
        stamped = AdapterSpec(**{**asdict(spec), "step": step, "base_class": _class_name(part)})
        for folder_name, values in ((ADAPTER_DIR, state), (ADAPTER_EMA_DIR, ema_state)):
            if values is None:
                continue
            tensors = adapter_state({k.removeprefix(prefix): v for k, v in values.items() if k.startswith(prefix)})
            if tensors:
                save_adapter(folder / folder_name / sub if sub else folder / folder_name, tensors, stamped)


def load_checkpoint_adapters(model: torch.nn.Module, folder: Path) -> list[Adapter]:
    """Restore every part's adapter of a LoRA checkpoint's ``adapter/`` into the adapted ``model`` at once."""
    adapters = []
    merged = Adapter(spec=AdapterSpec(rank=1, alpha=1.0, target_modules=[]), source=str(folder))
    for file in adapter_files(folder, ema=False):
        adapter = read_adapter(file)
        prefix = part_prefix(model, file)
        merged.modules.update({prefix + m: pair for m, pair in adapter.modules.items()})
        adapters.append(adapter)
    load_adapter_weights(model, merged)
    return adapters
