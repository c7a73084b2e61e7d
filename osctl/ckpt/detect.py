"""Which checkpoint format a path holds, decided from file names, headers and metadata (never by loading weights).

Formats (the ``format`` field of ``ckpt inspect --json``):

========================= ==================================================================================
``osctl-checkpoint``      ``checkpoint-N/`` written by ``osctl train`` (``trainer_state.json``/``manifest.json``);
                          also ``.checkpoint-N.partial/``, a save that never finished (``partial``)
``osp-training-checkpoint`` an Open-Sora-Plan (accelerate + DeepSpeed) ``checkpoint-N/``: ``model/``,
                          ``model_ema/``, ``pytorch_model/`` engine state, ``latest``, ``random_states_*.pkl``
``diffusers``             a diffusers model folder: ``config.json`` + ``diffusion_pytorch_model*.safetensors``
                          (sharded with an index, or ``.bin``)
``diffusers-pipeline``    a diffusers pipeline folder: ``model_index.json`` + one folder per component
                          (``transformer/``, ``transformer_2/``, ``vae/``, ``text_encoder/``, ...), as released
``transformers``          a transformers folder: ``config.json`` + ``model*.safetensors`` / ``pytorch_model*.bin``
``safetensors-folder``    safetensors weights (single or sharded with an index) without a ``config.json``
``deepspeed``             a DeepSpeed engine folder (``latest`` + ``global_stepN/`` or the tag folder itself)
``dcp``                   a torch.distributed.checkpoint folder (``.metadata`` + ``*.distcp``), e.g. FSDP state
``safetensors``           one ``.safetensors`` file
``torch``                 one ``.pt/.pth/.bin/.ckpt`` file (read with ``weights_only=True``)
========================= ==================================================================================

:func:`loader_for` maps a ``config.json`` to the registered plugin that builds it: a component that
declares the class in ``metadata["class_names"]``, a component named or aliased like the class, or the
built-in table :data:`KNOWN_CLASSES` (reported only when the registry really has that component).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from osctl.ckpt.headers import INDEX_SUFFIX, find_weights
from osctl.errors import DataError, UsageError

OSCTL_CHECKPOINT = "osctl-checkpoint"
OSP_TRAINING = "osp-training-checkpoint"
DIFFUSERS = "diffusers"
DIFFUSERS_PIPELINE = "diffusers-pipeline"
TRANSFORMERS = "transformers"
SAFETENSORS_FOLDER = "safetensors-folder"
DEEPSPEED = "deepspeed"
DCP = "dcp"
SAFETENSORS = "safetensors"
TORCH = "torch"
LORA_ADAPTER = "lora-adapter"

DESCRIPTIONS = {
    OSCTL_CHECKPOINT: "osctl training checkpoint",
    OSP_TRAINING: "Open-Sora-Plan training checkpoint (accelerate/DeepSpeed layout)",
    DIFFUSERS: "diffusers model folder",
    DIFFUSERS_PIPELINE: "diffusers pipeline folder",
    TRANSFORMERS: "transformers model folder",
    SAFETENSORS_FOLDER: "safetensors weights folder (no config.json)",
    DEEPSPEED: "DeepSpeed engine checkpoint",
    DCP: "torch.distributed.checkpoint folder (FSDP/DCP)",
    SAFETENSORS: "safetensors file",
    TORCH: "torch pickle file",
    LORA_ADAPTER: "LoRA adapter (diffusers/PEFT format, loads with load_lora_weights)",
}

TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
DIFFUSERS_STEM = "diffusion_pytorch_model"
TRANSFORMERS_STEMS = ("model", "pytorch_model")
CHECKPOINT_NAME = re.compile(r"^checkpoint-(\d+)$")
#: the folder ``osctl train`` writes a checkpoint into before renaming it (left behind by an interrupted save)
PARTIAL_NAME = re.compile(r"^\.(checkpoint-\d+)\.partial$")
GLOBAL_STEP = re.compile(r"^global_step(\d+)$")

#: ``_class_name`` / ``architectures[0]`` -> (registry kind, component name); used when the registry itself
#: does not name the class (e.g. the WF-VAE folder says ``WFVAEModel``, registered as ``wfvae``)
KNOWN_CLASSES: dict[str, tuple[str, str]] = {
    "OpenSoraT2V_v1_3": ("model", "opensora_v1_3"),
    "WFVAEModel": ("autoencoder", "wfvae"),
    "MT5EncoderModel": ("text_encoder", "t5"),
    "T5EncoderModel": ("text_encoder", "t5"),
    "UMT5EncoderModel": ("text_encoder", "t5"),
    "WanTransformer3DModel": ("model", "wan"),
    "AutoencoderKLWan": ("autoencoder", "wan_vae"),
    "MT5ForConditionalGeneration": ("text_encoder", "t5"),
    "T5ForConditionalGeneration": ("text_encoder", "t5"),
}
#: tensor-name signatures used to guess the architecture of weights that come without a config
SIGNATURES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("OpenSoraT2V_v1_3", ("adaln_single.linear.weight", "caption_projection.linear_1.weight", "pos_embed.proj.weight",
                          "transformer_blocks.0.attn1.to_q.weight", "scale_shift_table")),
    ("WFVAEModel", ("encoder.wavelet_tranform_l1.aa", "decoder.inverse_wavelet_tranform_l1.aa",
                    "decoder.up1.0.conv1.conv.weight")),
)


@dataclass
class Detected:
    """A recognised path: its format plus the parts other code needs (relative to ``path``)."""

    format: str
    path: Path
    weights: Path | None = None  # diffusers/safetensors weights: the index or the single file
    config: Path | None = None
    model_dir: Path | None = None  # training checkpoints: the model/ and model_ema/ folders
    ema_dir: Path | None = None
    engine: Path | None = None  # DeepSpeed root folder or DCP folder
    engine_tag: str | None = None
    partial: bool = False  # an osctl checkpoint whose save never finished (``.checkpoint-N.partial``)
    notes: list[str] = field(default_factory=list)

    @property
    def description(self) -> str:
        """A human name of the format."""
        if self.partial:
            return f"incomplete {DESCRIPTIONS[self.format]} (its save was interrupted)"
        return DESCRIPTIONS[self.format]


def detect(path: Path) -> Detected:
    """Recognise ``path``; ``UsageError`` when it does not exist, ``DataError`` when no known format fits."""
    path = Path(path).expanduser()
    if not path.exists():
        text = str(path)
        if re.fullmatch(r"[\w.-]+/[\w.-]+", text) and not text.startswith("."):
            raise UsageError(f"{path} does not exist here; osctl reads local files only.",
                             hint=f"if it is a Hugging Face repo id, download it first: hf download {text} --local-dir {path.name}")
        raise UsageError(f"{path} does not exist; give a checkpoint file or folder.")
    if path.is_file():
        return _detect_file(path)
    return _detect_folder(path)


def _detect_file(path: Path) -> Detected:
    name = path.name
    if name.endswith(INDEX_SUFFIX):
        folder = _detect_folder(path.parent)
        folder.notes.append(f"{name} is an index; described its folder {path.parent}")
        return folder
    if name.endswith(".safetensors"):
        from osctl.ckpt.adapters import is_adapter_file

        return Detected(LORA_ADAPTER if is_adapter_file(path) else SAFETENSORS, path, weights=path)
    if name.endswith(TORCH_SUFFIXES):
        return Detected(TORCH, path, weights=path)
    with path.open("rb") as handle:
        head = handle.read(16)
    if len(head) >= 9 and head[8:9] == b"{":
        return Detected(SAFETENSORS, path, weights=path)
    if head.startswith(b"PK\x03\x04") or head[:1] == b"\x80":
        return Detected(TORCH, path, weights=path)
    raise DataError(f"{path} is neither safetensors nor a torch file (.pt/.pth/.bin/.ckpt); osctl cannot read it.")


def _detect_folder(path: Path) -> Detected:
    osctl_markers = (path / "training_state").is_dir() and (path / "rng").is_dir()  # also an unsealed save
    partial = PARTIAL_NAME.match(path.name) is not None  # by name: a save killed early has no marker yet
    if partial or (path / "trainer_state.json").is_file() or _manifest_format(path) == "osctl-checkpoint" \
            or osctl_markers:
        found = Detected(OSCTL_CHECKPOINT, path, partial=partial)
        _training_parts(found)
        state = path / "training_state"
        if (state / "deepspeed").is_dir():
            found.engine, found.engine_tag = _deepspeed_root(state / "deepspeed")
        elif (state / "dcp").is_dir():
            found.engine = state / "dcp"
        return found
    if (path / "model" / "config.json").is_file() and _looks_like_accelerate(path):
        found = Detected(OSP_TRAINING, path)
        _training_parts(found)
        if (path / "latest").is_file():
            found.engine, found.engine_tag = _deepspeed_root(path)
        return found
    if (path / "model_index.json").is_file():
        return Detected(DIFFUSERS_PIPELINE, path, config=path / "model_index.json")
    if (path / ".metadata").is_file() and any(path.glob("*.distcp")):
        return Detected(DCP, path, engine=path)
    if (path / "latest").is_file() or any(path.glob("*model_states.pt")):
        root, tag = _deepspeed_root(path)
        return Detected(DEEPSPEED, path, engine=root, engine_tag=tag)
    config = path / "config.json"
    diffusers = find_weights(path, [DIFFUSERS_STEM])
    bin_weights = _bin_weights(path, DIFFUSERS_STEM)
    if diffusers or bin_weights:
        return Detected(DIFFUSERS, path, weights=diffusers or bin_weights, config=config if config.is_file() else None)
    transformers = find_weights(path, TRANSFORMERS_STEMS) or _bin_weights(path, "pytorch_model")
    if transformers and config.is_file():
        return Detected(TRANSFORMERS, path, weights=transformers, config=config)
    from osctl.ckpt.adapters import LORA_WEIGHTS

    if (path / LORA_WEIGHTS).is_file():
        return Detected(LORA_ADAPTER, path, weights=path / LORA_WEIGHTS)
    loose = transformers or _single_index(path)
    if loose:
        return Detected(SAFETENSORS_FOLDER, path, weights=loose)
    raise DataError(f"{path} is not a checkpoint format osctl knows{_folder_hint(path)}.")


def _training_parts(found: Detected) -> None:
    path = found.path
    config = model_config_file(path / "model")
    if config is not None:
        found.model_dir = path / "model"
        found.config = config
    if model_config_file(path / "model_ema") is not None:
        found.ema_dir = path / "model_ema"


def part_folders(folder: Path) -> list[Path]:
    """The subfolders of a model folder saved in parts (``model/transformer/``, ``model/transformer_2/``: a model
    of several diffusers models, e.g. Wan 2.2's two experts), each with its own ``config.json``; empty when
    ``folder`` holds one model itself."""
    if (folder / "config.json").is_file() or not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_dir() and (p / "config.json").is_file())


def model_config_file(folder: Path) -> Path | None:
    """The ``config.json`` describing a training checkpoint's model folder (its first part's when in parts)."""
    if (folder / "config.json").is_file():
        return folder / "config.json"
    parts = part_folders(folder)
    return parts[0] / "config.json" if parts else None


def _looks_like_accelerate(path: Path) -> bool:
    markers = ("pytorch_model", "latest", "model_ema", "zero_to_fp32.py", "optimizer.bin", "scheduler.bin")
    return any((path / marker).exists() for marker in markers) or any(path.glob("random_states_*.pkl"))


def _deepspeed_root(path: Path) -> tuple[Path, str | None]:
    """(folder holding ``latest``, tag) of a DeepSpeed checkpoint given its root or its tag folder."""
    latest = path / "latest"
    if latest.is_file():
        tag = latest.read_text(encoding="utf-8", errors="replace").strip()
        return path, tag or None
    if any(path.glob("*model_states.pt")):
        return path.parent, path.name
    for child in sorted(path.iterdir()) if path.is_dir() else []:
        if child.is_dir() and any(child.glob("*model_states.pt")):
            return path, child.name
    return path, None


def _bin_weights(path: Path, stem: str) -> Path | None:
    for name in (f"{stem}.bin.index.json", f"{stem}.bin"):
        if (path / name).is_file():
            return path / name
    return None


def _single_index(path: Path) -> Path | None:
    indexes = sorted(path.glob(f"*{INDEX_SUFFIX}"))
    if len(indexes) == 1:
        return indexes[0]
    singles = sorted(path.glob("*.safetensors"))
    return singles[0] if len(singles) == 1 else None


def _manifest_format(path: Path) -> str | None:
    manifest = path / "manifest.json"
    if not manifest.is_file():
        return None
    try:
        data = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data.get("format") if isinstance(data, dict) else None


def _folder_hint(path: Path) -> str:
    children = sorted(p for p in path.iterdir() if p.is_dir()) if path.is_dir() else []
    checkpoints = [p.name for p in children if CHECKPOINT_NAME.match(p.name)]
    if checkpoints:
        shown = ", ".join(sorted(checkpoints, key=lambda n: int(n.split("-")[1]))[-3:])
        return f"; it holds training checkpoints ({shown}): inspect one of them"
    models = [p.name for p in children if (p / "config.json").is_file()]
    if models:
        return f"; it holds model folders ({', '.join(models[:5])}): inspect one of them"
    return " (no config.json with weights, trainer_state.json, DeepSpeed 'latest' or DCP '.metadata' found)"


def read_config(path: Path) -> dict[str, Any]:
    """A ``config.json`` as a dict; ``DataError`` naming the file when it is not a JSON object."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"cannot read {path}: {exc}; the config is damaged.") from None
    if not isinstance(data, dict):
        raise DataError(f"{path} does not hold a JSON object; the config is damaged.")
    return data


