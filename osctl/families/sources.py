"""Where a family's released files are: a diffusers pipeline folder, one component folder, or a hub id.

A released diffusers repository has ``model_index.json`` at its top (the pipeline class and, per component,
``[library, class]``) and one folder per component. osctl reads such a layout from a local folder or from
the Hugging Face cache, offline: a hub id that is not cached is reported (:func:`missing_source`) with the
download command, never fetched. A folder of another family is an error naming the class it holds.

Nothing here imports torch; plugins call these from their config models (recipe checks, plans).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from osctl.availability import MissingWeights
from osctl.errors import ConfigError
from osctl.hub import cached_snapshot, download_command, repo_cache_folder

MODEL_INDEX = "model_index.json"
CONFIG = "config.json"
#: files of which one marks a folder holding diffusers weights
DIFFUSERS_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.safetensors.index.json",
                     "diffusion_pytorch_model.bin", "diffusion_pytorch_model.bin.index.json")


@dataclass(frozen=True)
class Family:
    """The class names that identify one family's files (e.g. Wan: ``WanPipeline``, ``WanTransformer3DModel``).

    ``transformer_classes`` and ``autoencoder_classes`` are the diffusers classes of its ``transformer``
    and ``vae`` folders; ``pipeline_classes`` the ``_class_name`` values of its ``model_index.json``.
    """

    name: str
    pipeline_classes: tuple[str, ...]
    transformer_classes: tuple[str, ...]
    autoencoder_classes: tuple[str, ...] = ()
    model_plugin: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def model_metadata(self, presets: dict[str, dict[str, Any]]) -> dict[str, Any]:
        """The model plugin's registry metadata: its presets' summaries, the classes and pipeline it loads."""
        return {"presets": {name: preset["summary"] for name, preset in presets.items()},
                "class_names": self.transformer_classes, "family": self.model_plugin,
                "pipeline_class": self.pipeline_classes[0]}


def looks_like_hub_id(value: str) -> bool:
    """``ORG/NAME`` (or ``NAME``) that is not an existing or path-like local path."""
    if value.startswith(("/", ".", "~")) or "\\" in value or value.count("/") > 1:
        return False
    return not Path(value).expanduser().exists()


def cached_repo(repo_id: str, cache_dir: str | os.PathLike[str] | None = None) -> Path | None:
    """The cached snapshot of hub repo ``repo_id`` holding a ``model_index.json`` or a ``config.json``, else None."""
    return cached_snapshot(repo_id, cache_dir, markers=(MODEL_INDEX, CONFIG))


def resolve_root(value: str, cache_dir: str | os.PathLike[str] | None = None) -> Path | None:
    """The local folder ``value`` names: itself when it is a folder, the cached snapshot of a hub id, else None."""
    path = Path(value).expanduser()
    if path.is_dir():
        return path
    if looks_like_hub_id(value):
        return cached_repo(value, cache_dir)
    return None


def missing_source(value: str, key: str, *, what: str, cache_dir: str | os.PathLike[str] | None = None,
                   fetch: str | None = None) -> MissingWeights:
    """The :class:`MissingWeights` of ``value`` (recipe key ``key``) that :func:`resolve_root` did not find;
    ``fetch`` says how to get a local folder (a hub id gets its download command)."""
    path = Path(value).expanduser()
    if looks_like_hub_id(value):  # ``fetch`` is for local folders: a hub id names its own download
        where = repo_cache_folder(value, cache_dir)
        return MissingWeights(key, f"{value!r} is not available offline: it is not in the Hugging Face cache at "
                                   f"{where}", str(where), f"download it with `{download_command(value, cache_dir)}`")
    detail = f"{value!r} does not exist" if not path.exists() else f"{value!r} is not a folder"
    return MissingWeights(key, detail, str(path), fetch or f"put the {what} there, or point {key} at it")


def read_json_object(path: Path, key: str) -> dict[str, Any]:
    """A JSON object file; ``ConfigError`` naming ``key`` and the file when it is not one."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{key}: cannot read {str(path)!r} ({exc}); the file is damaged.") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{key}: {str(path)!r} does not hold a JSON object; the file is damaged.")
    return data


def model_index(root: Path, key: str) -> dict[str, Any] | None:
    """The ``model_index.json`` of a pipeline folder, or None when ``root`` is not one."""
    path = root / MODEL_INDEX
    return read_json_object(path, key) if path.is_file() else None


def index_class(index: dict[str, Any], component: str) -> str | None:
    """The class ``model_index.json`` gives for ``component`` (``["diffusers", "X"]`` -> ``X``), None when absent."""
    entry = index.get(component)
    if isinstance(entry, list | tuple) and len(entry) == 2 and isinstance(entry[1], str):
        return entry[1]
    return None


