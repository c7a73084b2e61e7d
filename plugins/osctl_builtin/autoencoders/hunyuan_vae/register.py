"""Registers ``hunyuan_vae`` (alias ``AutoencoderKLHunyuanVideo``): HunyuanVideo's causal 3D VAE from diffusers.

4x time with a causal first frame (frames 4k+1), 8x space, 16 latent channels, latents scaled by
``scaling_factor`` 0.476986 (:class:`osctl.families.autoencoders.ScaledAutoencoder`, as ``HunyuanVideoPipeline``
decodes). ``path`` names a HunyuanVideo pipeline folder or hub id (its ``vae/`` is read) or a VAE folder; a preset
builds random weights (tests) or, on the meta device, the released shapes.

Kept light: torch and diffusers are imported only when the factory runs.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

import osctl
from osctl.families.configs import DiffusersAutoencoderConfig
from osctl.geometry import AutoencoderGeometry
from osctl_builtin.models.hunyuan_video.register import FAMILY

CLASS_NAME = "AutoencoderKLHunyuanVideo"
FETCH_HINT = ("download a HunyuanVideo diffusers pipeline (e.g. `hf download hunyuanvideo-community/HunyuanVideo`) "
              "and name it with pipeline_path or autoencoder.path, or use autoencoder.preset: tiny for a random test VAE")

#: AutoencoderKLHunyuanVideo constructor arguments of the presets (the released vae/config.json values)
_RELEASED: dict[str, Any] = {
    "in_channels": 3, "out_channels": 3, "latent_channels": 16, "down_block_types": ["HunyuanVideoDownBlock3D"] * 4,
    "up_block_types": ["HunyuanVideoUpBlock3D"] * 4, "block_out_channels": [128, 256, 512, 512],
    "layers_per_block": 2, "act_fn": "silu", "norm_num_groups": 32, "scaling_factor": 0.476986,
    "spatial_compression_ratio": 8, "temporal_compression_ratio": 4, "mid_block_add_attention": True,
}
PRESETS: dict[str, dict[str, Any]] = {
    "hunyuan-video": dict(_RELEASED),
    # a narrow version with the same strides and channels, for CPU tests
    "tiny": {**_RELEASED, "block_out_channels": [8, 8, 16, 16], "layers_per_block": 1, "norm_num_groups": 4},
}


class HunyuanVAEConfig(DiffusersAutoencoderConfig):
    """Options of the ``hunyuan_vae`` autoencoder (recipe section ``autoencoder``)."""

    FAMILY = FAMILY
    CLASS_NAME = CLASS_NAME
    PRESETS = PRESETS
    PLAN_PRESET = "hunyuan-video"
    FETCH_HINT = FETCH_HINT

    path: str | None = Field(None, description="a HunyuanVideo pipeline folder or hub id (its vae/ is read) or a VAE "
                                               "folder; pipeline_path fills it")
    preset: Literal["hunyuan-video", "tiny"] | None = Field(
        None, description="build random weights of this VAE instead of loading path (tests); with neither, plans use "
                          "hunyuan-video")

    def autoencoder_geometry(self) -> AutoencoderGeometry:
        """The VAE's half of the latent geometry: 4x time (causal first frame), 8x space, 16 channels."""
        cfg = self.vae_config()
        return AutoencoderGeometry(stride_t=int(cfg.get("temporal_compression_ratio") or 4),
                                   stride_hw=int(cfg.get("spatial_compression_ratio") or 8),
                                   latent_channels=int(cfg.get("latent_channels") or 16))


def build(config: HunyuanVAEConfig, *, device: Any = None, dtype: Any = None, meta: bool = False, **_: Any) -> Any:
    """The HunyuanVideo VAE behind the osctl ``Autoencoder`` protocol: loaded, random from a preset, or on meta."""
    from osctl.families.autoencoders import build_autoencoder
    from osctl_builtin.autoencoders.hunyuan_vae.wrapper import HunyuanVAEAutoencoder

    return build_autoencoder(config, HunyuanVAEAutoencoder, device=device, dtype=dtype, meta=meta)


@osctl.hookimpl
def register_autoencoders(register: Any) -> None:
    """Register the HunyuanVideo VAE."""
    register(osctl.ComponentSpec(
        name="hunyuan_vae",
        aliases=(CLASS_NAME,),
        summary="HunyuanVideo VAE (diffusers AutoencoderKLHunyuanVideo): 16 channels, 4x time (causal) / 8x space",
        factory=build,
        config=HunyuanVAEConfig,
        metadata={"class_names": (CLASS_NAME,), "family": "hunyuan_video"},
    ))
