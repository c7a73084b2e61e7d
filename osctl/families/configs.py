"""The recipe configs every family's transformer and autoencoder plugins share: released files or a preset.

A family's model plugin subclasses :class:`DiffusersModelConfig` and its autoencoder plugin
:class:`DiffusersAutoencoderConfig`; each declares its facts as class attributes (the :class:`Family`, its
presets, the keys that change parameter shapes, how to fetch the files) and the few things that differ
(patch sizes, the architecture check, the geometry of its autoencoder). Everything else is here once:

- ``path`` names released files: a diffusers pipeline folder or hub id (its ``transformer/`` or ``vae/`` is
  read), one component folder, or an osctl checkpoint's ``model/``; a recipe's ``pipeline_path`` fills it;
- without ``path``, a ``preset`` gives the architecture (random weights; on the meta device, the released
  shapes for a plan);
- files that are not on this machine are reported (:meth:`missing_weights`), never downloaded; a plan
  before the download uses the preset;
- a folder of another family is a ``ConfigError`` naming the class it holds.

Nothing here imports torch: recipe checks and plans read these configs.
"""

from __future__ import annotations

from copy import deepcopy
from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from osctl.availability import MissingWeights
from osctl.errors import ConfigError, OsctlError
from osctl.families.sources import (
    Family,
    Located,
    has_diffusers_weights,
    locate_component,
    locate_transformers,
    missing_source,
    read_json_object,
)
from osctl.geometry import AutoencoderGeometry, ModelGeometry
from osctl.registry import ComponentConfig


def _pydantic_error(kind: str, exc: Exception) -> PydanticCustomError:
    """A validation error carrying the one-sentence message of ``exc`` (an osctl error or a ValueError)."""
    message = exc.message if isinstance(exc, OsctlError) else str(exc)
    return PydanticCustomError(kind, "{message}", {"message": message.rstrip(".")})


