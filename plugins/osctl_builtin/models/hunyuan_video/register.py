"""Registers the HunyuanVideo text-to-video transformer (diffusers ``HunyuanVideoTransformer3DModel``) as
``hunyuan_video``.

Light on purpose: every osctl command imports this module, so torch and diffusers are imported only inside the
factory. The config resolves a preset, or the released files ``path`` names (a HunyuanVideo diffusers pipeline
folder or hub id, its ``transformer/`` folder, or an osctl checkpoint's ``model/``), and reports the model's half
of the latent geometry (patch 1x2x2, 16 channels) without loading the model code.

HunyuanVideo trains with flow matching on the velocity (shift 7.0 as released; musubi-tuner and finetrainers
train with the embedded guidance at 1.0) and samples as ``HunyuanVideoPipeline`` does: ``FlowMatchEulerDiscrete``
with shift 7.0 over sigmas ``linspace(1, 0, N + 1)[:-1]``, embedded guidance 6.0 and no classifier-free pass
(``sample.guidance_scale: 1.0``). Its text encoder is ``hunyuan_text`` (LLaVA-Llama-3 + CLIP-L).
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

import osctl
from osctl.families.configs import DiffusersModelConfig
from osctl.families.sources import Family
from osctl_builtin.models.hunyuan_video.presets import GUIDANCE, PRESETS, check_architecture

FAMILY = Family(name="HunyuanVideo", pipeline_classes=("HunyuanVideoPipeline",),
                transformer_classes=("HunyuanVideoTransformer3DModel",),
                autoencoder_classes=("AutoencoderKLHunyuanVideo",), model_plugin="hunyuan_video")
SHAPE_KEYS = ("num_layers", "num_single_layers", "num_refiner_layers", "num_attention_heads", "attention_head_dim",
              "in_channels", "out_channels", "text_embed_dim", "pooled_projection_dim", "patch_size", "patch_size_t")
FETCH_HINT = ("download a HunyuanVideo diffusers pipeline (e.g. `hf download hunyuanvideo-community/HunyuanVideo`) "
              "and name it with pipeline_path or model.path, or drop model.path to start from the preset")


class HunyuanVideoConfig(DiffusersModelConfig):
    """Recipe section ``model`` for ``hunyuan_video``: released files (``path``) or a ``preset``."""

    FAMILY = FAMILY
    PRESETS = PRESETS
    SHAPE_KEYS = SHAPE_KEYS
    FETCH_HINT = FETCH_HINT
    #: the token refiner and the joint attention mask the padding with boolean masks (softmax weight 0), the
    #: refiner's pooled text is a masked mean, and the trailing padding is dropped before the call
    TEXT_PADDING_IGNORED = True

    path: str | None = Field(
        None, description="a HunyuanVideo diffusers pipeline folder or hub id (its transformer/ is read), one "
                          "transformer folder, or an osctl checkpoint's model/ folder; pipeline_path fills it")
    preset: str = Field("hunyuan-video", description="architecture when no path is given: " + ", ".join(PRESETS))
    num_layers: int | None = Field(None, ge=1, description="dual-stream blocks")
    num_single_layers: int | None = Field(None, ge=0, description="single-stream blocks")
    num_refiner_layers: int | None = Field(None, ge=1)
    num_attention_heads: int | None = Field(None, ge=1)
    attention_head_dim: int | None = Field(None, ge=1)
    in_channels: int | None = Field(None, ge=1)
    out_channels: int | None = Field(None, ge=1)
    text_embed_dim: int | None = Field(None, ge=1, description="LLaVA-Llama width (4096)")
    pooled_projection_dim: int | None = Field(None, ge=1, description="CLIP's pooled width (768)")
    patch_size: int | None = Field(None, ge=1)
    patch_size_t: int | None = Field(None, ge=1)
    guidance: float = Field(GUIDANCE, ge=0, description="embedded guidance scale when sampling (HunyuanVideoPipeline's "
                                                        "guidance_scale: 6.0)")
    training_guidance: float = Field(1.0, ge=0, description="embedded guidance scale the training steps use")

    @classmethod
    def check_architecture(cls, arch: dict[str, Any]) -> None:
        check_architecture(arch)


def build_model(config: HunyuanVideoConfig, *, device: Any = None, dtype: Any = None, meta: bool = False,
                empty: bool = False, **_: Any) -> Any:
    """The HunyuanVideo transformer as an osctl model: loaded from ``path`` or fresh from the preset (``meta``:
    shapes only)."""
    from diffusers import HunyuanVideoTransformer3DModel

    from osctl.families.loading import build_transformers, placed
    from osctl_builtin.models.hunyuan_video.model import HunyuanVideoTransformers

    model = HunyuanVideoTransformers(build_transformers(config, HunyuanVideoTransformer3DModel, dtype=dtype, meta=meta,
                                                        empty=empty),
                                     guidance=config.guidance, training_guidance=config.training_guidance)
    return placed(model, device=device, meta=meta, gradient_checkpointing=config.gradient_checkpointing,
                  empty=empty)


@osctl.hookimpl
def register_models(register: Any) -> None:
    """Register the HunyuanVideo transformer."""
    register(osctl.ComponentSpec(
        name="hunyuan_video",
        aliases=("HunyuanVideoTransformer3DModel",),
        summary="HunyuanVideo text-to-video transformer (diffusers HunyuanVideoTransformer3DModel; flow matching, "
                "embedded guidance, Ulysses sequence parallelism); presets: " + ", ".join(PRESETS),
        factory=build_model,
        config=HunyuanVideoConfig,
        metadata=FAMILY.model_metadata(PRESETS),
    ))
