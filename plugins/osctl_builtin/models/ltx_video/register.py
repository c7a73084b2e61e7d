"""Registers the LTX-Video 0.9.x text-to-video transformer (diffusers ``LTXVideoTransformer3DModel``) as ``ltx_video``.

Light on purpose: every osctl command imports this module, so torch and diffusers are imported only inside the
factory. The config resolves a preset, or the released files ``path`` names (an LTX-Video diffusers pipeline
folder or hub id, its ``transformer/`` folder, or an osctl checkpoint's ``model/``), and reports the model's half
of the latent geometry (patch 1x1x1, 128 channels): with the ``ltx_vae`` autoencoder (32x space, 8x time)
clips are 8k+1 frames and sizes multiples of 32.

LTX-Video trains as its trainer does: flow matching, timesteps drawn logit-normal with a mean that grows with
the clip's token count (``diffusion.token_shift: [1024, 4096, 0.95, 2.05]``, see ``recipes/base/ltx-video.yaml``),
and samples as ``LTXPipeline`` does (``FlowMatchEulerDiscrete`` with dynamic shifting).
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

import osctl
from osctl.families.configs import DiffusersModelConfig
from osctl.families.sources import Family
from osctl_builtin.models.ltx_video.presets import FRAME_RATE, PRESETS, check_architecture

FAMILY = Family(name="LTX-Video", pipeline_classes=("LTXPipeline",), transformer_classes=("LTXVideoTransformer3DModel",),
                autoencoder_classes=("AutoencoderKLLTXVideo",), model_plugin="ltx_video")
SHAPE_KEYS = ("num_layers", "num_attention_heads", "attention_head_dim", "in_channels", "out_channels",
              "cross_attention_dim", "caption_channels", "patch_size", "patch_size_t")
FETCH_HINT = ("download an LTX-Video diffusers pipeline (e.g. `hf download Lightricks/LTX-Video`) and name it with "
              "pipeline_path or model.path, or drop model.path to start from the preset")


class LTXVideoConfig(DiffusersModelConfig):
    """Recipe section ``model`` for ``ltx_video``: released files (``path``) or a ``preset`` with fresh weights."""

    FAMILY = FAMILY
    PRESETS = PRESETS
    SHAPE_KEYS = SHAPE_KEYS
    FETCH_HINT = FETCH_HINT
    #: the transformer adds ``(1 - mask) x -10000`` to the cross-attention logits: a masked text token's softmax
    #: weight underflows to exactly 0 (the encoder attended to the padding, ``attend_padding``, but the valid
    #: tokens' states carry that; the padding tokens' own states reach nothing)
    TEXT_PADDING_IGNORED = True

    path: str | None = Field(
        None, description="an LTX-Video diffusers pipeline folder or hub id (its transformer/ is read), one "
                          "transformer folder, or an osctl checkpoint's model/ folder; pipeline_path fills it")
    preset: str = Field("ltx-video-2b", description="architecture when no path is given: " + ", ".join(PRESETS))
    num_layers: int | None = Field(None, ge=1)
    num_attention_heads: int | None = Field(None, ge=1)
    attention_head_dim: int | None = Field(None, ge=1)
    in_channels: int | None = Field(None, ge=1)
    out_channels: int | None = Field(None, ge=1)
    cross_attention_dim: int | None = Field(None, ge=1)
    caption_channels: int | None = Field(None, ge=1, description="text-encoder width (4096 for T5-XXL)")
    patch_size: int | None = Field(None, ge=1)
    patch_size_t: int | None = Field(None, ge=1)
    frame_rate: float = Field(FRAME_RATE, gt=0, description="frames per second of the clips (training) and videos "
                                                            "(sampling): LTX's rotary positions count time in seconds "
                                                            "(LTXPipeline's frame_rate, 25 by default)")

    @classmethod
    def check_architecture(cls, arch: dict[str, Any]) -> None:
        check_architecture(arch)


def build_model(config: LTXVideoConfig, *, device: Any = None, dtype: Any = None, meta: bool = False,
                empty: bool = False, **_: Any) -> Any:
    """The LTX-Video transformer as an osctl model: loaded from ``path`` or fresh from the preset (``meta``: shapes
    only)."""
    from diffusers import LTXVideoTransformer3DModel

    from osctl.families.loading import build_transformers, placed
    from osctl_builtin.models.ltx_video.model import LTXVideoTransformers

    model = LTXVideoTransformers(build_transformers(config, LTXVideoTransformer3DModel, dtype=dtype, meta=meta,
                                                    empty=empty),
                                 frame_rate=config.frame_rate)
    return placed(model, device=device, meta=meta, gradient_checkpointing=config.gradient_checkpointing,
                  empty=empty)


@osctl.hookimpl
def register_models(register: Any) -> None:
    """Register the LTX-Video transformer."""
    register(osctl.ComponentSpec(
        name="ltx_video",
        aliases=("LTXVideoTransformer3DModel",),
        summary="LTX-Video 0.9.x text-to-video transformer (diffusers LTXVideoTransformer3DModel; flow matching, "
                "token-dependent shift); presets: " + ", ".join(PRESETS),
        factory=build_model,
        config=LTXVideoConfig,
        metadata=FAMILY.model_metadata(PRESETS),
    ))
