"""Latents as an autoencoder's posterior, and the one formula that turns them into training latents.

A VAE's ``encode(video, sample=True, generator=g)`` is a posterior draw followed by the latent
normalisation. Splitting it in two lets the latent cache (:mod:`osctl.cache`) store the posterior
once and draw from it at every step exactly as the autoencoder would have::

    moments = autoencoder.latent_moments(video)          # optional Autoencoder method
    latents = moments.latents(sample=True, generator=g)  # == autoencoder.encode(video, sample=True, generator=g)

The draw is ``mean + std * noise`` with ``noise`` a float32 ``randn`` of the mean's shape from
``generator`` (on the generator's device), cast to the mean's dtype; the normalisation is
``(z - shift) * scale / divisor`` with per-channel float32 ``shift``/``scale``/``divisor`` (each optional), computed
in ``dtype`` (float32 for the diffusers families, whose pipelines normalise in float32) or else in ``z``'s dtype. An
autoencoder that implements ``latent_moments`` computes its own ``encode`` through
:meth:`LatentMoments.latents`, so the cached and the on-the-fly latents come from the same code and
agree bit for bit when the stored moments are exact (fp32 storage, or the autoencoder's dtype).

A deterministic autoencoder has no ``std`` (and may have no normalisation): its latents are the mean.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class LatentMoments:
    """A batch of posteriors over unnormalised latents ``B x C x T x H x W`` and their normalisation.

    ``std`` is None for a deterministic autoencoder; ``shift``/``scale``/``divisor`` (broadcastable to the mean,
    e.g. ``1 x C x 1 x 1 x 1``) are None when that step of the normalisation is not used; ``dtype`` is the dtype
    the normalisation computes in (None: the draw's).
    """

    mean: torch.Tensor
    std: torch.Tensor | None = None
    shift: torch.Tensor | None = None
    scale: torch.Tensor | None = None
    divisor: torch.Tensor | None = None
    dtype: torch.dtype | None = None

    def latents(self, *, sample: bool = True, generator: torch.Generator | None = None,
                noise: torch.Tensor | None = None) -> torch.Tensor:
        """Normalised latents: a posterior draw (``sample``; ``noise`` or a float32 ``randn`` from ``generator``,
        else the global RNG) or the mean, then ``(z - shift) * scale / divisor`` in ``dtype``."""
        z = self.mean
        if sample and self.std is not None:
            if noise is None:
                device = generator.device if generator is not None else torch.device("cpu")
                noise = torch.randn(self.mean.shape, generator=generator, device=device, dtype=torch.float32)
            elif tuple(noise.shape) != tuple(self.mean.shape):
                raise ValueError(f"noise has shape {tuple(noise.shape)}, the posterior mean has {tuple(self.mean.shape)}.")
            z = self.mean + self.std * noise.to(device=self.mean.device, dtype=self.mean.dtype)
        if self.dtype is not None:
            z = z.to(self.dtype)
        if self.shift is not None:
            z = z - self.shift.to(device=z.device, dtype=z.dtype)
        if self.scale is not None:
            z = z * self.scale.to(device=z.device, dtype=z.dtype)
        if self.divisor is not None:
            z = z / self.divisor.to(device=z.device, dtype=z.dtype)
        return z

    def normalisation(self) -> dict[str, Any]:
        """The normalisation as plain data (a cache manifest records it): lists and a dtype name, or None."""
        record: dict[str, Any] = {key: None if value is None else value.tolist()
                                  for key, value in (("shift", self.shift), ("scale", self.scale),
                                                     ("divisor", self.divisor))}
        record["dtype"] = None if self.dtype is None else str(self.dtype).removeprefix("torch.")
        return record


def normalisation_from(record: dict[str, Any]) -> dict[str, Any]:
    """:class:`LatentMoments` keyword arguments of a recorded normalisation (:meth:`LatentMoments.normalisation`;
    keys it lacks are None)."""
    out: dict[str, Any] = {key: None if record.get(key) is None else torch.tensor(record[key], dtype=torch.float32)
                           for key in ("shift", "scale", "divisor")}
    out["dtype"] = getattr(torch, record["dtype"]) if record.get("dtype") else None
    return out


def latent_moments(autoencoder: object, video: torch.Tensor) -> tuple[LatentMoments, bool]:
    """``(moments, exact)`` of ``video``: the autoencoder's own ``latent_moments`` when it has one
    (``exact``: drawing from them reproduces ``encode(sample=True)``), else ``encode(sample=False)`` as
    a deterministic mean (``exact`` False: a stochastic encoder's draw is replaced by its mean)."""
    method = getattr(autoencoder, "latent_moments", None)
    if callable(method):
        return method(video), True
    return LatentMoments(mean=autoencoder.encode(video, sample=False)), False  # type: ignore[attr-defined]
