"""Registers ``wan_vae`` (alias ``AutoencoderKLWan``): Wan's causal 3D VAE from diffusers, with its latent normalisation.

Two released VAEs: Wan 2.1's (16 latent channels, 4x time with a causal first frame, 8x space), used by every
Wan 2.1 model and by Wan 2.2 A14B, and Wan 2.2's (48 channels, 4x time, 16x space: a 2x2 pixel patch before a
residual 8x encoder), used by Wan 2.2 TI2V-5B. ``path`` names a Wan pipeline folder or hub id (its ``vae/`` is
read) or a VAE folder; a preset builds random weights (tests) or, on the meta device, the released shapes.

Kept light: torch and diffusers are imported only when the factory runs; the config reports the VAE's half
of the latent geometry from its ``config.json`` or preset.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

import osctl
from osctl.families.configs import DiffusersAutoencoderConfig
from osctl.families.sources import Family
from osctl.geometry import AutoencoderGeometry

FAMILY = Family(name="Wan", pipeline_classes=("WanPipeline",), transformer_classes=("WanTransformer3DModel",),
                autoencoder_classes=("AutoencoderKLWan",), model_plugin="wan")
CLASS_NAME = "AutoencoderKLWan"
FETCH_HINT = ("download a Wan diffusers pipeline (e.g. `hf download Wan-AI/Wan2.1-T2V-1.3B-Diffusers`) and name it "
              "with pipeline_path or autoencoder.path, or use autoencoder.preset: tiny for a random test VAE")

#: AutoencoderKLWan constructor arguments of the presets (diffusers' defaults are Wan 2.1's VAE)
_WAN21: dict[str, Any] = {"base_dim": 96, "z_dim": 16, "dim_mult": [1, 2, 4, 4], "num_res_blocks": 2,
                          "attn_scales": [], "temperal_downsample": [False, True, True], "dropout": 0.0}
PRESETS: dict[str, dict[str, Any]] = {
    # Wan 2.1's VAE (about 127 M parameters); latents_mean/std are diffusers' defaults, which are Wan 2.1's
    "wan2.1": dict(_WAN21),
    # Wan 2.2's VAE (TI2V-5B). A loaded folder's config.json brings its real latents_mean/std; this preset's
    # neutral 0/1 values serve plans and random-weight builds only
    "wan2.2": {**_WAN21, "base_dim": 160, "decoder_base_dim": 256, "z_dim": 48, "is_residual": True,
               "in_channels": 12, "out_channels": 12, "patch_size": 2, "scale_factor_spatial": 16,
               "scale_factor_temporal": 4, "latents_mean": [0.0] * 48, "latents_std": [1.0] * 48},
    # narrow versions with the same strides and channels, for CPU tests
    "tiny": {**_WAN21, "base_dim": 4, "dim_mult": [1, 1, 2, 2], "num_res_blocks": 1},
    "tiny-wan2.2": {**_WAN21, "base_dim": 4, "decoder_base_dim": 8, "dim_mult": [1, 1, 2, 2], "num_res_blocks": 1,
                    "z_dim": 48, "is_residual": True, "in_channels": 12, "out_channels": 12, "patch_size": 2,
                    "scale_factor_spatial": 16, "scale_factor_temporal": 4,
                    "latents_mean": [0.01 * i for i in range(48)], "latents_std": [1.0 + 0.02 * i for i in range(48)]},
}


#: the released pipelines whose VAE is Wan 2.2's (the others carry Wan 2.1's): what a plan assumes before download
RELEASED_VAES: dict[str, str] = {"Wan-AI/Wan2.2-TI2V-5B-Diffusers": "wan2.2"}


class WanVAEConfig(DiffusersAutoencoderConfig):
    """Options of the ``wan_vae`` autoencoder (recipe section ``autoencoder``)."""

    FAMILY = FAMILY
    CLASS_NAME = CLASS_NAME
    PRESETS = PRESETS
    PLAN_PRESET = "wan2.1"
    RELEASED = RELEASED_VAES
    FETCH_HINT = FETCH_HINT

    path: str | None = Field(None, description="a Wan pipeline folder or hub id (its vae/ is read) or a VAE folder; "
                                               "pipeline_path fills it")
    preset: Literal["wan2.1", "wan2.2", "tiny", "tiny-wan2.2"] | None = Field(
        None, description="build random weights of this VAE instead of loading path (tests); with neither, plans use "
                          "wan2.1")

    def autoencoder_geometry(self) -> AutoencoderGeometry:
        """The VAE's half of the latent geometry: 4x time; 8x (Wan 2.1) or 16x (Wan 2.2) space; 16 or 48 channels."""
        cfg = self.vae_config()
        return AutoencoderGeometry(stride_t=int(cfg.get("scale_factor_temporal") or 4),
                                   stride_hw=int(cfg.get("scale_factor_spatial") or 8),
                                   latent_channels=int(cfg.get("z_dim") or 16))


def build(config: WanVAEConfig, *, device: Any = None, dtype: Any = None, meta: bool = False, **_: Any) -> Any:
    """The Wan VAE behind the osctl ``Autoencoder`` protocol: loaded, random from a preset, or on the meta device."""
    from osctl.families.autoencoders import build_autoencoder
    from osctl_builtin.autoencoders.wan_vae.wrapper import WanVAEAutoencoder

    return build_autoencoder(config, WanVAEAutoencoder, device=device, dtype=dtype, meta=meta)


@osctl.hookimpl
def register_autoencoders(register: Any) -> None:
    """Register the Wan VAE."""
    register(osctl.ComponentSpec(
        name="wan_vae",
        aliases=(CLASS_NAME,),
        summary="Wan VAE (diffusers AutoencoderKLWan): 2.1 = 16 channels, 4x time (causal) / 8x space; 2.2 = 48 "
                "channels, 4x / 16x",
        factory=build,
        config=WanVAEConfig,
        metadata={"class_names": (CLASS_NAME,), "family": "wan"},
    ))