class DiffusersModelConfig(ComponentConfig):
    """Recipe section ``model`` of a family from diffusers: released files (``path``) or a ``preset``.

    Subclasses set the class attributes below, redeclare ``preset`` (with their default) and their shape keys as
    optional fields, and define :meth:`patch_sizes` and :meth:`check_architecture`.
    """

    #: the family's class names (its folders are checked against them)
    FAMILY: ClassVar[Family]
    #: preset name -> {"architecture": constructor arguments, "transformers": count, "summary": ...}
    PRESETS: ClassVar[dict[str, dict[str, Any]]]
    #: keys that change parameter shapes: with ``path`` set they must agree with the folder's config.json
    SHAPE_KEYS: ClassVar[tuple[str, ...]] = ()
    #: how to get the released files (said with every missing-weights report)
    FETCH_HINT: ClassVar[str] = ""
    #: the pipeline names a model of this family may have, first the one every model has
    TRANSFORMER_NAMES: ClassVar[tuple[str, ...]] = ("transformer",)
    #: whether the transformer's prediction ignores the text states at positions the text mask marks 0 (read by
    #: :meth:`ignores_text_padding`; False, the safe default, when the family attends to its padding tokens)
    TEXT_PADDING_IGNORED: ClassVar[bool] = False

    path: str | None = Field(
        None, description="a diffusers pipeline folder or hub id of the family (its transformer/ is read), one "
                          "transformer folder, or an osctl checkpoint's model/ folder; pipeline_path fills it")
    preset: str = Field("", description="architecture when no path is given (subclasses list their presets)")
    gradient_checkpointing: bool = Field(False, description="recompute each block in backward to save memory")

    @field_validator("preset")
    @classmethod
    def _known_preset(cls, value: str) -> str:
        if value not in cls.PRESETS:
            raise PydanticCustomError("family_preset", "unknown preset; known presets: {known}",
                                      {"known": ", ".join(cls.PRESETS)})
        return value

    @model_validator(mode="after")
    def _buildable(self) -> DiffusersModelConfig:
        try:
            self.check_architecture(self.architecture() if self.path is None else self.plan_architecture())
        except (ValueError, OsctlError) as exc:
            raise _pydantic_error("family_architecture", exc) from None
        return self

    @classmethod
    def pipeline_options(cls, pipeline_path: str) -> dict[str, Any]:
        """The options a recipe's ``pipeline_path`` fills in (explicit keys win): the pipeline itself."""
        return {"path": pipeline_path}

    # -- what a family defines ------------------------------------------------------------------------
    @classmethod
    def check_architecture(cls, arch: dict[str, Any]) -> None:
        """Raise ``ValueError`` (one sentence naming the key) for constructor arguments the family's transformer
        cannot build or run (default: none)."""

    @classmethod
    def patch_sizes(cls, arch: dict[str, Any]) -> tuple[int, int]:
        """``(patch_t, patch_hw)`` of the architecture ``arch``: diffusers' ``patch_size_t`` and ``patch_size``
        (1 when absent), as CogVideoX, LTX-Video and HunyuanVideo name them (Wan has its own)."""
        return int(arch.get("patch_size_t") or 1), int(arch.get("patch_size") or 1)

    def diffusers_pipeline(self) -> dict[str, Any]:
        """What ``model_index.json`` says besides the components: the family's pipeline class (a family with
        pipeline settings, e.g. Wan 2.2's ``boundary_ratio``, adds them)."""
        return {"_class_name": self.FAMILY.pipeline_classes[0]}

    # -- what the files or the preset say ----------------------------------------------------------------
    @property
    def preset_name(self) -> str:
        return self.preset

    def preset_entry(self) -> dict[str, Any]:
        """A fresh copy of this config's preset."""
        return deepcopy(self.PRESETS[self.preset_name])

    def located(self) -> Located | None:
        """The transformer folders ``path`` holds (None when unset or not on this machine); ``ConfigError`` for a
        folder of another family."""
        if self.path is None:
            return None
        return locate_transformers(self.path, "model.path", self.FAMILY, names=self.TRANSFORMER_NAMES)

    def overrides(self) -> dict[str, Any]:
        """The architecture keys set explicitly in this config."""
        return {k: getattr(self, k) for k in self.SHAPE_KEYS
                if k in self.model_fields_set and getattr(self, k) is not None}

    def preset_architecture(self) -> dict[str, Any]:
        """The preset's constructor arguments with the explicit overrides."""
        arch = self.preset_entry()["architecture"]
        arch.update(self.overrides())
        return arch

    def architecture(self) -> dict[str, Any]:
        """The constructor arguments of the (each) transformer: the folder's config.json, or the preset with
        overrides; a shape override that contradicts the folder is a ``ConfigError``."""
        found = self.located()
        if found is None:
            if self.path is not None:
                raise ConfigError(missing_source(self.path, "model.path",
                                                 what=f"{self.FAMILY.name} pipeline").describe() + ".")
            return self.preset_architecture()
        first = next(iter(found.folders.values()))
        folder = read_json_object(first / "config.json", "model.path")
        for key, value in self.overrides().items():
            if folder.get(key) != value:
                raise ConfigError(f"model.{key}={value} conflicts with {key}={folder.get(key)} in "
                                  f"{str(first / 'config.json')!r}.",
                                  hint="drop the override: a loaded model keeps the shapes of its weights")
        return {k: v for k, v in folder.items() if not k.startswith("_")}

    def plan_architecture(self) -> dict[str, Any]:
        """:meth:`architecture`, except that files not on this machine yet plan with the preset (a plan never
        needs them)."""
        if self.path is not None and self.located() is None:
            return self.preset_architecture()
        return self.architecture()

    def transformer_names(self) -> tuple[str, ...]:
        """The pipeline names of the transformers (``("transformer",)``; Wan 2.2 A14B adds ``transformer_2``)."""
        found = self.located() if self.path is not None else None
        if found is not None:
            return tuple(found.folders)
        return self.TRANSFORMER_NAMES[: int(self.preset_entry().get("transformers", 1))]

    def transformer_count(self) -> int:
        return len(self.transformer_names())

    def ignores_text_padding(self) -> bool:
        """Whether the prediction is the same whatever the text states at masked positions (the family's
        :attr:`TEXT_PADDING_IGNORED`): ``osctl data cache`` then stores text states trimmed to each prompt."""
        return self.TEXT_PADDING_IGNORED

    def model_geometry(self) -> ModelGeometry:
        """The transformer's half of the latent geometry: its patch sizes and latent channels."""
        arch = self.plan_architecture()
        patch_t, patch_hw = self.patch_sizes(arch)
        channels = int(arch["in_channels"])
        return ModelGeometry(patch_t=int(patch_t), patch_hw=int(patch_hw), in_channels=channels,
                             out_channels=int(arch.get("out_channels") or channels))

    def missing_weights(self) -> list[MissingWeights]:
        """``path`` when it is not on this machine or a transformer folder in it holds no weights."""
        if self.path is None:
            return []
        what = f"{self.FAMILY.name} pipeline"
        found = self.located()
        if found is None:
            return [missing_source(self.path, "model.path", what=what, fetch=self.FETCH_HINT)]
        return [MissingWeights("model.path", f"{str(folder)!r} has a config.json but no diffusion_pytorch_model weights",
                               str(folder), self.FETCH_HINT)
                for folder in found.folders.values() if not has_diffusers_weights(folder)]

    def source_folders(self) -> dict[str, Path]:
        """The transformer folders ``path`` names on this machine; empty for a preset."""
        found = self.located()
        return dict(found.folders) if found is not None else {}

    def weight_sources(self) -> list[tuple[Path, str]]:
        """(folder, state-dict key prefix) of each transformer's weights ``path`` holds: the family's model names
        its transformers by their pipeline names (:class:`osctl.families.transformers.DiffusersTransformers`);
        empty for a preset (see :mod:`osctl.train.lean_load`)."""
        return [(folder, f"{name}.") for name, folder in self.source_folders().items()]


