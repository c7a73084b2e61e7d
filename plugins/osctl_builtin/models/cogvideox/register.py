"""Registers the CogVideoX text-to-video transformers (diffusers ``CogVideoXTransformer3DModel``) as model ``cogvideox``.

Light on purpose: every osctl command imports this module, so torch and diffusers are imported only inside the
factory. The config resolves a preset (2B, 5B, 1.5-5B, tiny test models), or the released files ``path`` names
(a CogVideoX diffusers pipeline folder or hub id, its ``transformer/`` folder, or an osctl checkpoint's
``model/``), and reports the model's half of the latent geometry (patch 1x2x2, or 2x2x2 for 1.5), the weights
it misses and the pipeline it exports, without loading the model code.

CogVideoX trains as its authors do: DDPM v-prediction on a zero-terminal-SNR table whose SNR is shifted
(``diffusion: {prediction_type: v_prediction, rescale_betas_zero_snr: true, snr_shift_scale: 3.0}``, see
``recipes/base/cogvideox.yaml``) and samples with ``CogVideoXDDIMScheduler`` (2B) or ``CogVideoXDPMScheduler``
(5B, 1.5: sampler ``CogVideoXDPM``).
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

import osctl
from osctl.families.configs import DiffusersModelConfig
from osctl.families.sources import Family
from osctl_builtin.models.cogvideox.presets import PRESETS, check_architecture

FAMILY = Family(name="CogVideoX", pipeline_classes=("CogVideoXPipeline",),
                transformer_classes=("CogVideoXTransformer3DModel",), autoencoder_classes=("AutoencoderKLCogVideoX",),
                model_plugin="cogvideox")
SHAPE_KEYS = ("num_layers", "num_attention_heads", "attention_head_dim", "in_channels", "out_channels",
              "text_embed_dim", "time_embed_dim", "patch_size", "patch_size_t", "use_rotary_positional_embeddings")
FETCH_HINT = ("download a CogVideoX diffusers pipeline (e.g. `hf download THUDM/CogVideoX-5b`) and name it with "
              "pipeline_path or model.path, or drop model.path to start from the preset")


class CogVideoXConfig(DiffusersModelConfig):
    """Recipe section ``model`` for ``cogvideox``: released files (``path``) or a ``preset`` with fresh weights."""

    FAMILY = FAMILY
    PRESETS = PRESETS
    SHAPE_KEYS = SHAPE_KEYS
    FETCH_HINT = FETCH_HINT
    #: CogVideoX takes no text mask: the padding tokens' states are attended to, part of the condition
    TEXT_PADDING_IGNORED = False

    path: str | None = Field(
        None, description="a CogVideoX diffusers pipeline folder or hub id (its transformer/ is read), one transformer "
                          "folder, or an osctl checkpoint's model/ folder; pipeline_path fills it")
    preset: str = Field("cogvideox-5b", description="architecture when no path is given: " + ", ".join(PRESETS))
    num_layers: int | None = Field(None, ge=1)
    num_attention_heads: int | None = Field(None, ge=1)
    attention_head_dim: int | None = Field(None, ge=1)
    in_channels: int | None = Field(None, ge=1)
    out_channels: int | None = Field(None, ge=1)
    text_embed_dim: int | None = Field(None, ge=1, description="text-encoder width (4096 for T5-XXL)")
    time_embed_dim: int | None = Field(None, ge=1)
    patch_size: int | None = Field(None, ge=1)
    patch_size_t: int | None = Field(None, ge=1, description="temporal patch (CogVideoX 1.5: 2; 1.0: none)")
    use_rotary_positional_embeddings: bool | None = None

    @classmethod
    def check_architecture(cls, arch: dict[str, Any]) -> None:
        check_architecture(arch)


def build_model(config: CogVideoXConfig, *, device: Any = None, dtype: Any = None, meta: bool = False,
                empty: bool = False, **_: Any) -> Any:
    """The CogVideoX transformer as an osctl model: loaded from ``path`` or fresh from the preset (``meta``: shapes
    only)."""
    from diffusers import CogVideoXTransformer3DModel

    from osctl.families.loading import build_transformers, placed
    from osctl_builtin.models.cogvideox.model import CogVideoXTransformers

    model = CogVideoXTransformers(build_transformers(config, CogVideoXTransformer3DModel, dtype=dtype, meta=meta,
                                                     empty=empty))
    return placed(model, device=device, meta=meta, gradient_checkpointing=config.gradient_checkpointing,
                  empty=empty)


@osctl.hookimpl
def register_models(register: Any) -> None:
    """Register the CogVideoX transformer."""
    register(osctl.ComponentSpec(
        name="cogvideox",
        aliases=("CogVideoXTransformer3DModel",),
        summary="CogVideoX 2B / 5B / 1.5-5B text-to-video transformer (diffusers CogVideoXTransformer3DModel; DDPM "
                "v-prediction, zero-SNR); presets: " + ", ".join(PRESETS),
        factory=build_model,
        config=CogVideoXConfig,
        metadata=FAMILY.model_metadata(PRESETS),
    ))
