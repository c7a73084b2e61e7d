"""Registers the Open-Sora-Plan v1.3 transformer as model ``opensora_v1_3`` (alias ``OpenSoraT2V_v1_3``).

Light on purpose: every osctl command imports this module, so torch and diffusers are imported only
inside the factory. The config resolves a preset (or a released folder's ``config.json``) and declares
the model's half of the latent geometry (:meth:`OSPv13Config.model_geometry`) without loading the model code.
"""

from __future__ import annotations

import json
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from pydantic import AliasChoices, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

import osctl
from osctl.availability import MissingWeights
from osctl.geometry import ModelGeometry
from osctl.registry import ComponentConfig
from osctl_builtin.models.osp_v13.presets import (
    PRESET_SUMMARIES,
    check_architecture,
    preset_config,
    preset_names,
)

CLASS_NAME = "OpenSoraT2V_v1_3"
WEIGHT_FILES = (
    "diffusion_pytorch_model.safetensors",
    "diffusion_pytorch_model.safetensors.index.json",
    "diffusion_pytorch_model.bin",
    "diffusion_pytorch_model.bin.index.json",
)
#: keys that change parameter shapes: with ``path`` set they must agree with the folder's config.json
SHAPE_KEYS = ("num_layers", "num_attention_heads", "attention_head_dim", "caption_channels", "in_channels",
              "out_channels", "patch_size", "patch_size_t", "abs_pos_embed", "abs_pos_max_size")
#: shape keys a released config.json leaves out because v1.3 has no such part (absent means unset)
OPTIONAL_SHAPE_KEYS = ("abs_pos_embed", "abs_pos_max_size")
#: how to get the released transformer (the recipes expect it under ckpt/Open-Sora-Plan-v1.3.0/)
FETCH_HINT = ("put an OpenSoraT2V_v1_3 diffusers folder there (the released one: `hf download "
              "LanguageBind/Open-Sora-Plan-v1.3.0 --include 'any93x640x640/*' --local-dir ckpt/Open-Sora-Plan-v1.3.0`), "
              "or drop model.path to start from the preset")
#: the transformer's constructor defaults of the geometry keys, for a folder config.json that leaves them out
GEOMETRY_DEFAULTS = {"patch_size": 2, "patch_size_t": 1, "in_channels": 8}
#: keys that only change the computation: with ``path`` set an explicit value overrides config.json
RUNTIME_KEYS = ("sparse1d", "sparse_n", "sparse_blocks", "interpolation_scale_t", "interpolation_scale_h",
                "interpolation_scale_w", "rope")


