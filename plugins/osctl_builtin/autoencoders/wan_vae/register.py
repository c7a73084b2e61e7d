"""Registers ``wan_vae`` (alias ``AutoencoderKLWan``): Wan's causal 3D VAE from diffusers, with its latent normalisation.

Two released VAEs: Wan 2.1's (16 latent channels, 4x time with a causal first frame, 8x space), used by every
Wan 2.1 model and by Wan 2.2 A14B, and Wan 2.2's (48 channels, 4x time, 16x space: a 2x2 pixel patch before a
residual 8x encoder), used by Wan 2.2 TI2V-5B. ``path`` names a Wan pipeline folder or hub id (its ``vae/`` is
read) or a VAE folder; a preset builds random weights (tests) or, on the meta device, the released shapes.

Kept light: torch and diffusers are imported only when the factory runs; the config reports the VAE's half
of the latent geometry from its ``config.json`` or preset.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

import osctl
from osctl.availability import MissingWeights
from osctl.families.sources import (
    Family,
    Located,
    has_diffusers_weights,
    locate_component,
    missing_source,
    read_json_object,
)
from osctl.geometry import AutoencoderGeometry
from osctl.registry import ComponentConfig

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


class WanVAEConfig(ComponentConfig):
    """Options of the ``wan_vae`` autoencoder (recipe section ``autoencoder``)."""

    path: str | None = Field(None, description="a Wan pipeline folder or hub id (its vae/ is read) or a VAE folder; "
                                               "pipeline_path fills it")
    preset: Literal["wan2.1", "wan2.2", "tiny", "tiny-wan2.2"] | None = Field(
        None, description="build random weights of this VAE instead of loading path (tests); with neither, plans use "
                          "wan2.1")
    seed: int = Field(0, description="seed of the random weights of a preset")
    enable_tiling: bool = Field(False, description="encode/decode in overlapping spatial tiles (diffusers' tiling)")

    @model_validator(mode="after")
    def _path_or_preset(self) -> WanVAEConfig:
        if self.path and self.preset:
            raise ValueError("set either path (load weights) or preset (random weights), not both")
        if self.path:
            try:
                self.located()
            except osctl.OsctlError as exc:
                raise ValueError(exc.message.rstrip(".")) from None
        return self

    @classmethod
    def pipeline_options(cls, pipeline_path: str) -> dict[str, Any]:
        """The options a recipe's ``pipeline_path`` fills in (explicit keys win)."""
        return {"path": pipeline_path}

    def located(self) -> Located | None:
        """The VAE folder ``path`` names (None when unset or not on this machine)."""
        if not self.path:
            return None
        return locate_component(self.path, "autoencoder.path", FAMILY, subfolder="vae", classes=(CLASS_NAME,))

    def folder(self) -> Path | None:
        """The VAE folder on this machine, or None."""
        found = self.located()
        return found.folders["vae"] if found is not None else None

    def vae_config(self) -> dict[str, Any]:
        """The VAE's constructor arguments: the folder's config.json, else the preset; before a released pipeline
        is downloaded, the released VAE it carries (:data:`RELEASED_VAES`; Wan 2.1's otherwise)."""
        folder = self.folder()
        if folder is not None:
            data = read_json_object(folder / "config.json", "autoencoder.path")
            return {k: v for k, v in data.items() if not k.startswith("_")}
        return dict(PRESETS[self.preset or RELEASED_VAES.get(self.path or "", "wan2.1")])

    def autoencoder_geometry(self) -> AutoencoderGeometry:
        """The VAE's half of the latent geometry: 4x time; 8x (Wan 2.1) or 16x (Wan 2.2) space; 16 or 48 channels."""
        cfg = self.vae_config()
        return AutoencoderGeometry(stride_t=int(cfg.get("scale_factor_temporal") or 4),
                                   stride_hw=int(cfg.get("scale_factor_spatial") or 8),
                                   latent_channels=int(cfg.get("z_dim") or 16))

    def missing_weights(self) -> list[MissingWeights]:
        """``path`` when it is unset (and no preset), not on this machine, or without weights."""
        if self.preset:
            return []
        if not self.path:
            return [MissingWeights("autoencoder.path", "not set (the Wan VAE needs its weights)", "", FETCH_HINT)]
        folder = self.folder()
        if folder is None:
            return [missing_source(self.path, "autoencoder.path", what="Wan VAE", fetch=FETCH_HINT)]
        if not has_diffusers_weights(folder):
            return [MissingWeights("autoencoder.path", f"{str(folder)!r} has a config.json but no weights", str(folder),
                                   FETCH_HINT)]
        return []

    def diffusers_components(self) -> dict[str, Path] | None:
        """``{"vae": folder}`` when the VAE comes from files (``ckpt convert --to diffusers-pipeline`` copies it);
        None for a preset (the exporter saves the built one)."""
        folder = self.folder()
        return {"vae": folder} if folder is not None else None


def build(config: WanVAEConfig, *, device: Any = None, dtype: Any = None, meta: bool = False, **_: Any) -> Any:
    """The Wan VAE behind the osctl ``Autoencoder`` protocol: loaded, random from a preset, or on the meta device."""
    from osctl_builtin.autoencoders.wan_vae.wrapper import WanVAEAutoencoder

    if meta:
        ae = WanVAEAutoencoder.on_meta(config.vae_config(), dtype=dtype)
    elif config.preset:
        ae = WanVAEAutoencoder.from_config(PRESETS[config.preset], seed=config.seed, dtype=dtype, device=device)
    else:
        folder = config.folder()
        if folder is None:
            raise osctl.ConfigError(f"autoencoder.path {config.path!r} is not on this machine.", hint=FETCH_HINT)
        ae = WanVAEAutoencoder.from_pretrained(folder, dtype=dtype, device=device)
    if config.enable_tiling:
        ae.enable_tiling()
    return ae


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
