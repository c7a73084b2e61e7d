"""The osctl-facing Wan VAE: diffusers' ``AutoencoderKLWan`` with Wan's per-channel latent normalisation.

Normalisation exactly as ``WanPipeline`` (decode) and diffusers' Wan training scripts (encode) write it, with
``inv_std = 1 / latents_std``::

    encode: z = (posterior.sample() - latents_mean) * inv_std          (the posterior mean with sample=False)
    decode: video = vae.decode(z / inv_std + latents_mean)             (B x C x T x H x W, clamped to [-1, 1])
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from osctl.utils.dtypes import torch_dtype


class WanVAEAutoencoder(nn.Module):
    """``AutoencoderKLWan`` behind the osctl ``Autoencoder`` protocol; the diffusers module is ``self.vae``."""

    def __init__(self, vae: Any) -> None:
        super().__init__()
        self.vae = vae
        cfg = vae.config
        self.latent_channels = int(cfg.z_dim)
        self.temporal_stride = int(cfg.scale_factor_temporal or 4)
        self.spatial_stride = int(cfg.scale_factor_spatial or 8)
        view = (1, self.latent_channels, 1, 1, 1)
        self.register_buffer("latents_mean", torch.tensor(list(cfg.latents_mean), dtype=torch.float32).view(view),
                             persistent=False)
        self.register_buffer("inv_std", 1.0 / torch.tensor(list(cfg.latents_std), dtype=torch.float32).view(view),
                             persistent=False)

    # construction ------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, folder: Path, *, dtype: Any = None, device: Any = None) -> WanVAEAutoencoder:
        """Load a VAE folder (config.json + diffusion_pytorch_model weights) without running code from it."""
        from diffusers import AutoencoderKLWan

        from osctl.families.loading import from_pretrained_safely

        vae = from_pretrained_safely(AutoencoderKLWan, Path(folder), torch_dtype(dtype, "autoencoder dtype"))
        return cls._placed(cls(vae), device)

    @classmethod
    def from_config(cls, config: dict[str, Any], *, seed: int = 0, dtype: Any = None,
                    device: Any = None) -> WanVAEAutoencoder:
        """Random weights of the architecture ``config`` (deterministic for a seed)."""
        from diffusers import AutoencoderKLWan

        state = torch.random.get_rng_state()
        try:
            torch.manual_seed(seed)
            vae = AutoencoderKLWan(**config)
        finally:
            torch.random.set_rng_state(state)
        resolved = torch_dtype(dtype, "autoencoder dtype")
        if resolved is not None:
            vae = nn.Module.to(vae, dtype=resolved)
        return cls._placed(cls(vae), device)

    @classmethod
    def on_meta(cls, config: dict[str, Any], *, dtype: Any = None) -> WanVAEAutoencoder:
        """The architecture on the meta device (a plan counts its parameters; nothing is allocated)."""
        from diffusers import AutoencoderKLWan

        with torch.device("meta"):
            vae = AutoencoderKLWan(**config)
        resolved = torch_dtype(dtype, "autoencoder dtype")
        if resolved is not None:
            vae = nn.Module.to(vae, dtype=resolved)
        return cls(vae)

    @staticmethod
    def _placed(ae: WanVAEAutoencoder, device: Any) -> WanVAEAutoencoder:
        if device is not None:
            ae = ae.to(device)
        return ae

    def enable_tiling(self) -> None:
        """diffusers' spatial tiling for encode and decode."""
        self.vae.enable_tiling()

    # the Autoencoder protocol ------------------------------------------------------------------------
    @property
    def dtype(self) -> torch.dtype:
        return next(self.vae.parameters()).dtype

    def encode(self, video: torch.Tensor, *, sample: bool = True, generator: torch.Generator | None = None) -> torch.Tensor:
        """Normalised latents ``B x C x T_lat x H_lat x W_lat`` of pixel video ``B x 3 x T x H x W`` in [-1, 1]."""
        posterior = self.vae.encode(video.to(self.dtype)).latent_dist
        z = posterior.sample(generator=generator) if sample else posterior.mean
        return (z.float() - self.latents_mean) * self.inv_std

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Pixel video ``B x 3 x T x H x W`` in [-1, 1] from normalised latents."""
        z = latents.float() / self.inv_std + self.latents_mean
        return self.vae.decode(z.to(self.dtype), return_dict=False)[0]

    def diffusers_modules(self) -> dict[str, Any]:
        """The pipeline components this autoencoder is (``ckpt convert --to diffusers-pipeline`` saves them)."""
        return {"vae": self.vae}