def check_pipeline_family(index: dict[str, Any], root: Path, family: Family, key: str) -> None:
    """Refuse a pipeline folder of another family, naming the pipeline and transformer classes found."""
    found = index.get("_class_name")
    transformer = index_class(index, "transformer") or index_class(index, "transformer_2")
    if found in family.pipeline_classes and (transformer is None or transformer in family.transformer_classes):
        return
    what = f"a {found or 'pipeline without _class_name'}" + (f" (transformer {transformer})" if transformer else "")
    raise ConfigError(f"{key}: {str(root)!r} holds {what}, not a {family.name} pipeline "
                      f"({', '.join(family.pipeline_classes)}); point {key} at a {family.name} folder, or choose the "
                      "model plugin of that family (`osctl plugins list --kind model`).")


def check_component_class(config: dict[str, Any], path: Path, classes: tuple[str, ...], family: Family,
                          key: str) -> None:
    """Refuse a component ``config.json`` whose ``_class_name`` is not one of ``classes``, naming the class found."""
    found = config.get("_class_name")
    if found in classes:
        return
    raise ConfigError(f"{key}: {str(path / CONFIG)!r} describes a {found or 'model without _class_name'}, not a "
                      f"{family.name} {' / '.join(classes)}; point {key} at a {family.name} folder.")


def has_diffusers_weights(folder: Path) -> bool:
    """True when ``folder`` holds diffusers weights (single or sharded, safetensors or bin)."""
    return any((folder / name).is_file() for name in DIFFUSERS_WEIGHTS)


@dataclass(frozen=True)
class Located:
    """A family component found on disk: its folder(s) and, for a pipeline, its ``model_index.json``."""

    folders: dict[str, Path]
    index: dict[str, Any] | None = None
    root: Path | None = None


def locate_component(value: str, key: str, family: Family, *, subfolder: str, classes: tuple[str, ...],
                     cache_dir: str | os.PathLike[str] | None = None) -> Located | None:
    """The folder of one component (``subfolder`` of a pipeline, or the folder itself), family-checked.

    ``value`` is a local folder or a hub id: a pipeline folder (``model_index.json``: its ``subfolder``), or
    a component folder (``config.json``). None when nothing is on this machine yet (see
    :func:`missing_source`); ``ConfigError`` for a folder of another family or without the component.
    """
    root = resolve_root(value, cache_dir)
    if root is None:
        return None
    index = model_index(root, key)
    if index is not None:
        check_pipeline_family(index, root, family, key)
        folder = root / subfolder
        if not (folder / CONFIG).is_file():
            raise ConfigError(f"{key}: the pipeline folder {str(root)!r} has no {subfolder}/config.json; the download "
                              "is incomplete.")
        check_component_class(read_json_object(folder / CONFIG, key), folder, classes, family, key)
        return Located({subfolder: folder}, index, root)
    if (root / CONFIG).is_file():
        check_component_class(read_json_object(root / CONFIG, key), root, classes, family, key)
        return Located({subfolder: root}, None, root)
    nested = root / subfolder
    if (nested / CONFIG).is_file():
        check_component_class(read_json_object(nested / CONFIG, key), nested, classes, family, key)
        return Located({subfolder: nested}, None, root)
    raise ConfigError(f"{key}: {str(root)!r} holds neither {MODEL_INDEX} nor {CONFIG}; point {key} at a {family.name} "
                      f"pipeline folder or at its {subfolder}/ folder.")


def locate_transformers(value: str, key: str, family: Family, *, names: tuple[str, ...] = ("transformer",
                                                                                          "transformer_2"),
                        cache_dir: str | os.PathLike[str] | None = None) -> Located | None:
    """The transformer folder(s) ``value`` holds, family-checked; None when nothing is on this machine yet.

    Accepted: a pipeline folder (``model_index.json``; every one of ``names`` it lists), one transformer
    folder (``config.json``: the first name), or a folder of per-name subfolders as an osctl checkpoint of a
    model with several transformers writes (``model/transformer/``, ``model/transformer_2/``).
    """
    root = resolve_root(value, cache_dir)
    if root is None:
        return None
    index = model_index(root, key)
    folders: dict[str, Path] = {}
    if index is not None:
        check_pipeline_family(index, root, family, key)
        for name in names:
            if index_class(index, name) is not None:
                folders[name] = root / name
        if not folders:
            raise ConfigError(f"{key}: the pipeline folder {str(root)!r} lists no transformer in {MODEL_INDEX}.")
    elif (root / CONFIG).is_file():
        folders[names[0]] = root
    else:
        folders = {name: root / name for name in names if (root / name / CONFIG).is_file()}
        if not folders:
            raise ConfigError(f"{key}: {str(root)!r} holds no {family.name} transformer ({MODEL_INDEX}, {CONFIG} or "
                              f"{'/, '.join(names)}/ folders); point {key} at a released pipeline or transformer folder.")
    for folder in folders.values():
        if not (folder / CONFIG).is_file():
            raise ConfigError(f"{key}: {str(folder / CONFIG)!r} is missing; the download is incomplete.")
        check_component_class(read_json_object(folder / CONFIG, key), folder, family.transformer_classes, family, key)
    return Located(folders, index, root)
