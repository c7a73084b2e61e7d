"""Registers ``cogvideox_vae`` (alias ``AutoencoderKLCogVideoX``): CogVideoX's causal 3D VAE from diffusers.

4x time with a causal first frame (frames 4k+1), 8x space, 16 latent channels; latents scaled by
``scaling_factor`` (1.15258426 for CogVideoX 2B/5B, 0.7 for 1.5). ``path`` names a CogVideoX pipeline folder or
hub id (its ``vae/`` is read) or a VAE folder; a preset builds random weights (tests) or, on the meta device,
the released shapes.

Kept light: torch and diffusers are imported only when the factory runs.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

import osctl
from osctl.families.configs import DiffusersAutoencoderConfig
from osctl.geometry import AutoencoderGeometry
from osctl_builtin.models.cogvideox.register import FAMILY

CLASS_NAME = "AutoencoderKLCogVideoX"
FETCH_HINT = ("download a CogVideoX diffusers pipeline (e.g. `hf download THUDM/CogVideoX-5b`) and name it with "
              "pipeline_path or autoencoder.path, or use autoencoder.preset: tiny for a random test VAE")

_BLOCKS = ["CogVideoXDownBlock3D"] * 4
_UP = ["CogVideoXUpBlock3D"] * 4
#: AutoencoderKLCogVideoX constructor arguments of the presets (the released vae/config.json values)
_RELEASED: dict[str, Any] = {
    "in_channels": 3, "out_channels": 3, "down_block_types": _BLOCKS, "up_block_types": _UP,
    "block_out_channels": [128, 256, 256, 512], "latent_channels": 16, "layers_per_block": 3, "act_fn": "silu",
    "norm_eps": 1e-6, "norm_num_groups": 32, "temporal_compression_ratio": 4, "sample_height": 480,
    "sample_width": 720, "scaling_factor": 1.15258426, "force_upcast": True, "use_quant_conv": False,
    "use_post_quant_conv": False,
}
PRESETS: dict[str, dict[str, Any]] = {
    # CogVideoX 2B / 5B (about 216 M parameters)
    "cogvideox": dict(_RELEASED),
    # CogVideoX 1.5: the same VAE, latents scaled by 0.7
    "cogvideox1.5": {**_RELEASED, "scaling_factor": 0.7, "invert_scale_latents": True, "sample_height": 768,
                     "sample_width": 1360},
    # a narrow version with the same strides and channels, for CPU tests
    "tiny": {**_RELEASED, "block_out_channels": [8, 8, 16, 16], "layers_per_block": 1, "norm_num_groups": 4},
}
#: the released pipelines whose VAE is not the 1.0 one: what a plan assumes before download
RELEASED_VAES: dict[str, str] = {"THUDM/CogVideoX1.5-5B": "cogvideox1.5"}


class CogVideoXVAEConfig(DiffusersAutoencoderConfig):
    """Options of the ``cogvideox_vae`` autoencoder (recipe section ``autoencoder``)."""

    FAMILY = FAMILY
    CLASS_NAME = CLASS_NAME
    PRESETS = PRESETS
    PLAN_PRESET = "cogvideox"
    RELEASED = RELEASED_VAES
    FETCH_HINT = FETCH_HINT

    path: str | None = Field(None, description="a CogVideoX pipeline folder or hub id (its vae/ is read) or a VAE "
                                               "folder; pipeline_path fills it")
    preset: Literal["cogvideox", "cogvideox1.5", "tiny"] | None = Field(
        None, description="build random weights of this VAE instead of loading path (tests); with neither, plans use "
                          "cogvideox")

    def autoencoder_geometry(self) -> AutoencoderGeometry:
        """The VAE's half of the latent geometry: 4x time (causal first frame), 8x space, 16 channels."""
        cfg = self.vae_config()
        return AutoencoderGeometry(stride_t=int(cfg.get("temporal_compression_ratio") or 4),
                                   stride_hw=2 ** (len(cfg.get("block_out_channels") or [0] * 4) - 1),
                                   latent_channels=int(cfg.get("latent_channels") or 16))


def build(config: CogVideoXVAEConfig, *, device: Any = None, dtype: Any = None, meta: bool = False, **_: Any) -> Any:
    """The CogVideoX VAE behind the osctl ``Autoencoder`` protocol: loaded, random from a preset, or on meta."""
    from osctl.families.autoencoders import build_autoencoder
    from osctl_builtin.autoencoders.cogvideox_vae.wrapper import CogVideoXVAEAutoencoder

    return build_autoencoder(config, CogVideoXVAEAutoencoder, device=device, dtype=dtype, meta=meta)


@osctl.hookimpl
def register_autoencoders(register: Any) -> None:
    """Register the CogVideoX VAE."""
    register(osctl.ComponentSpec(
        name="cogvideox_vae",
        aliases=(CLASS_NAME,),
        summary="CogVideoX VAE (diffusers AutoencoderKLCogVideoX): 16 channels, 4x time (causal) / 8x space",
        factory=build,
        config=CogVideoXVAEConfig,
        metadata={"class_names": (CLASS_NAME,), "family": "cogvideox"},
    ))
