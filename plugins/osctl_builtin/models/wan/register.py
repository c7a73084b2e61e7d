"""Registers the Wan 2.1 / 2.2 text-to-video transformers (diffusers ``WanTransformer3DModel``) as model ``wan``.

Light on purpose: every osctl command imports this module, so torch and diffusers are imported only inside
the factory. The config resolves a preset, or the released files ``path`` names (a diffusers pipeline
folder or hub id, one ``transformer/`` folder, or an osctl checkpoint's ``model/``), and reports the
model's half of the latent geometry, the weights it misses and the pipeline it exports, without loading
the model code.

Wan 2.2 A14B has two experts: ``transformer`` (high noise, timesteps ``>= boundary_ratio x 1000``) and
``transformer_2`` (low noise). ``experts`` names the ones to train (``high_noise``, ``low_noise``); the
others are frozen and training draws timesteps in the trained expert's range only.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

import osctl
from osctl.families.configs import DiffusersModelConfig
from osctl.families.sources import Family
from osctl_builtin.models.wan.presets import (
    NUM_TRAIN_TIMESTEPS,
    PRESETS,
    TEXT_LENGTH,
    check_architecture,
    preset,
    preset_names,
)

FAMILY = Family(name="Wan", pipeline_classes=("WanPipeline",), transformer_classes=("WanTransformer3DModel",),
                autoencoder_classes=("AutoencoderKLWan",), model_plugin="wan")
#: recipe names of the experts -> the pipeline's component names
EXPERTS: dict[str, str] = {"high_noise": "transformer", "low_noise": "transformer_2"}
#: keys that change parameter shapes: with ``path`` set they must agree with the folder's config.json
SHAPE_KEYS = ("num_layers", "num_attention_heads", "attention_head_dim", "ffn_dim", "text_dim", "in_channels",
              "out_channels", "freq_dim", "patch_size")
FETCH_HINT = ("download a Wan diffusers pipeline (e.g. `hf download Wan-AI/Wan2.1-T2V-1.3B-Diffusers`) and name it "
              "with pipeline_path or model.path, or drop model.path to start from the preset")


class WanConfig(DiffusersModelConfig):
    """Recipe section ``model`` for ``wan``: released files (``path``) or a ``preset`` with fresh weights."""

    FAMILY = FAMILY
    PRESETS = PRESETS
    SHAPE_KEYS = SHAPE_KEYS
    FETCH_HINT = FETCH_HINT
    TRANSFORMER_NAMES = ("transformer", "transformer_2")
    #: ``WanTransformers.prepare_text`` multiplies the states by the mask: masked positions are zeros whatever
    #: the encoder gave there (``WanPipeline`` zeroes them too)
    TEXT_PADDING_IGNORED = True

    path: str | None = Field(
        None, description="a Wan diffusers pipeline folder or hub id (transformer/ and transformer_2/ are read), one "
                          "transformer folder, or an osctl checkpoint's model/ folder; pipeline_path fills it")
    preset: str = Field("wan2.1-t2v-1.3b", description="architecture when no path is given: " + ", ".join(PRESETS))
    num_layers: int | None = Field(None, ge=1)
    num_attention_heads: int | None = Field(None, ge=1)
    attention_head_dim: int | None = Field(None, ge=6)
    ffn_dim: int | None = Field(None, ge=1)
    text_dim: int | None = Field(None, ge=1, description="text-encoder width (4096 for UMT5-XXL)")
    in_channels: int | None = Field(None, ge=1)
    out_channels: int | None = Field(None, ge=1)
    freq_dim: int | None = Field(None, ge=1)
    patch_size: list[int] | None = Field(None, min_length=3, max_length=3)
    boundary_ratio: float | None = Field(
        None, gt=0, lt=1, description="two experts: timesteps >= boundary_ratio x 1000 go to the high-noise expert "
                                      "(default: the preset's or the pipeline's model_index.json, 0.875 for Wan 2.2)")
    experts: list[Literal["high_noise", "low_noise"]] | None = Field(
        None, description="two experts: which to train (default both); the others are frozen and timesteps are "
                          "drawn in the trained expert's range")
    text_length: int = Field(TEXT_LENGTH, ge=1, description="text tokens the transformer sees: the prompt's states, "
                                                           "zeros past the prompt (WanPipeline: 512)")

    @field_validator("experts")
    @classmethod
    def _distinct(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and (not value or len(set(value)) != len(value)):
            raise PydanticCustomError("wan_experts", "list each expert once, e.g. [high_noise] or "
                                                     "[high_noise, low_noise]")
        return value

    @model_validator(mode="after")
    def _experts_need_two(self) -> WanConfig:
        try:
            if self.experts is not None and self.transformer_count() == 1:
                raise ValueError(f"experts {self.experts} is set but this model has a single transformer; "
                                 "drop model.experts (it is for Wan 2.2 A14B's two experts)")
        except (ValueError, osctl.OsctlError) as exc:
            message = exc.message if isinstance(exc, osctl.OsctlError) else str(exc)
            raise PydanticCustomError("wan_architecture", "{message}", {"message": message.rstrip(".")}) from None
        return self

    @classmethod
    def check_architecture(cls, arch: dict[str, Any]) -> None:
        check_architecture(arch)

    @classmethod
    def patch_sizes(cls, arch: dict[str, Any]) -> tuple[int, int]:
        """Wan's ``patch_size`` [t, h, w] (released: [1, 2, 2])."""
        patch_t, patch_h, _ = arch["patch_size"]
        return int(patch_t), int(patch_h)

    def boundary(self) -> float | None:
        """The boundary ratio of a two-expert model (explicit, else the pipeline's, else the preset's); None for one."""
        if self.transformer_count() == 1:
            return None
        if self.boundary_ratio is not None:
            return self.boundary_ratio
        found = self.located() if self.path is not None else None
        if found is not None and found.index is not None and found.index.get("boundary_ratio") is not None:
            return float(found.index["boundary_ratio"])
        return preset(self.preset)["boundary_ratio"] or 0.875

    def trained_transformers(self) -> tuple[str, ...]:
        """The pipeline names of the experts training updates."""
        names = self.transformer_names()
        if self.experts is None:
            return names
        return tuple(EXPERTS[e] for e in self.experts)

    def diffusers_pipeline(self) -> dict[str, Any]:
        """What ``model_index.json`` says besides the components: the pipeline class and its settings."""
        found = self.located() if self.path is not None else None
        expand = bool(found.index.get("expand_timesteps")) if found is not None and found.index is not None else \
            bool(preset(self.preset)["expand_timesteps"])
        return {"_class_name": "WanPipeline", "boundary_ratio": self.boundary(), "expand_timesteps": expand}