class OSPv13Config(ComponentConfig):
    """Recipe section ``model`` for ``opensora_v1_3``.

    Either ``path`` (a diffusers folder with ``config.json`` + weights; its config wins over the
    preset) or ``preset`` (built with fresh weights), plus optional architecture overrides. With
    ``path`` set, shape keys must match the folder and Skiparse/interpolation keys override it
    (changing the sparse layout of trained weights needs fine-tuning).
    """

    path: str | None = Field(
        None, validation_alias=AliasChoices("path", "model_path"),
        description="diffusers folder to load (config.json + diffusion_pytorch_model*.safetensors)",
    )
    preset: str = Field("2B/122", description="named architecture when no path is given: " + ", ".join(PRESET_SUMMARIES))
    num_layers: int | None = Field(None, ge=1)
    num_attention_heads: int | None = Field(None, ge=1)
    attention_head_dim: int | None = Field(None, ge=6, description="a multiple of 6 (RoPE-3D splits it in three)")
    caption_channels: int | None = Field(None, ge=1, description="text-encoder width (4096 for mT5-XXL)")
    in_channels: int | None = Field(None, ge=1)
    out_channels: int | None = Field(None, ge=1)
    sparse1d: bool | None = Field(None, description="Skiparse attention on/off")
    sparse_n: int | None = Field(None, ge=1, description="Skiparse ratio k")
    sparse_blocks: list[int] | None = Field(
        None, description="explicit Skiparse block indices (even = single skip, odd = group skip)"
    )
    interpolation_scale_t: float | None = Field(None, gt=0)
    interpolation_scale_h: float | None = Field(None, gt=0)
    interpolation_scale_w: float | None = Field(None, gt=0)
    abs_pos_embed: str | None = Field(
        None, description="osctl extension, off in v1.3: 'learned' adds a learned vector per token position; "
                    "'learned_interpolated' resamples that table to each latent grid (position as a fraction of "
                    "the frame and clip, the same in every bucket)"
    )
    abs_pos_max_size: list[int] | None = Field(
        None, description="[frames, rows, columns] in latent tokens that the learned position table covers"
    )
    rope: bool | None = Field(
        None, description="RoPE-3D on the self-attention queries and keys (v1.3: on); false is an osctl option "
                    "that leaves positions to abs_pos_embed alone"
    )
    gradient_checkpointing: bool = Field(False, description="recompute each block in backward to save memory")

    @field_validator("preset")
    @classmethod
    def _known_preset(cls, value: str) -> str:
        if value not in preset_names():
            raise PydanticCustomError(
                "osp_preset", "unknown preset; known presets: {known}", {"known": ", ".join(preset_names())}
            )
        return value

    @model_validator(mode="after")
    def _buildable(self) -> OSPv13Config:
        if self.path is None:
            try:
                check_architecture(self.architecture())
            except ValueError as exc:
                raise PydanticCustomError("osp_architecture", "{message}", {"message": str(exc).rstrip(".")}) from None
        return self

    def overrides(self, keys: tuple[str, ...] = SHAPE_KEYS + RUNTIME_KEYS) -> dict[str, Any]:
        """The architecture keys set explicitly in this config (among ``keys``).

        Turning Skiparse off (``sparse1d: false``) also drops an inherited ``sparse_blocks`` list.
        """
        fields = self.model_fields_set
        chosen = {k: getattr(self, k) for k in keys
                  if k in fields and (getattr(self, k) is not None or k == "sparse_blocks")}
        if chosen.get("sparse1d") is False and "sparse_blocks" in keys and "sparse_blocks" not in chosen:
            chosen["sparse_blocks"] = None
        return chosen

    def architecture(self) -> dict[str, Any]:
        """The model's constructor arguments: the folder's config.json (plus runtime overrides) or the preset
        with overrides. Raises ``osctl.ConfigError`` for an unreadable or foreign folder or a shape override
        that contradicts the folder."""
        if self.path is not None:
            folder = read_folder_config(self.path)
            for key, value in self.overrides(SHAPE_KEYS).items():
                if (key in folder or key in OPTIONAL_SHAPE_KEYS) and folder.get(key) != value:
                    raise osctl.ConfigError(
                        f"model.{key}={value} conflicts with {key}={folder.get(key)} in "
                        f"{Path(self.path) / 'config.json'}.",
                        hint="drop the override: a loaded model keeps the shapes of its weights",
                    )
            arch = {k: v for k, v in folder.items() if not k.startswith("_")}
            arch.update(self.overrides(RUNTIME_KEYS))
            return arch
        return self._preset_architecture()

    def plan_architecture(self) -> dict[str, Any]:
        """The architecture a plan builds on the meta device: :meth:`architecture`, except that a ``path``
        without its config.json yet (weights not downloaded) plans with the preset (2B/122 by default, the
        released model) and its overrides, so a plan never needs the files."""
        if self.path is not None and not (Path(self.path).expanduser() / "config.json").is_file():
            return self._preset_architecture()
        return self.architecture()

    def weight_sources(self) -> list[tuple[Path, str]]:
        """(folder, state-dict key prefix) of the weights ``path`` holds; empty for a preset (see
        :mod:`osctl.train.lean_load`)."""
        return [] if self.path is None else [(Path(self.path).expanduser(), "")]

    def missing_weights(self) -> list[MissingWeights]:
        """``path`` when it does not hold a config.json and weights (a preset builds fresh weights)."""
        if self.path is None:
            return []
        folder = Path(self.path).expanduser()
        if not folder.is_dir():
            detail = f"{self.path!r} does not exist" if not folder.exists() else f"{self.path!r} is not a folder"
        elif not (folder / "config.json").is_file():
            detail = f"{self.path!r} has no config.json"
        elif not _has_weights(self.path):
            detail = f"{self.path!r} has a config.json but no diffusion_pytorch_model weights"
        else:
            return []
        return [MissingWeights("model.path", detail, str(folder), FETCH_HINT)]

    def _preset_architecture(self) -> dict[str, Any]:
        arch = preset_config(self.preset)
        overrides = self.overrides()
        if "num_layers" in overrides and "sparse_blocks" not in overrides and arch.get("sparse_blocks"):
            # a preset's explicit layout follows a depth override: keep the blocks that still exist
            arch["sparse_blocks"] = [i for i in arch["sparse_blocks"] if i < overrides["num_layers"]]
        arch.update(overrides)
        arch["cross_attention_dim"] = arch["num_attention_heads"] * arch["attention_head_dim"]
        return arch

    def ignores_text_padding(self) -> bool:
        """True: the text reaches the model only through a per-token projection and cross-attention whose logits
        get ``(1 - mask) x -10000`` (the reference's bias), so a masked token's softmax weight underflows to
        exactly 0 and its states change nothing; ``osctl data cache`` stores text states trimmed to each prompt."""
        return True

    def model_geometry(self) -> ModelGeometry:
        """The model's half of the latent geometry: patch sizes and channels, from the preset (with overrides)
        or the folder's config.json (:meth:`plan_architecture`: the preset until the folder is downloaded).
        Read without importing torch; ``osctl.ConfigError`` for an unreadable or foreign folder."""
        arch = {**GEOMETRY_DEFAULTS, **{k: v for k, v in self.plan_architecture().items() if v is not None}}
        in_channels = int(arch["in_channels"])
        return ModelGeometry(patch_t=int(arch["patch_size_t"]), patch_hw=int(arch["patch_size"]),
                             in_channels=in_channels, out_channels=int(arch.get("out_channels") or in_channels))