def class_name_of(config: dict[str, Any]) -> str | None:
    """The model class a config describes: diffusers ``_class_name`` or transformers ``architectures[0]``."""
    name = config.get("_class_name")
    if isinstance(name, str):
        return name
    archs = config.get("architectures")
    if isinstance(archs, list) and archs and isinstance(archs[0], str):
        return archs[0]
    return None


def unwrap_class_name(class_name: str | None) -> str | None:
    """The model class behind a wrapper's class name: FSDP2 renames ``X`` to ``FSDPX`` (and a config written
    from the wrapped module records that name); None when ``class_name`` is not such a wrapper name."""
    if class_name and class_name.startswith("FSDP") and len(class_name) > 4:
        inner = class_name[4:]
        if inner in KNOWN_CLASSES or loader_for(inner) is not None:
            return inner
    return None


def guess_class(names: list[str] | set[str]) -> str | None:
    """The class whose tensor-name signature ``names`` match, for weights that come without a config."""
    present = set(names)
    for class_name, required in SIGNATURES:
        if all(key in present for key in required):
            return class_name
    return None


def loader_for(class_name: str | None) -> dict[str, Any] | None:
    """Which registered component builds ``class_name``: ``{"kind", "name", "provider"}`` or None.

    Looks in the installed registry (so third-party plugins count): first a component declaring the
    class in ``metadata["class_names"]``, then one named or aliased exactly like it, then
    :data:`KNOWN_CLASSES` when the registry has that component.
    """
    if not class_name:
        return None
    from osctl.errors import OsctlError
    from osctl.plugin_manager import default_registry

    try:
        registry = default_registry()
    except OsctlError:
        return None
    entries = list(registry)
    for match in (
        lambda e: class_name in tuple(e.spec.metadata.get("class_names", ()) or ()),
        lambda e: class_name == e.name or class_name in e.spec.aliases,
        lambda e: KNOWN_CLASSES.get(class_name) == (e.kind, e.name),
    ):
        for entry in entries:
            if match(entry):
                return {"kind": entry.kind, "name": entry.name, "provider": entry.provider.describe()}
    return None
