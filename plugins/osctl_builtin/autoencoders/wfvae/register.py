"""Registers ``wfvae`` (alias ``WFVAEModel_D8_4x8x8``), Open-Sora-Plan v1.3's WF-VAE, as an autoencoder.

Kept light: torch and diffusers are imported only when the factory runs, so every ``osctl`` command
(and recipe validation, which reads the latent geometry from the config) stays fast. ``missing_weights()``
tells plans and the commands that need the weights whether ``path`` holds them (file-system checks
only); with ``meta=True`` the factory builds the VAE on the meta device from the folder's
``config.json`` or, without it, the released D8 4x8x8 configuration.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

import osctl
from osctl.availability import MissingWeights
from osctl.geometry import AutoencoderGeometry
from osctl.registry import ComponentConfig

LATENT_CHANNELS = 8
TEMPORAL_STRIDE = 4
SPATIAL_STRIDE = 8
#: weight files of a diffusers VAE folder (a folder with a training ``*.ckpt`` also loads)
WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
#: how to get the released VAE (also the hint of every "autoencoder.path" error)
FETCH_HINT = ("download the Open-Sora-Plan v1.3 'vae' folder (config.json + diffusion_pytorch_model.safetensors: "
              "`hf download LanguageBind/Open-Sora-Plan-v1.3.0 --include 'vae/*' --local-dir "
              "ckpt/Open-Sora-Plan-v1.3.0`) and set autoencoder.path (--ae-path) to it, or use autoencoder.preset: "
              "tiny for a random test VAE")


class WFVAEConfig(ComponentConfig):
    """Options of the ``wfvae`` autoencoder (recipe section ``autoencoder``)."""

    path: str | None = Field(None, description="VAE folder: config.json + diffusion_pytorch_model.safetensors "
                                               "(or a *.ckpt); the --ae_path flag")
    preset: Literal["tiny", "released"] | None = Field(
        None, description="build random weights of this size instead of loading path (tests, demos)")
    seed: int = Field(0, description="seed of the random weights of a preset")
    enable_tiling: bool = Field(False, description="encode/decode in temporal chunks with causal caches")
    t_chunk_enc: int = Field(16, ge=2, multiple_of=2, description="wavelet frames per encoder chunk (even)")
    t_chunk_dec: int = Field(4, ge=1, description="latent frames per decoder chunk")

    @model_validator(mode="after")
    def _path_or_preset(self) -> WFVAEConfig:
        if self.path and self.preset:
            raise ValueError("set either path (load weights) or preset (random weights), not both")
        return self

    def autoencoder_geometry(self) -> AutoencoderGeometry:
        """The D8 4x8x8 WF-VAE: 4x in time after the causal first frame, 8x8 in space, 8 latent channels."""
        return AutoencoderGeometry(stride_t=TEMPORAL_STRIDE, stride_hw=SPATIAL_STRIDE, latent_channels=LATENT_CHANNELS)

    def missing_weights(self) -> list[MissingWeights]:
        """``path`` when it is unset or does not hold a VAE's config.json and weights (a preset needs none)."""
        if self.preset:
            return []
        if not self.path:
            return [MissingWeights("autoencoder.path", "not set (the WF-VAE needs its weights folder)", "",
                                   FETCH_HINT)]
        folder = Path(self.path).expanduser()
        if not folder.is_dir():
            detail = f"{self.path!r} does not exist" if not folder.exists() else f"{self.path!r} is not a folder"
        elif not (folder / "config.json").is_file():
            detail = f"{self.path!r} has no config.json"
        elif not any((folder / name).is_file() for name in WEIGHT_FILES) and not any(folder.glob("*.ckpt")):
            detail = f"{self.path!r} holds no weights (diffusion_pytorch_model.safetensors or a *.ckpt)"
        else:
            return []
        return [MissingWeights("autoencoder.path", detail, str(folder), FETCH_HINT)]


def build(config: WFVAEConfig, *, device: Any = None, dtype: Any = None, meta: bool = False, **_: Any) -> Any:
    """Load (or, with ``preset``, randomly build) the WF-VAE behind the osctl ``Autoencoder`` protocol.

    ``meta=True``: the same architecture on the meta device, from ``path``'s config.json when it is there,
    else from the preset (``released`` when none is set); nothing is read but that file.
    """
    from osctl_builtin.autoencoders.wfvae.wrapper import WFVAEAutoencoder

    if meta:
        return WFVAEAutoencoder.on_meta(config.path, config.preset or "released", dtype=dtype)
    if config.preset:
        ae = WFVAEAutoencoder.from_preset(config.preset, seed=config.seed, dtype=dtype, device=device)
    else:
        ae = WFVAEAutoencoder.from_pretrained(config.path, dtype=dtype, device=device)  # type: ignore[arg-type]
    if config.enable_tiling:
        ae.enable_tiling(t_chunk_enc=config.t_chunk_enc, t_chunk_dec=config.t_chunk_dec)
    else:
        ae.vae.t_chunk_enc, ae.vae.t_chunk_dec = config.t_chunk_enc, config.t_chunk_dec
    return ae


@osctl.hookimpl
def register_autoencoders(register: Any) -> None:
    """Register the WF-VAE."""
    register(osctl.ComponentSpec(
        name="wfvae",
        aliases=("WFVAEModel_D8_4x8x8",),
        summary="WF-VAE of Open-Sora-Plan v1.3: 8 latent channels, 4x time (causal) / 8x8 space compression",
        factory=build,
        config=WFVAEConfig,
    ))
