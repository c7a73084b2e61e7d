"""The osctl-facing LTX-Video VAE: diffusers' ``AutoencoderKLLTXVideo`` with LTX's per-channel latent normalisation.

Normalisation exactly as ``LTXPipeline`` writes it (``_normalize_latents`` / ``_denormalize_latents``), with the
VAE's ``latents_mean`` / ``latents_std`` buffers (weights of the released folder) and ``scaling_factor``::

    encode: z = (posterior.sample() - latents_mean) * scaling_factor / latents_std
    decode: video = vae.decode(z * latents_std / scaling_factor + latents_mean, decode_timestep)

VAEs with ``timestep_conditioning`` (0.9.1 on) decode at ``decode_timestep`` after mixing ``decode_noise_scale``
of noise into the latents, as the pipeline does (its defaults: 0 and 0, the latents unchanged). The noise is
drawn from a generator seeded ``decode_seed``, so a seed gives the same video; ``LTXPipeline`` draws it from its
sampling generator, so with a noise scale above 0 the two differ by that noise.
"""

from __future__ import annotations

from typing import Any

import torch

from osctl.families.autoencoders import DiffusersAutoencoder


class LTXVAEAutoencoder(DiffusersAutoencoder):
    """``AutoencoderKLLTXVideo`` behind the osctl ``Autoencoder`` protocol; the diffusers module is ``self.vae``."""

    diffusers_class = "AutoencoderKLLTXVideo"

    def __init__(self, vae: Any) -> None:
        super().__init__(vae)
        self.latent_channels = int(vae.config.latent_channels)
        self.temporal_stride = int(vae.temporal_compression_ratio)
        self.spatial_stride = int(vae.spatial_compression_ratio)
        self.decode_timestep = 0.0
        self.decode_noise_scale: float | None = None
        self.decode_seed = 0

    def _statistics(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
        view = (1, -1, 1, 1, 1)
        mean = self.vae.latents_mean.view(view).to(like.device, like.dtype)
        std = self.vae.latents_std.view(view).to(like.device, like.dtype)
        return mean, std, float(self.vae.config.scaling_factor)

    def normalisation(self) -> dict[str, torch.Tensor | None]:
        mean, std, scale = self._statistics(torch.empty(0))
        return {"shift": mean, "scale": torch.tensor([scale], dtype=torch.float32), "divisor": std}

    def denormalise(self, latents: torch.Tensor) -> torch.Tensor:
        mean, std, scale = self._statistics(latents)
        return latents * std / scale + mean

    def decode_raw(self, z: torch.Tensor) -> torch.Tensor:
        if not self.vae.config.timestep_conditioning:
            return self.vae.decode(z, None, return_dict=False)[0]
        scale = self.decode_timestep if self.decode_noise_scale is None else self.decode_noise_scale
        if scale:
            noise = torch.randn(z.shape, generator=torch.Generator().manual_seed(self.decode_seed), dtype=torch.float32)
            z = (1 - scale) * z + scale * noise.to(z.device, z.dtype)
        timestep = torch.full((z.shape[0],), self.decode_timestep, device=z.device, dtype=z.dtype)
        return self.vae.decode(z, timestep, return_dict=False)[0]