def read_folder_config(path: str) -> dict[str, Any]:
    """The ``config.json`` of a diffusers folder holding an ``OpenSoraT2V_v1_3``; ``ConfigError`` otherwise."""
    folder = Path(path).expanduser()
    config_file = folder / "config.json"
    hint = f"point model.path at an {CLASS_NAME} diffusers folder (config.json + diffusion_pytorch_model.safetensors)"
    if not folder.is_dir():
        raise osctl.ConfigError(f"model.path {str(folder)!r} is not a folder.", hint=hint)
    if not config_file.is_file():
        nested = [sub for sub in ("model_ema", "model", "transformer") if (folder / sub / "config.json").is_file()]
        if nested:
            hint = f"did you mean {str(folder / nested[0])!r}? ({hint})"
        raise osctl.ConfigError(f"model.path has no config.json: {str(config_file)!r} does not exist.", hint=hint)
    try:
        data = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise osctl.ConfigError(f"cannot read {str(config_file)!r}: {exc}.", hint=hint) from None
    if not isinstance(data, dict):
        raise osctl.ConfigError(f"{str(config_file)!r} does not hold a JSON object.", hint=hint)
    class_name = data.get("_class_name")
    looks_right = class_name == CLASS_NAME or (
        class_name is None and {"num_attention_heads", "attention_head_dim", "caption_channels"} <= data.keys()
    )
    if not looks_right:
        raise osctl.ConfigError(
            f"{str(config_file)!r} describes a {class_name or 'different'} model, not an {CLASS_NAME}.", hint=hint
        )
    return data


def _has_weights(path: str) -> bool:
    return any((Path(path).expanduser() / name).is_file() for name in WEIGHT_FILES)


def build_model(config: OSPv13Config, *, device: Any = None, dtype: Any = None, meta: bool = False, empty: bool = False,
                **_: Any) -> Any:
    """Build the transformer: load ``config.path`` or make a fresh ``config.preset`` (meta: shapes only, from
    the folder's config.json or, before it is downloaded, the preset: see ``plan_architecture``; empty: the
    architecture that would be loaded or made, parameters on the meta device, buffers made, not placed)."""
    import torch

    from osctl.families.loading import cast_as_loaded, from_pretrained_safely, placed
    from osctl.train.lean_load import parameters_on_meta
    from osctl_builtin.models.osp_v13.transformer import OpenSoraT2V_v1_3

    # validates the folder (ConfigError) before torch work starts
    arch = config.plan_architecture() if meta else config.architecture()
    try:
        if config.path is not None and not meta and not _has_weights(config.path):
            raise osctl.ConfigError(
                f"model.path {config.path!r} has a config.json but no diffusion_pytorch_model weights.",
                hint="copy the weights next to config.json, or point model.path at the folder that has them",
            )
        if config.path is not None and not (meta or empty):
            model = from_pretrained_safely(OpenSoraT2V_v1_3, Path(config.path).expanduser(), dtype,
                                           **config.overrides(RUNTIME_KEYS))
        elif config.path is not None and empty:  # what from_pretrained builds before it loads the weights
            folder = str(Path(config.path).expanduser())
            with parameters_on_meta():
                model = OpenSoraT2V_v1_3.from_config(OpenSoraT2V_v1_3.load_config(folder),
                                                     **config.overrides(RUNTIME_KEYS))
            model = cast_as_loaded(model, dtype)
            model.register_to_config(_name_or_path=folder)
        else:
            with torch.device("meta") if meta else parameters_on_meta() if empty else nullcontext():
                model = OpenSoraT2V_v1_3.from_config(arch)
            if dtype is not None:  # nn.Module.to: diffusers' own .to() warns spuriously on every dtype cast
                model = torch.nn.Module.to(model, dtype=dtype)
    except ValueError as exc:
        raise osctl.ConfigError(f"model: {exc}") from None
    return placed(model, device=device, meta=meta, gradient_checkpointing=config.gradient_checkpointing, empty=empty)


@osctl.hookimpl
def register_models(register: Any) -> None:
    """Register the OSP v1.3 transformer."""
    register(osctl.ComponentSpec(
        name="opensora_v1_3",
        aliases=(CLASS_NAME,),
        summary="Open-Sora-Plan v1.3 T2V transformer (RoPE-3D, AdaLN-single, Skiparse); presets: "
        + ", ".join(preset_names()),
        factory=build_model,
        config=OSPv13Config,
        metadata={"presets": dict(PRESET_SUMMARIES),
                  # train.lora's default targets: self- and cross-attention projections and the feed-forward
                  "lora_target_modules": ["to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2"]},
    ))
