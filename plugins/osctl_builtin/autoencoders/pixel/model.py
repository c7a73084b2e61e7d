"""A lossless pixel-space "autoencoder": space-to-depth and time-to-depth folding, for tiny CPU demos.

``encode`` only rearranges pixels (no weights, no randomness), so ``decode(encode(x)) == x`` bit for
bit with the default normalisation. Geometry, with spatial stride ``s`` and temporal stride ``k``:

* a video ``B x 3 x T x H x W`` with ``T = k*n + 1`` becomes latents
  ``B x (3*k*s*s) x (n+1) x H/s x W/s`` (the same causal shape rule as the WF-VAE: ``T_lat = (T-1)/k + 1``);
* the first frame forms a group of its own, padded by repetition to ``k`` copies (like the causal
  padding of a causal convolution) so every latent frame has the same channels; later frames are
  folded ``k`` at a time;
* latent channels are ordered ``(colour, frame-in-group, row-in-block, column-in-block)``;
* ``decode`` unfolds and keeps the *last* copy of the first group (any copy is exact for encoded
  latents; for generated latents the choice is arbitrary but deterministic).

Normalisation: ``z = (x_folded - shift) * scale``. With ``scale`` a power of two and ``shift = 0``
(default ``1`` and ``0``) the round trip is exact; other values round like any float arithmetic.
"""

from __future__ import annotations

import torch
from torch import nn


class PixelAutoencoder(nn.Module):
    """Exact, parameter-free autoencoder following the osctl ``Autoencoder`` protocol."""

    def __init__(self, spatial_stride: int = 8, temporal_stride: int = 4, scale: float = 1.0, shift: float = 0.0,
                 channels: int = 3, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        if spatial_stride < 1 or temporal_stride < 1:
            raise ValueError(f"strides must be >= 1, got spatial {spatial_stride}, temporal {temporal_stride}.")
        if scale == 0:
            raise ValueError("scale must be non-zero (decode divides by it).")
        self.spatial_stride = int(spatial_stride)
        self.temporal_stride = int(temporal_stride)
        self.channels = int(channels)
        self.scale = float(scale)
        self.shift = float(shift)
        self.latent_channels = self.channels * self.temporal_stride * self.spatial_stride ** 2
        self._dtype = dtype

    @property
    def dtype(self) -> torch.dtype:
        """Dtype of the latents and videos it returns (float32 unless configured)."""
        return self._dtype or torch.float32

    def _check_video(self, video: torch.Tensor) -> None:
        if video.dim() != 5 or video.shape[1] != self.channels:
            raise ValueError(f"pixel autoencoder encode expects a video B x {self.channels} x T x H x W, "
                             f"got shape {tuple(video.shape)}.")
        frames, height, width = video.shape[2:]
        k, s = self.temporal_stride, self.spatial_stride
        if frames < 1 or (frames - 1) % k:
            lower = max(1, frames - (frames - 1) % k)
            raise ValueError(f"pixel autoencoder encode: num_frames {frames} is not {k}k+1; use {lower} or {lower + k}.")
        for name, size in (("height", height), ("width", width)):
            if size < s or size % s:
                raise ValueError(f"pixel autoencoder encode: {name} {size} is not a multiple of spatial_stride {s}.")

    def encode(self, video: torch.Tensor, *, sample: bool = True, generator: torch.Generator | None = None,
               noise: torch.Tensor | None = None) -> torch.Tensor:
        """Latents ``B x 3k s^2 x (T-1)/k+1 x H/s x W/s`` of ``video`` (``sample``/``generator`` are ignored)."""
        del sample, generator, noise  # deterministic: there is no posterior to sample
        self._check_video(video)
        if self._dtype is not None:
            video = video.to(self._dtype)
        b, c, _, h, w = video.shape
        k, s = self.temporal_stride, self.spatial_stride
        # B x C x k(n+1) x H x W: the first frame repeated to a full group
        grouped = torch.cat([video[:, :, :1].expand(-1, -1, k - 1, -1, -1), video], dim=2)
        n = grouped.shape[2] // k
        x = grouped.reshape(b, c, n, k, h // s, s, w // s, s)
        x = x.permute(0, 1, 3, 5, 7, 2, 4, 6)  # B x C x k x s x s x n x H/s x W/s
        z = x.reshape(b, self.latent_channels, n, h // s, w // s)
        if self.shift != 0.0:
            z = z - self.shift
        if self.scale != 1.0:
            z = z * self.scale
        return z.contiguous()

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Video ``B x 3 x k(t-1)+1 x s h x s w`` from latents ``B x 3k s^2 x t x h x w``."""
        if latents.dim() != 5 or latents.shape[1] != self.latent_channels:
            raise ValueError(f"pixel autoencoder decode expects latents B x {self.latent_channels} x t x h x w, "
                             f"got shape {tuple(latents.shape)}.")
        z = latents if self._dtype is None else latents.to(self._dtype)
        if self.scale != 1.0:
            z = z / self.scale
        if self.shift != 0.0:
            z = z + self.shift
        b, _, n, hl, wl = z.shape
        k, s, c = self.temporal_stride, self.spatial_stride, self.channels
        x = z.reshape(b, c, k, s, s, n, hl, wl).permute(0, 1, 5, 2, 6, 3, 7, 4)  # B x C x n x k x h x s x w x s
        frames = x.reshape(b, c, n * k, hl * s, wl * s)
        return frames[:, :, k - 1:].contiguous()  # drop the k-1 padding copies of the first frame

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        """``decode(encode(video))`` (an identity up to the normalisation's rounding)."""
        return self.decode(self.encode(video))
