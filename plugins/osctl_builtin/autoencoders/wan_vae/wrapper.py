"""The osctl-facing Wan VAE: diffusers' ``AutoencoderKLWan`` with Wan's per-channel latent normalisation.

Normalisation exactly as ``WanPipeline`` (decode) and diffusers' Wan training scripts (encode) write it, with
``inv_std = 1 / latents_std``::

    encode: z = (posterior.sample() - latents_mean) * inv_std          (the posterior mean with sample=False)
    decode: video = vae.decode(z / inv_std + latents_mean)             (B x C x T x H x W, clamped to [-1, 1])
"""

from __future__ import annotations

from typing import Any

import torch

from osctl.families.autoencoders import DiffusersAutoencoder


class WanVAEAutoencoder(DiffusersAutoencoder):
    """``AutoencoderKLWan`` behind the osctl ``Autoencoder`` protocol; the diffusers module is ``self.vae``."""

    diffusers_class = "AutoencoderKLWan"

    def __init__(self, vae: Any) -> None:
        super().__init__(vae)
        cfg = vae.config
        self.latent_channels = int(cfg.z_dim)
        self.temporal_stride = int(cfg.scale_factor_temporal or 4)
        self.spatial_stride = int(cfg.scale_factor_spatial or 8)
        view = (1, self.latent_channels, 1, 1, 1)
        self.register_buffer("latents_mean", torch.tensor(list(cfg.latents_mean), dtype=torch.float32).view(view),
                             persistent=False)
        self.register_buffer("inv_std", 1.0 / torch.tensor(list(cfg.latents_std), dtype=torch.float32).view(view),
                             persistent=False)

    def normalisation(self) -> dict[str, torch.Tensor | None]:
        return {"shift": self.latents_mean, "scale": self.inv_std, "divisor": None}

    def denormalise(self, latents: torch.Tensor) -> torch.Tensor:
        return latents / self.inv_std + self.latents_mean