def build_model(config: WanConfig, *, device: Any = None, dtype: Any = None, meta: bool = False,
                empty: bool = False, **_: Any) -> Any:
    """The Wan transformer(s) as one osctl model: loaded from ``path`` or fresh from the preset (``meta``: shapes
    only, from the folder's config.json or, before it is downloaded, the preset)."""
    from diffusers import WanTransformer3DModel

    from osctl.families.loading import build_transformers, placed
    from osctl_builtin.models.wan.model import WanTransformers

    transformers = build_transformers(config, WanTransformer3DModel, dtype=dtype, meta=meta, empty=empty)
    boundary = config.boundary()
    model = WanTransformers(transformers, boundary_timestep=None if boundary is None else boundary * NUM_TRAIN_TIMESTEPS,
                            trained=config.trained_transformers(), text_length=config.text_length)
    return placed(model, device=device, meta=meta, gradient_checkpointing=config.gradient_checkpointing,
                  empty=empty)


@osctl.hookimpl
def register_models(register: Any) -> None:
    """Register the Wan transformer."""
    register(osctl.ComponentSpec(
        name="wan",
        aliases=("WanTransformer3DModel",),
        summary="Wan 2.1 / 2.2 text-to-video transformer (diffusers WanTransformer3DModel; Wan 2.2 A14B: two "
                "experts); presets: " + ", ".join(preset_names()),
        factory=build_model,
        config=WanConfig,
        metadata=FAMILY.model_metadata(PRESETS),
    ))