class DiffusersAutoencoderConfig(ComponentConfig):
    """Recipe section ``autoencoder`` of a family from diffusers: released files (``path``) or a ``preset``.

    Subclasses set the class attributes, redeclare ``preset`` (a ``Literal`` of their preset names, default None)
    and define :meth:`autoencoder_geometry`.
    """

    FAMILY: ClassVar[Family]
    #: the diffusers class of the ``vae/`` folder
    CLASS_NAME: ClassVar[str]
    #: preset name -> constructor arguments
    PRESETS: ClassVar[dict[str, dict[str, Any]]]
    #: the preset a plan uses when neither files nor a preset are given
    PLAN_PRESET: ClassVar[str]
    #: released pipelines (hub ids) whose VAE is not :attr:`PLAN_PRESET`'s: what a plan assumes before download
    RELEASED: ClassVar[dict[str, str]] = {}
    FETCH_HINT: ClassVar[str] = ""

    path: str | None = Field(None, description="a pipeline folder or hub id of the family (its vae/ is read) or a VAE "
                                               "folder; pipeline_path fills it")
    preset: str | None = Field(None, description="build random weights of this VAE instead of loading path (tests)")
    seed: int = Field(0, description="seed of the random weights of a preset")
    enable_tiling: bool = Field(False, description="encode/decode in overlapping spatial tiles (diffusers' tiling)")

    @model_validator(mode="after")
    def _path_or_preset(self) -> DiffusersAutoencoderConfig:
        if self.path and self.preset_name:
            raise ValueError("set either path (load weights) or preset (random weights), not both")
        if self.path:
            try:
                self.located()
            except OsctlError as exc:
                raise ValueError(exc.message.rstrip(".")) from None
        return self

    @classmethod
    def pipeline_options(cls, pipeline_path: str) -> dict[str, Any]:
        """The options a recipe's ``pipeline_path`` fills in (explicit keys win)."""
        return {"path": pipeline_path}

    @property
    def preset_name(self) -> str | None:
        return self.preset

    def autoencoder_geometry(self) -> AutoencoderGeometry:
        """The autoencoder's half of the latent geometry (from :meth:`vae_config`)."""
        raise NotImplementedError

    def located(self) -> Located | None:
        """The VAE folder ``path`` names (None when unset or not on this machine)."""
        if not self.path:
            return None
        return locate_component(self.path, "autoencoder.path", self.FAMILY, subfolder="vae",
                                classes=(self.CLASS_NAME,))

    def folder(self) -> Path | None:
        """The VAE folder on this machine, or None."""
        found = self.located()
        return found.folders["vae"] if found is not None else None

    def vae_config(self) -> dict[str, Any]:
        """The VAE's constructor arguments: the folder's config.json, else the preset; before a released pipeline
        is downloaded, the released VAE it carries (:attr:`RELEASED`, else :attr:`PLAN_PRESET`)."""
        folder = self.folder()
        if folder is not None:
            data = read_json_object(folder / "config.json", "autoencoder.path")
            return {k: v for k, v in data.items() if not k.startswith("_")}
        return deepcopy(self.PRESETS[self.preset_name or self.RELEASED.get(self.path or "", self.PLAN_PRESET)])

    def missing_weights(self) -> list[MissingWeights]:
        """``path`` when it is unset (and no preset), not on this machine, or without weights."""
        if self.preset_name:
            return []
        what = f"{self.FAMILY.name} VAE"
        if not self.path:
            return [MissingWeights("autoencoder.path", f"not set (the {what} needs its weights)", "", self.FETCH_HINT)]
        folder = self.folder()
        if folder is None:
            return [missing_source(self.path, "autoencoder.path", what=what, fetch=self.FETCH_HINT)]
        if not has_diffusers_weights(folder):
            return [MissingWeights("autoencoder.path", f"{str(folder)!r} has a config.json but no weights", str(folder),
                                   self.FETCH_HINT)]
        return []

    def diffusers_components(self) -> dict[str, Path] | None:
        """``{"vae": folder}`` when the VAE comes from files (``ckpt convert --to diffusers-pipeline`` copies it);
        None for a preset (the exporter saves the built one)."""
        folder = self.folder()
        return {"vae": folder} if folder is not None else None
