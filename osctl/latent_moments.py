"""Latents as an autoencoder's posterior, and the one formula that turns them into training latents.

A VAE's ``encode(video, sample=True, generator=g)`` is a posterior draw followed by the latent
normalisation. Splitting it in two lets the latent cache (:mod:`osctl.cache`) store the posterior
once and draw from it at every step exactly as the autoencoder would have::

    moments = autoencoder.latent_moments(video)          # optional Autoencoder method
    latents = moments.latents(sample=True, generator=g)  # == autoencoder.encode(video, sample=True, generator=g)

The draw is ``mean + std * noise`` with ``noise`` a float32 ``randn`` of the mean's shape from
``generator`` (on the generator's device), cast to the mean's dtype; the normalisation is
``(z - shift) * scale`` with per-channel float32 ``shift``/``scale`` cast to ``z``'s dtype. An
autoencoder that implements ``latent_moments`` computes its own ``encode`` through
:meth:`LatentMoments.latents`, so the cached and the on-the-fly latents come from the same code and
agree bit for bit when the stored moments are exact (fp32 storage, or the autoencoder's dtype).

A deterministic autoencoder has no ``std`` (and may have no normalisation): its latents are the mean.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class LatentMoments:
    """A batch of posteriors over unnormalised latents ``B x C x T x H x W`` and their normalisation.

    ``std`` is None for a deterministic autoencoder; ``shift``/``scale`` (broadcastable to the mean,
    e.g. ``1 x C x 1 x 1 x 1``) are None when latents are not normalised.
    """

    mean: torch.Tensor
    std: torch.Tensor | None = None
    shift: torch.Tensor | None = None
    scale: torch.Tensor | None = None

    def latents(self, *, sample: bool = True, generator: torch.Generator | None = None,
                noise: torch.Tensor | None = None) -> torch.Tensor:
        """Normalised latents: a posterior draw (``sample``; ``noise`` or a float32 ``randn`` from ``generator``,
        else the global RNG) or the mean, then ``(z - shift) * scale``."""
        z = self.mean
        if sample and self.std is not None:
            if noise is None:
                device = generator.device if generator is not None else torch.device("cpu")
                noise = torch.randn(self.mean.shape, generator=generator, device=device, dtype=torch.float32)
            elif tuple(noise.shape) != tuple(self.mean.shape):
                raise ValueError(f"noise has shape {tuple(noise.shape)}, the posterior mean has {tuple(self.mean.shape)}.")
            z = self.mean + self.std * noise.to(device=self.mean.device, dtype=self.mean.dtype)
        if self.shift is not None:
            z = z - self.shift.to(device=z.device, dtype=z.dtype)
        if self.scale is not None:
            z = z * self.scale.to(device=z.device, dtype=z.dtype)
        return z


def latent_moments(autoencoder: object, video: torch.Tensor) -> tuple[LatentMoments, bool]:
    """``(moments, exact)`` of ``video``: the autoencoder's own ``latent_moments`` when it has one
    (``exact``: drawing from them reproduces ``encode(sample=True)``), else ``encode(sample=False)`` as
    a deterministic mean (``exact`` False: a stochastic encoder's draw is replaced by its mean)."""
    method = getattr(autoencoder, "latent_moments", None)
    if callable(method):
        return method(video), True
    return LatentMoments(mean=autoencoder.encode(video, sample=False)), False  # type: ignore[attr-defined]
