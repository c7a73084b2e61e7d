"""Registers ``ltx_vae`` (alias ``AutoencoderKLLTXVideo``): LTX-Video's causal 3D VAE from diffusers.

32x space, 8x time with a causal first frame (frames 8k+1, sizes multiples of 32), 128 latent channels,
normalised per channel with the VAE's ``latents_mean`` / ``latents_std``. ``path`` names an LTX-Video pipeline
folder or hub id (its ``vae/`` is read) or a VAE folder; a preset builds random weights (tests) or, on the meta
device, the released shapes (0.9.0, 0.9.1, 0.9.5).

Kept light: torch and diffusers are imported only when the factory runs.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

import osctl
from osctl.families.configs import DiffusersAutoencoderConfig
from osctl.geometry import AutoencoderGeometry
from osctl_builtin.models.ltx_video.register import FAMILY

CLASS_NAME = "AutoencoderKLLTXVideo"
FETCH_HINT = ("download an LTX-Video diffusers pipeline (e.g. `hf download Lightricks/LTX-Video`) and name it with "
              "pipeline_path or autoencoder.path, or use autoencoder.preset: tiny for a random test VAE")

_DOWN = ["LTXVideoDownBlock3D"] * 4
#: AutoencoderKLLTXVideo constructor arguments of the presets (diffusers' conversion of each release)
_090: dict[str, Any] = {
    "in_channels": 3, "out_channels": 3, "latent_channels": 128, "block_out_channels": [128, 256, 512, 512],
    "down_block_types": _DOWN, "decoder_block_out_channels": [128, 256, 512, 512],
    "layers_per_block": [4, 3, 3, 3, 4], "decoder_layers_per_block": [4, 3, 3, 3, 4],
    "spatio_temporal_scaling": [True, True, True, False], "decoder_spatio_temporal_scaling": [True, True, True, False],
    "decoder_inject_noise": [False] * 5, "downsample_type": ["conv"] * 4, "upsample_residual": [False] * 4,
    "upsample_factor": [1] * 4, "timestep_conditioning": False, "patch_size": 4, "patch_size_t": 1,
    "resnet_norm_eps": 1e-6, "scaling_factor": 1.0, "encoder_causal": True, "decoder_causal": False,
}
_091 = {**_090, "decoder_block_out_channels": [256, 512, 1024], "decoder_layers_per_block": [5, 6, 7, 8],
        "decoder_spatio_temporal_scaling": [True, True, True], "decoder_inject_noise": [True, True, True, False],
        "upsample_residual": [True, True, True], "upsample_factor": [2, 2, 2], "timestep_conditioning": True}
_095 = {**_091, "block_out_channels": [128, 256, 512, 1024, 2048], "down_block_types": ["LTXVideo095DownBlock3D"] * 4,
        "layers_per_block": [4, 6, 6, 2, 2], "decoder_layers_per_block": [5, 5, 5, 5],
        "spatio_temporal_scaling": [True, True, True, True], "decoder_inject_noise": [False] * 4,
        "downsample_type": ["spatial", "temporal", "spatiotemporal", "spatiotemporal"],
        "spatial_compression_ratio": 32, "temporal_compression_ratio": 8}
PRESETS: dict[str, dict[str, Any]] = {
    "ltx-video-0.9.0": _090,
    "ltx-video-0.9.1": _091,
    "ltx-video-0.9.5": _095,
    # a narrow 0.9.1 (timestep-conditioned decoder) with the same strides and channels, for CPU tests
    "tiny": {**_091, "block_out_channels": [8, 8, 16, 16], "decoder_block_out_channels": [8, 16, 32],
             "layers_per_block": [1, 1, 1, 1, 1], "decoder_layers_per_block": [1, 1, 1, 1]},
}
#: the released pipelines' VAEs: what a plan assumes before download
RELEASED_VAES: dict[str, str] = {"Lightricks/LTX-Video-0.9.5": "ltx-video-0.9.5"}


class LTXVAEConfig(DiffusersAutoencoderConfig):
    """Options of the ``ltx_vae`` autoencoder (recipe section ``autoencoder``)."""

    FAMILY = FAMILY
    CLASS_NAME = CLASS_NAME
    PRESETS = PRESETS
    PLAN_PRESET = "ltx-video-0.9.1"
    RELEASED = RELEASED_VAES
    FETCH_HINT = FETCH_HINT

    path: str | None = Field(None, description="an LTX-Video pipeline folder or hub id (its vae/ is read) or a VAE "
                                               "folder; pipeline_path fills it")
    preset: Literal["ltx-video-0.9.0", "ltx-video-0.9.1", "ltx-video-0.9.5", "tiny"] | None = Field(
        None, description="build random weights of this VAE instead of loading path (tests); with neither, plans use "
                          "ltx-video-0.9.1")
    decode_timestep: float = Field(0.0, ge=0, le=1, description="timestep-conditioned VAEs (0.9.1 on): the timestep "
                                                                "the decoder sees (LTXPipeline's decode_timestep)")
    decode_noise_scale: float | None = Field(None, ge=0, le=1, description="share of noise mixed into the latents "
                                                                           "before decoding (default decode_timestep)")

    def autoencoder_geometry(self) -> AutoencoderGeometry:
        """The VAE's half of the latent geometry: 8x time (causal first frame), 32x space, 128 channels."""
        cfg = self.vae_config()
        scaled = sum(bool(s) for s in cfg.get("spatio_temporal_scaling") or [True, True, True, False])
        stride_t = cfg.get("temporal_compression_ratio") or int(cfg.get("patch_size_t") or 1) * 2 ** scaled
        stride_hw = cfg.get("spatial_compression_ratio") or int(cfg.get("patch_size") or 4) * 2 ** scaled
        return AutoencoderGeometry(stride_t=int(stride_t), stride_hw=int(stride_hw),
                                   latent_channels=int(cfg.get("latent_channels") or 128))


def build(config: LTXVAEConfig, *, device: Any = None, dtype: Any = None, meta: bool = False, **_: Any) -> Any:
    """The LTX-Video VAE behind the osctl ``Autoencoder`` protocol: loaded, random from a preset, or on meta."""
    from osctl.families.autoencoders import build_autoencoder
    from osctl_builtin.autoencoders.ltx_vae.wrapper import LTXVAEAutoencoder

    ae = build_autoencoder(config, LTXVAEAutoencoder, device=device, dtype=dtype, meta=meta)
    ae.decode_timestep, ae.decode_noise_scale, ae.decode_seed = (config.decode_timestep, config.decode_noise_scale,
                                                                  config.seed)
    return ae


@osctl.hookimpl
def register_autoencoders(register: Any) -> None:
    """Register the LTX-Video VAE."""
    register(osctl.ComponentSpec(
        name="ltx_vae",
        aliases=(CLASS_NAME,),
        summary="LTX-Video VAE (diffusers AutoencoderKLLTXVideo): 128 channels, 8x time (causal) / 32x space",
        factory=build,
        config=LTXVAEConfig,
        metadata={"class_names": (CLASS_NAME,), "family": "ltx_video"},
    ))
