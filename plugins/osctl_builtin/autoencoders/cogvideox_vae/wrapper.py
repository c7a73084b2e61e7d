"""The osctl-facing CogVideoX VAE: diffusers' ``AutoencoderKLCogVideoX`` with CogVideoX's latent scaling.

Scaling exactly as ``CogVideoXPipeline`` (decode) and CogVideoX's fine-tuning scripts (encode) write it::

    encode: z = posterior.sample() * scaling_factor          (the posterior mean with sample=False)
    decode: video = vae.decode(z / scaling_factor)

``scaling_factor`` is 1.15258426 for CogVideoX 2B/5B and 0.7 for 1.5.
"""

from __future__ import annotations

from typing import Any

import torch

from osctl.families.autoencoders import DiffusersAutoencoder


class CogVideoXVAEAutoencoder(DiffusersAutoencoder):
    """``AutoencoderKLCogVideoX`` behind the osctl ``Autoencoder`` protocol; the diffusers module is ``self.vae``."""

    diffusers_class = "AutoencoderKLCogVideoX"

    def __init__(self, vae: Any) -> None:
        super().__init__(vae)
        cfg = vae.config
        self.latent_channels = int(cfg.latent_channels)
        self.temporal_stride = int(cfg.temporal_compression_ratio)
        self.spatial_stride = 2 ** (len(cfg.block_out_channels) - 1)
        self.scaling_factor = float(cfg.scaling_factor)

    def normalise(self, z: torch.Tensor) -> torch.Tensor:
        return z * self.scaling_factor

    def denormalise(self, latents: torch.Tensor) -> torch.Tensor:
        return latents / self.scaling_factor
