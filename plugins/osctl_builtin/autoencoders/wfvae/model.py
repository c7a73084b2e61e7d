"""WF-VAE (wavelet-flow VAE), the autoencoder of Open-Sora-Plan v1.3 (``WFVAEModel_D8_4x8x8``).

A re-implementation written from the published architecture; the parameter names, the config keys
and the numbers match the reference (OSP v1.3.1) so its released ``vae/`` folder loads unchanged.

Layout of the model (``C = base_channels``, ``E_enc``/``E_dec`` = energy-flow widths, video ``B x 3 x T x H x W``):

* ``encode``: a 3-D Haar transform of the video (2x2x2 filters, causal in time: the first frame is
  repeated once in front) gives ``24 = 8 bands x 3 colours`` channels at ``(T+1)/2 x H/2 x W/2``.
  The encoder runs a 2-D level (``down1``, per frame) and a 3-D level (``down2``, stride 2 in time and
  space); "energy-flow" side paths feed further wavelet levels of the low band into each level
  (``connect_l1``: 2-D Haar of the low band, ``connect_l2``: 3-D Haar of that one's low band); mid
  blocks with per-frame attention; output ``2 x latent_dim`` moments -> diagonal Gaussian.
* ``decode`` mirrors it with inverse Haar transforms and ends with the inverse 3-D Haar transform,
  which drops the causal padding frame again: ``T = 4 (t - 1) + 1``.

Temporal tiling (``enable_tiling``) runs the encoder over chunks of wavelet frames and the decoder
over chunks of latent frames. Every module whose output depends on earlier frames carries the frames
it needs to the next chunk ("causal cache"), so tiled and untiled results agree to float rounding.
The decoder's trilinear time upsampling also needs the *next* frame, so each decoder chunk that is not
the last is decoded with one extra latent frame whose outputs are dropped (and which the caches skip).
"""

from __future__ import annotations

import glob
import logging
import os
from collections.abc import Iterable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

logger = logging.getLogger(__name__)

# The reference builds its 3-D Haar filters from this rounded literal, not from 1/(2*sqrt(2)) =
# 0.35355339...; the released weights were trained with it, so it is kept.
HAAR_3D_GAIN = 0.3536
# 3-D Haar bands in the reference's order; each name gives the (time, height, width) sign bits of the
# filter: band = 4*t_bit + 2*h_bit + w_bit, filter(t, y, x) = GAIN * (-1)^(t*t_bit + y*h_bit + x*w_bit).
HAAR_3D_BANDS = ("h", "g", "hh", "gh", "h_v", "g_v", "hh_v", "gh_v")
# 2-D Haar bands: aa = low/low, ad = high in height, da = high in width, dd = high in both
# (band = 2*w_bit + h_bit, filter(y, x) = 0.5 * (-1)^(y*h_bit + x*w_bit)).
HAAR_2D_BANDS = ("aa", "ad", "da", "dd")

# The only module layout this implementation builds (the 4x8x8 WF-VAE of OSP v1.3).
_SUPPORTED_BLOCKS = {
    "l1_dowmsample_block": "Downsample",
    "l1_downsample_wavelet": "HaarWaveletTransform2D",
    "l2_dowmsample_block": "Spatial2xTime2x3DDownsample",
    "l2_downsample_wavelet": "HaarWaveletTransform3D",
    "l1_upsample_block": "Upsample",
    "l1_upsample_wavelet": "InverseHaarWaveletTransform2D",
    "l2_upsample_block": "Spatial2xTime2x3DUpsample",
    "l2_upsample_wavelet": "InverseHaarWaveletTransform3D",
}
_DEFAULT_SCALE = (0.18215,) * 8
_DEFAULT_SHIFT = (0.0,) * 8


# ------------------------------------------------------------------------------------------------
# Fixed Haar filters
# ------------------------------------------------------------------------------------------------
def haar3d_filters(dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> torch.Tensor:
    """The eight 2x2x2 Haar analysis/synthesis filters, stacked as ``8 x 1 x 2 x 2 x 2`` (no RNG used)."""
    t = torch.tensor([1.0, -1.0], device=device)
    ones = torch.ones(2, device=device)
    filters = []
    for band in range(8):
        t_bit, h_bit, w_bit = (band >> 2) & 1, (band >> 1) & 1, band & 1
        ft = t if t_bit else ones
        fh = t if h_bit else ones
        fw = t if w_bit else ones
        filters.append(ft[:, None, None] * fh[None, :, None] * fw[None, None, :] * HAAR_3D_GAIN)
    out = torch.stack(filters).unsqueeze(1)
    return out if dtype is None else out.to(dtype)


def haar2d_filters(dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> torch.Tensor:
    """The four 2x2 Haar filters (entries +-0.5), stacked as ``4 x 1 x 2 x 2``."""
    s = torch.tensor([1.0, -1.0], device=device)
    ones = torch.ones(2, device=device)
    filters = []
    for band in range(4):  # aa, ad (sign flips along height), da (along width), dd (both)
        h_bit, w_bit = band & 1, (band >> 1) & 1
        filters.append((s if h_bit else ones)[:, None] * (s if w_bit else ones)[None, :] / 2)
    out = torch.stack(filters).unsqueeze(1)
    return out if dtype is None else out.to(dtype)


def _haar3d_apply(x: torch.Tensor, filters: torch.Tensor) -> torch.Tensor:
    """3-D Haar analysis of an already time-padded ``B x C x T x H x W`` -> ``B x 8C x T/2 x H/2 x W/2``.

    Channels come out band-major (all colours of band 0, then band 1, ...), as in the reference.
    """
    b, c, t, h, w = x.shape
    y = F.conv3d(x.reshape(b * c, 1, t, h, w), filters, stride=2)  # (b c) x 8 x t' x h' x w'
    y = y.reshape(b, c, 8, *y.shape[2:]).transpose(1, 2)  # b x 8 x c x t' x h' x w'
    return y.reshape(b, 8 * c, *y.shape[3:])


def _haar3d_invert(coeffs: torch.Tensor, filters: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`_haar3d_apply` without dropping anything: ``B x 8C x t x h x w`` -> ``B x C x 2t x 2h x 2w``."""
    b, c8, t, h, w = coeffs.shape
    c = c8 // 8
    y = coeffs.reshape(b, 8, c, t, h, w).transpose(1, 2).reshape(b * c, 8, t, h, w)
    y = F.conv_transpose3d(y, filters, stride=2)  # (b c) x 1 x 2t x 2h x 2w, summed over the 8 bands
    return y.reshape(b, c, 2 * t, 2 * h, 2 * w)


def haar3d_analysis(video: torch.Tensor) -> torch.Tensor:
    """The input wavelet transform of ``encode``: causal (first frame repeated once), ``T`` -> ``(T+1)/2``."""
    filters = haar3d_filters(video.dtype, video.device)
    padded = torch.cat([video[:, :, :1], video], dim=2)
    return _haar3d_apply(padded, filters)


def haar3d_synthesis(coeffs: torch.Tensor) -> torch.Tensor:
    """The output inverse transform of ``decode``: ``t`` -> ``2t - 1`` frames (the padding frame dropped)."""
    filters = haar3d_filters(coeffs.dtype, coeffs.device)
    return _haar3d_invert(coeffs, filters)[:, :, 1:]


def _frames_to_images(x: torch.Tensor) -> torch.Tensor:
    """``B x C x T x H x W`` -> ``(B T) x C x H x W``."""
    b, c, t, h, w = x.shape
    return x.transpose(1, 2).reshape(b * t, c, h, w)


def _images_to_frames(x: torch.Tensor, batch: int) -> torch.Tensor:
    """``(B T) x C x H x W`` -> ``B x C x T x H x W``."""
    bt, c, h, w = x.shape
    return x.reshape(batch, bt // batch, c, h, w).transpose(1, 2)


def _per_frame(fn: Any, x: torch.Tensor) -> torch.Tensor:
    """Apply a 2-D (image) operation to every frame of a video tensor; 4-D tensors pass straight in."""
    if x.dim() == 4:
        return fn(x)
    return _images_to_frames(fn(_frames_to_images(x)), x.shape[0])


# ------------------------------------------------------------------------------------------------
# Causal streaming (tiling) support
# ------------------------------------------------------------------------------------------------
class Streamable(nn.Module):
    """Base of modules whose output at a frame depends on earlier frames.

    In streaming mode (tiled encode/decode) such a module keeps what the next chunk needs in
    ``_state``. ``overlap`` is the number of trailing frames of the current chunk (at this module's
    frame rate) that the next chunk will present again; they must not enter the carried context.
    ``rate`` is the module's frame rate relative to the latent frames (1 or 2 in the decoder), used
    to turn the decoder's one-latent-frame overlap into frames at this module.
    """

    def __init__(self) -> None:
        super().__init__()
        self.streaming = False
        self.rate = 1
        self.overlap = 0
        self._state: Any = None
        self._started = False

    def reset_stream(self) -> None:
        """Forget the carried context (start of a new video)."""
        self._state = None
        self._started = False


def _next_context(x: torch.Tensor, kernel: int, stride: int, overlap: int) -> torch.Tensor:
    """Frames of the time-padded input ``x`` that the next chunk's first window still needs.

    Windows start at ``0, stride, 2*stride, ...``; those that fit in the frames before the overlap are
    computed now, so the next window starts after them and everything from there on is carried.
    """
    usable = x.shape[2] - overlap
    done = (usable - kernel) // stride + 1 if usable >= kernel else 0
    return x[:, :, done * stride:usable].clone()


class CausalConv3d(Streamable):
    """3-D convolution that is causal in time: ``kernel_t - 1`` frames of context are prepended.

    Without a carried context the first frame is repeated (the reference's padding); spatial padding
    is ordinary zero padding. Parameters live in ``self.conv`` (``...conv.weight`` in the state dict).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | Sequence[int],
                 stride: int | Sequence[int] = 1, padding: int | Sequence[int] = 0, bias: bool = True) -> None:
        super().__init__()
        kernel = _triple(kernel_size)
        strides = _triple(stride)
        pads = _triple(padding)
        self.kernel_t = kernel[0]
        self.stride_t = strides[0]
        self.conv = nn.Conv3d(in_channels, out_channels, kernel, stride=strides, padding=(0, pads[1], pads[2]),
                              bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``B x C_in x T x H x W`` -> ``B x C_out x T' x H' x W'`` with causal time padding."""
        if self.kernel_t == 1:
            return self.conv(x)
        x = _causal_pad(self, x, self.kernel_t - 1)
        if self.streaming:
            self._state = _next_context(x, self.kernel_t, self.stride_t, self.overlap)
        return self.conv(x)


def _causal_pad(module: Streamable, x: torch.Tensor, frames: int) -> torch.Tensor:
    """Prepend the carried context, or ``frames`` copies of the first frame when there is none."""
    if module.streaming and module._state is not None:
        head = module._state
    else:
        head = x[:, :, :1].expand(-1, -1, frames, -1, -1)
    return torch.cat([head, x], dim=2)


def _triple(value: int | Sequence[int]) -> tuple[int, int, int]:
    """``3`` -> ``(3, 3, 3)``; a 3-sequence passes through."""
    if isinstance(value, int):
        return (value, value, value)
    out = tuple(int(v) for v in value)
    if len(out) != 3:
        raise ValueError(f"expected an int or 3 values, got {value!r}")
    return out  # type: ignore[return-value]


# ------------------------------------------------------------------------------------------------
# Building blocks
# ------------------------------------------------------------------------------------------------
class Conv2d(nn.Conv2d):
    """A 2-D convolution applied to every frame of a video (parameters named like ``nn.Conv2d``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``B x C x T x H x W`` (or ``N x C x H x W``) -> same layout with ``C_out`` channels."""
        return _per_frame(super().forward, x)


class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channel axis of ``B x C x ...`` tensors (eps 1e-6); weights in ``self.norm``."""

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(channels, eps=eps, elementwise_affine=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise each position's channel vector."""
        return self.norm(x.movedim(1, -1)).movedim(-1, 1)


def make_norm(channels: int, norm_type: str) -> nn.Module:
    """The reference's ``Normalize``: ``layernorm`` (wrapped, key ``.norm.``) or ``groupnorm`` (32 groups)."""
    if norm_type == "layernorm":
        return ChannelLayerNorm(channels)
    if norm_type == "groupnorm":
        return nn.GroupNorm(num_groups=32, num_channels=channels, eps=1e-6, affine=True)
    raise ValueError(f"norm_type {norm_type!r} is not supported; use 'layernorm' or 'groupnorm'.")


class ResnetBlock2D(nn.Module):
    """Per-frame residual block: norm-SiLU-conv3x3 twice, plus a 1x1 shortcut when widths differ."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float = 0.0, norm_type: str = "layernorm") -> None:
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.norm1 = make_norm(in_channels, norm_type)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = make_norm(out_channels, norm_type)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        if in_channels != out_channels:
            self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1)

    def _forward_images(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        if self.in_channels != self.out_channels:
            x = self.nin_shortcut(x)
        return x + h

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``B x C_in x T x H x W`` -> ``B x C_out x T x H x W``, frames independent."""
        return _per_frame(self._forward_images, x)


class ResnetBlock3D(nn.Module):
    """Residual block with causal 3x3x3 convolutions (time context carried in tiled mode)."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float = 0.0, norm_type: str = "layernorm") -> None:
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.norm1 = make_norm(in_channels, norm_type)
        self.conv1 = CausalConv3d(in_channels, out_channels, 3, padding=1)
        self.norm2 = make_norm(out_channels, norm_type)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = CausalConv3d(out_channels, out_channels, 3, padding=1)
        if in_channels != out_channels:
            self.nin_shortcut = CausalConv3d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``B x C_in x T x H x W`` -> ``B x C_out x T x H x W``."""
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        if self.in_channels != self.out_channels:
            x = self.nin_shortcut(x)
        return x + h


class FrameAttention(nn.Module):
    """Single-head self-attention over the ``H x W`` positions of each frame (the reference's ``AttnBlock3DFix``)."""

    def __init__(self, channels: int, norm_type: str = "layernorm") -> None:
        super().__init__()
        self.norm = make_norm(channels, norm_type)
        self.q = CausalConv3d(channels, channels, 1)
        self.k = CausalConv3d(channels, channels, 1)
        self.v = CausalConv3d(channels, channels, 1)
        self.proj_out = CausalConv3d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``B x C x T x H x W`` -> same; no information crosses frames."""
        b, c, t, h, w = x.shape
        y = self.norm(x)

        def tokens(z: torch.Tensor) -> torch.Tensor:  # B x C x T x H x W -> (B T) x (H W) x C
            return z.permute(0, 2, 3, 4, 1).reshape(b * t, h * w, c)

        out = F.scaled_dot_product_attention(tokens(self.q(y)), tokens(self.k(y)), tokens(self.v(y)))
        out = out.reshape(b, t, h, w, c).permute(0, 4, 1, 2, 3)
        return x + self.proj_out(out)


class Downsample2D(nn.Module):
    """Per-frame 2x spatial downsampling: zero pad right/bottom by one, 3x3 conv with stride 2."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``B x C x T x H x W`` -> ``B x C' x T x H/2 x W/2``."""
        return _per_frame(lambda z: self.conv(F.pad(z, (0, 1, 0, 1))), x)


class Upsample2D(nn.Module):
    """Per-frame 2x nearest upsampling followed by a 3x3 conv."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``B x C x T x H x W`` -> ``B x C' x T x 2H x 2W``."""
        return _per_frame(lambda z: self.conv(F.interpolate(z, scale_factor=2.0, mode="nearest")), x)


class CausalDownsample3D(nn.Module):
    """2x downsampling in time and space (the reference's ``Spatial2xTime2x3DDownsample``).

    Zero pad right/bottom by one, then a causal 3x3x3 conv with stride 2: ``T`` -> ``(T+1)/2`` frames.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = CausalConv3d(in_channels, out_channels, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``B x C x T x H x W`` -> ``B x C' x (T+1)/2 x H/2 x W/2``."""
        return self.conv(F.pad(x, (0, 1, 0, 1, 0, 0)))


class CausalUpsample3D(Streamable):
    """2x upsampling in time and space (the reference's ``Spatial2xTime2x3DUpsample``), then a causal conv.

    The first frame of the video is only upsampled in space; the following frames are interpolated in
    time (``t_interpolation``, edge-clamped over the run that starts at frame 1) and then in space
    (trilinear): ``t`` -> ``2t - 1`` frames. In streaming mode the left neighbour of the next chunk's
    first frame is carried, so chunk borders interpolate exactly like the whole clip.
    """

    def __init__(self, in_channels: int, out_channels: int, t_interpolation: str = "trilinear") -> None:
        super().__init__()
        self.t_interpolation = t_interpolation
        self.conv = CausalConv3d(in_channels, out_channels, 3, padding=1)

    def _up_time(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, scale_factor=(2, 1, 1), mode=self.t_interpolation)

    @staticmethod
    def _up_space(x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, scale_factor=(1, 2, 2), mode="trilinear")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``B x C x t x H x W`` -> ``B x C' x (2t-1 | 2t) x 2H x 2W`` (``2t`` for later tiled chunks)."""
        frames = x.shape[2]
        if not (self.streaming and self._started):
            parts = [self._up_space(x[:, :, :1])]
            if frames > 1:
                parts.append(self._up_space(self._up_time(x[:, :, 1:])))
            y = torch.cat(parts, dim=2)
            first_chunk = True
        else:
            left = x[:, :, :1] if self._state is None else self._state
            y = self._up_space(self._up_time(torch.cat([left, x], dim=2))[:, :, 2:])
            first_chunk = False
        if self.streaming:
            self._started = True
            nxt = frames - self.overlap  # local index of the next chunk's first frame
            lowest = 1 if first_chunk else 0  # frame 0 of the video is not part of the interpolated run
            if nxt - 1 >= lowest:
                self._state = x[:, :, nxt - 1:nxt].clone()
            else:
                self._state = None  # the next chunk opens the run: its first frame is its own neighbour
        return self.conv(y)


class HaarWavelet2D(nn.Module):
    """Per-frame 2-D Haar analysis: ``C`` -> ``4C`` channels (band-major) at half resolution."""

    def __init__(self) -> None:
        super().__init__()
        for name, f in zip(HAAR_2D_BANDS, haar2d_filters(), strict=True):
            self.register_buffer(name, f.unsqueeze(0).clone())

    def filters(self) -> torch.Tensor:
        """The four filters as ``4 x 1 x 2 x 2``."""
        return torch.cat([getattr(self, n) for n in HAAR_2D_BANDS])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``B x C x T x H x W`` -> ``B x 4C x T x H/2 x W/2``."""

        def analyse(img: torch.Tensor) -> torch.Tensor:
            n, c, h, w = img.shape
            y = F.conv2d(img.reshape(n * c, 1, h, w), self.filters().to(img.dtype), stride=2)
            return y.reshape(n, c, 4, h // 2, w // 2).transpose(1, 2).reshape(n, 4 * c, h // 2, w // 2)

        return _per_frame(analyse, x)


class InverseHaarWavelet2D(nn.Module):
    """Per-frame inverse 2-D Haar: ``4C`` band-major channels -> ``C`` at double resolution."""

    def __init__(self) -> None:
        super().__init__()
        for name, f in zip(HAAR_2D_BANDS, haar2d_filters(), strict=True):
            self.register_buffer(name, f.unsqueeze(0).clone())

    def filters(self) -> torch.Tensor:
        """The four filters as ``4 x 1 x 2 x 2``."""
        return torch.cat([getattr(self, n) for n in HAAR_2D_BANDS])

    def forward(self, coeffs: torch.Tensor) -> torch.Tensor:
        """``B x 4C x T x h x w`` -> ``B x C x T x 2h x 2w``."""

        def synthesise(img: torch.Tensor) -> torch.Tensor:
            n, c4, h, w = img.shape
            c = c4 // 4
            y = img.reshape(n, 4, c, h, w).transpose(1, 2).reshape(n * c, 4, h, w)
            y = F.conv_transpose2d(y, self.filters().to(img.dtype), stride=2)
            return y.reshape(n, c, 2 * h, 2 * w)

        return _per_frame(synthesise, coeffs)


class _FixedWeight(nn.Module):
    """Holds one fixed filter as a frozen parameter named ``weight``."""

    def __init__(self, value: torch.Tensor) -> None:
        super().__init__()
        self.weight = nn.Parameter(value, requires_grad=False)


class _FixedTap(nn.Module):
    """A named slot ``<tap>.conv.weight`` for one Haar filter (the reference stores each in a conv)."""

    def __init__(self, value: torch.Tensor) -> None:
        super().__init__()
        self.conv = _FixedWeight(value)


class HaarWavelet3D(Streamable):
    """Causal 3-D Haar analysis of the encoder's second energy-flow level.

    The eight filters are frozen parameters ``h_conv.conv.weight`` ... ``gh_v_conv.conv.weight`` (as in
    the reference, where they count as parameters); they are created with their values, never written
    through ``.data``, so meta-device (low_cpu_mem_usage) loading works.
    """

    def __init__(self) -> None:
        super().__init__()
        for name, f in zip(HAAR_3D_BANDS, haar3d_filters(), strict=True):
            setattr(self, f"{name}_conv", _FixedTap(f.unsqueeze(0).clone()))

    def filters(self) -> torch.Tensor:
        """The eight filters as ``8 x 1 x 2 x 2 x 2``."""
        return torch.cat([getattr(self, f"{n}_conv").conv.weight for n in HAAR_3D_BANDS])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``B x C x T x H x W`` -> ``B x 8C x (T+1)/2 x H/2 x W/2`` (first frame repeated once in front)."""
        x = _causal_pad(self, x, 1)
        if self.streaming:
            self._state = _next_context(x, 2, 2, self.overlap)
        return _haar3d_apply(x, self.filters().to(x.dtype))


class InverseHaarWavelet3D(Streamable):
    """Inverse 3-D Haar of the decoder's energy-flow path: ``8C`` -> ``C`` channels, ``t`` -> ``2t - 1`` frames.

    The frame produced by the causal padding is dropped once per video (only the first tiled chunk).
    Filters are buffers ``h, g, hh, gh, h_v, g_v, hh_v, gh_v``.
    """

    def __init__(self) -> None:
        super().__init__()
        for name, f in zip(HAAR_3D_BANDS, haar3d_filters(), strict=True):
            self.register_buffer(name, f.unsqueeze(0).clone())

    def filters(self) -> torch.Tensor:
        """The eight filters as ``8 x 1 x 2 x 2 x 2``."""
        return torch.cat([getattr(self, n) for n in HAAR_3D_BANDS])

    def forward(self, coeffs: torch.Tensor) -> torch.Tensor:
        """``B x 8C x t x h x w`` -> ``B x C x (2t-1 | 2t) x 2h x 2w``."""
        y = _haar3d_invert(coeffs, self.filters().to(coeffs.dtype))
        if self.streaming and self._started:
            return y
        self._started = True
        return y[:, :, 1:]


# ------------------------------------------------------------------------------------------------
# Posterior
# ------------------------------------------------------------------------------------------------
class DiagonalGaussianDistribution:
    """Diagonal Gaussian from stacked moments ``B x 2D x ...`` (mean first, then log-variance).

    The log-variance is clamped to [-30, 20] before ``std = exp(logvar / 2)``, as in the reference.
    """

    def __init__(self, parameters: torch.Tensor, deterministic: bool = False) -> None:
        self.parameters = parameters
        self.mean, logvar = torch.chunk(parameters, 2, dim=1)
        self.logvar = torch.clamp(logvar, -30.0, 20.0)
        self.deterministic = deterministic
        self.std = torch.exp(0.5 * self.logvar)
        self.var = torch.exp(self.logvar)
        if deterministic:
            self.std = torch.zeros_like(self.mean)
            self.var = torch.zeros_like(self.mean)

    def sample(self, generator: torch.Generator | None = None, noise: torch.Tensor | None = None) -> torch.Tensor:
        """``mean + std * noise``; the noise is ``noise`` when given, else float32 ``randn`` drawn on the
        generator's device (CPU for the global RNG, like the reference) and moved to the mean's device."""
        if noise is None:
            device = generator.device if generator is not None else torch.device("cpu")
            noise = torch.randn(self.mean.shape, generator=generator, device=device, dtype=torch.float32)
        elif tuple(noise.shape) != tuple(self.mean.shape):
            raise ValueError(f"noise has shape {tuple(noise.shape)}, the posterior mean has {tuple(self.mean.shape)}.")
        return self.mean + self.std * noise.to(device=self.mean.device, dtype=self.mean.dtype)

    def mode(self) -> torch.Tensor:
        """The most likely latent, i.e. the mean."""
        return self.mean

    def kl(self, other: DiagonalGaussianDistribution | None = None) -> torch.Tensor:
        """KL divergence to ``other`` (standard normal when None), summed over all but the batch axis."""
        dims = list(range(1, self.mean.dim()))
        if self.deterministic:
            return torch.zeros(self.mean.shape[0], device=self.mean.device, dtype=self.mean.dtype)
        if other is None:
            return 0.5 * torch.sum(self.mean.pow(2) + self.var - 1.0 - self.logvar, dim=dims)
        return 0.5 * torch.sum(
            (self.mean - other.mean).pow(2) / other.var + self.var / other.var - 1.0 - self.logvar + other.logvar,
            dim=dims,
        )

    def nll(self, sample: torch.Tensor) -> torch.Tensor:
        """Negative log-likelihood of ``sample``, summed over all but the batch axis."""
        dims = list(range(1, self.mean.dim()))
        if self.deterministic:
            return torch.zeros(self.mean.shape[0], device=self.mean.device, dtype=self.mean.dtype)
        log_two_pi = 1.8378770664093453
        return 0.5 * torch.sum(log_two_pi + self.logvar + (sample - self.mean).pow(2) / self.var, dim=dims)


# ------------------------------------------------------------------------------------------------
# Encoder / decoder
# ------------------------------------------------------------------------------------------------
class WFVAEEncoder(nn.Module):
    """Wavelet-domain encoder: ``B x 24 x T' x H/2 x W/2`` Haar coefficients -> ``B x 2D x t x H/8 x W/8`` moments."""

    def __init__(self, latent_dim: int, base_channels: int, num_resblocks: int, energy_flow_hidden_size: int,
                 dropout: float, use_attention: bool, norm_type: str) -> None:
        super().__init__()
        c, e = base_channels, energy_flow_hidden_size
        self.down1 = nn.Sequential(
            Conv2d(24, c, 3, padding=1),
            *[ResnetBlock2D(c, c, dropout, norm_type) for _ in range(num_resblocks)],
            Downsample2D(c, c),
        )
        self.down2 = nn.Sequential(
            Conv2d(c + e, 2 * c, 3, padding=1),
            *[ResnetBlock3D(2 * c, 2 * c, dropout, norm_type) for _ in range(num_resblocks)],
            CausalDownsample3D(2 * c, 2 * c),
        )
        self.connect_l1 = Conv2d(12, e, 3, padding=1)
        self.connect_l2 = Conv2d(24, e, 3, padding=1)
        mid: list[nn.Module] = [ResnetBlock3D(2 * c + e, 4 * c, dropout, norm_type)]
        if use_attention:
            mid.append(FrameAttention(4 * c, norm_type))
        mid.append(ResnetBlock3D(4 * c, 4 * c, dropout, norm_type))
        self.mid = nn.Sequential(*mid)
        self.norm_out = make_norm(4 * c, norm_type)
        self.conv_out = CausalConv3d(4 * c, 2 * latent_dim, 3, padding=1)
        self.wavelet_tranform_l1 = HaarWavelet2D()  # (sic) the reference's attribute names
        self.wavelet_tranform_l2 = HaarWavelet3D()

    def forward(self, coeffs: torch.Tensor) -> torch.Tensor:
        """Moments for the wavelet coefficients ``coeffs`` (``B x 24 x T' x H' x W'``)."""
        l1_coeffs = self.wavelet_tranform_l1(coeffs[:, :3])  # B x 12 x T' x H'/2 x W'/2 (low band, 2-D Haar)
        l1 = self.connect_l1(l1_coeffs)  # B x E x T' x H'/2 x W'/2
        l2_coeffs = self.wavelet_tranform_l2(l1_coeffs[:, :3])  # B x 24 x (T'+1)/2 x H'/4 x W'/4
        l2 = self.connect_l2(l2_coeffs)  # B x E x (T'+1)/2 x H'/4 x W'/4
        h = self.down1(coeffs)  # B x C x T' x H'/2 x W'/2
        h = self.down2(torch.cat([h, l1], dim=1))  # B x 2C x (T'+1)/2 x H'/4 x W'/4
        h = self.mid(torch.cat([h, l2], dim=1))  # B x 4C x ...
        return self.conv_out(F.silu(self.norm_out(h)))  # B x 2D x ...


class WFVAEDecoder(nn.Module):
    """Latents ``B x D x t x h x w`` -> wavelet coefficients ``B x 24 x (2t-1) x 4h x 4w`` (before the output inverse Haar)."""

    def __init__(self, latent_dim: int, base_channels: int, num_resblocks: int, energy_flow_hidden_size: int,
                 dropout: float, use_attention: bool, norm_type: str, t_interpolation: str,
                 connect_res_layer_num: int) -> None:
        super().__init__()
        c, e = base_channels, energy_flow_hidden_size
        self.energy_flow_hidden_size = e
        self.conv_in = CausalConv3d(latent_dim, 4 * c, 3, padding=1)
        mid: list[nn.Module] = [ResnetBlock3D(4 * c, 4 * c, dropout, norm_type)]
        if use_attention:
            mid.append(FrameAttention(4 * c, norm_type))
        mid.append(ResnetBlock3D(4 * c, 4 * c + e, dropout, norm_type))
        self.mid = nn.Sequential(*mid)
        self.up2 = nn.Sequential(
            *[ResnetBlock3D(4 * c, 4 * c, dropout, norm_type) for _ in range(num_resblocks)],
            CausalUpsample3D(4 * c, 4 * c, t_interpolation=t_interpolation),
            ResnetBlock3D(4 * c, 4 * c + e, dropout, norm_type),
        )
        self.up1 = nn.Sequential(
            *[ResnetBlock3D(4 * c if i == 0 else 2 * c, 2 * c, dropout, norm_type) for i in range(num_resblocks)],
            Upsample2D(2 * c, 2 * c),
            ResnetBlock3D(2 * c, 2 * c, dropout, norm_type),
        )
        self.layer = nn.Sequential(
            ResnetBlock3D(2 * c, c, dropout, norm_type),
            ResnetBlock3D(c, c, dropout, norm_type),
        )
        # The energy-flow branches take the last E channels but are built with C inputs (reference
        # layout), which is why decoder_energy_flow_hidden_size must equal base_channels.
        self.connect_l1 = nn.Sequential(
            *[ResnetBlock3D(c, c, dropout, norm_type) for _ in range(connect_res_layer_num)],
            Conv2d(c, 12, 3, padding=1),
        )
        self.connect_l2 = nn.Sequential(
            *[ResnetBlock3D(c, c, dropout, norm_type) for _ in range(connect_res_layer_num)],
            Conv2d(c, 24, 3, padding=1),
        )
        self.norm_out = make_norm(c, norm_type)
        self.conv_out = Conv2d(c, 24, 3, padding=1)
        self.inverse_wavelet_tranform_l1 = InverseHaarWavelet2D()  # (sic) the reference's attribute names
        self.inverse_wavelet_tranform_l2 = InverseHaarWavelet3D()
        # Everything after the time upsampling runs at twice the latent frame rate.
        upsampler = self.up2[-2]
        for part in (upsampler.conv, self.up2[-1], self.up1, self.connect_l1, self.layer):
            for m in part.modules():
                if isinstance(m, Streamable):
                    m.rate = 2

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Wavelet coefficients of the video for latents ``z``."""
        e = self.energy_flow_hidden_size
        h = self.mid(self.conv_in(z))  # B x (4C + E) x t x h x w
        l2 = self.inverse_wavelet_tranform_l2(self.connect_l2(h[:, -e:]))  # B x 3 x 2t-1 x 2h x 2w
        h = self.up2(h[:, :-e])  # B x (4C + E) x 2t-1 x 2h x 2w
        l1_coeffs = self.connect_l1(h[:, -e:])  # B x 12 x 2t-1 x 2h x 2w
        l1_coeffs = torch.cat([l1_coeffs[:, :3] + l2, l1_coeffs[:, 3:]], dim=1)
        l1 = self.inverse_wavelet_tranform_l1(l1_coeffs)  # B x 3 x 2t-1 x 4h x 4w
        h = self.layer(self.up1(h[:, :-e]))  # B x C x 2t-1 x 4h x 4w
        h = self.conv_out(F.silu(self.norm_out(h)))  # B x 24 x 2t-1 x 4h x 4w
        return torch.cat([h[:, :3] + l1, h[:, 3:]], dim=1)


# ------------------------------------------------------------------------------------------------
# The model
# ------------------------------------------------------------------------------------------------
class WFVAEModel(ModelMixin, ConfigMixin):
    """WF-VAE with the reference's config keys and state-dict names (diffusers ``ModelMixin``).

    ``encode(video)`` returns a :class:`DiagonalGaussianDistribution` over raw (unnormalised) latents;
    ``decode(z)`` returns the video ``B x 3 x T x H x W``. The per-channel ``scale``/``shift`` in the
    config are only stored here; the osctl wrapper applies them.
    """

    config_name = "config.json"
    _supports_gradient_checkpointing = False

    @register_to_config
    def __init__(
        self,
        latent_dim: int = 8,
        base_channels: int = 128,
        encoder_num_resblocks: int = 2,
        encoder_energy_flow_hidden_size: int = 64,
        decoder_num_resblocks: int = 2,
        decoder_energy_flow_hidden_size: int = 128,
        use_attention: bool = True,
        dropout: float = 0.0,
        norm_type: str = "groupnorm",
        t_interpolation: str = "nearest",
        connect_res_layer_num: int = 2,
        scale: Sequence[float] = _DEFAULT_SCALE,
        shift: Sequence[float] = _DEFAULT_SHIFT,
        l1_dowmsample_block: str = "Downsample",
        l1_downsample_wavelet: str = "HaarWaveletTransform2D",
        l2_dowmsample_block: str = "Spatial2xTime2x3DDownsample",
        l2_downsample_wavelet: str = "HaarWaveletTransform3D",
        l1_upsample_block: str = "Upsample",
        l1_upsample_wavelet: str = "InverseHaarWaveletTransform2D",
        l2_upsample_block: str = "Spatial2xTime2x3DUpsample",
        l2_upsample_wavelet: str = "InverseHaarWaveletTransform3D",
    ) -> None:
        super().__init__()
        given = {
            "l1_dowmsample_block": l1_dowmsample_block, "l1_downsample_wavelet": l1_downsample_wavelet,
            "l2_dowmsample_block": l2_dowmsample_block, "l2_downsample_wavelet": l2_downsample_wavelet,
            "l1_upsample_block": l1_upsample_block, "l1_upsample_wavelet": l1_upsample_wavelet,
            "l2_upsample_block": l2_upsample_block, "l2_upsample_wavelet": l2_upsample_wavelet,
        }
        for key, value in given.items():
            if value != _SUPPORTED_BLOCKS[key]:
                raise ValueError(
                    f"WFVAEModel config {key}={value!r} is not supported; only the 4x8x8 layout "
                    f"({key}={_SUPPORTED_BLOCKS[key]!r}) is implemented."
                )
        if decoder_energy_flow_hidden_size != base_channels:
            raise ValueError(
                f"WFVAEModel config decoder_energy_flow_hidden_size={decoder_energy_flow_hidden_size} must equal "
                f"base_channels={base_channels} (the decoder's energy-flow blocks are built with base_channels inputs)."
            )
        if len(scale) != latent_dim or len(shift) != latent_dim:
            raise ValueError(
                f"WFVAEModel config scale/shift must have latent_dim={latent_dim} entries each, "
                f"got {len(scale)} and {len(shift)}."
            )
        if t_interpolation not in ("trilinear", "nearest", "nearest-exact"):
            raise ValueError(
                f"WFVAEModel config t_interpolation={t_interpolation!r} is not supported; use 'trilinear' or 'nearest'."
            )
        self.encoder = WFVAEEncoder(latent_dim, base_channels, encoder_num_resblocks,
                                    encoder_energy_flow_hidden_size, dropout, use_attention, norm_type)
        self.decoder = WFVAEDecoder(latent_dim, base_channels, decoder_num_resblocks,
                                    decoder_energy_flow_hidden_size, dropout, use_attention, norm_type,
                                    t_interpolation, connect_res_layer_num)
        self.use_tiling = False
        self.t_chunk_enc = 16
        self.t_chunk_dec = 4

    # tiling ----------------------------------------------------------------------------------------
    def enable_tiling(self, use_tiling: bool = True, *, t_chunk_enc: int | None = None,
                      t_chunk_dec: int | None = None) -> None:
        """Encode/decode in temporal chunks with causal caches (same result, less activation memory).

        ``t_chunk_enc`` counts wavelet frames (after the input Haar transform; must be even),
        ``t_chunk_dec`` latent frames; the first frame is always its own chunk.
        """
        if t_chunk_enc is not None:
            if t_chunk_enc < 2 or t_chunk_enc % 2:
                raise ValueError(f"t_chunk_enc={t_chunk_enc} must be an even number >= 2 (wavelet frames per chunk).")
            self.t_chunk_enc = int(t_chunk_enc)
        if t_chunk_dec is not None:
            if t_chunk_dec < 1:
                raise ValueError(f"t_chunk_dec={t_chunk_dec} must be >= 1 (latent frames per chunk).")
            self.t_chunk_dec = int(t_chunk_dec)
        self.use_tiling = bool(use_tiling)

    def disable_tiling(self) -> None:
        """Process whole clips at once again."""
        self.use_tiling = False

    @staticmethod
    def chunk_bounds(frames: int, chunk: int) -> list[tuple[int, int]]:
        """``[(0, 1), (1, 1 + chunk), ...]`` over ``frames``: the first frame alone, then ``chunk`` at a time."""
        bounds = [(0, min(1, frames))]
        start = 1
        while start < frames:
            end = min(frames, start + chunk)
            bounds.append((start, end))
            start = end
        return bounds

    def _stream_modules(self, part: nn.Module) -> Iterable[Streamable]:
        return (m for m in part.modules() if isinstance(m, Streamable))

    def _set_streaming(self, part: nn.Module, on: bool) -> None:
        for m in self._stream_modules(part):
            m.streaming = on
            m.overlap = 0
            m.reset_stream()

    # encode / decode -------------------------------------------------------------------------------
    def encode(self, x: torch.Tensor) -> DiagonalGaussianDistribution:
        """Posterior over latents for a video ``B x 3 x T x H x W`` in [-1, 1] (``T = 4k+1``, ``H, W % 8 == 0``).

        Latents are ``B x latent_dim x (T-1)/4+1 x H/8 x W/8``. Uses no random numbers.
        """
        if x.dim() != 5 or x.shape[1] != 3:
            raise ValueError(f"WFVAEModel.encode expects a video B x 3 x T x H x W, got shape {tuple(x.shape)}.")
        coeffs = haar3d_analysis(x)  # B x 24 x (T+1)/2 x H/2 x W/2
        if self.use_tiling:
            self._set_streaming(self.encoder, True)
            try:
                parts = [self.encoder(coeffs[:, :, s:e]) for s, e in self.chunk_bounds(coeffs.shape[2], self.t_chunk_enc)]
            finally:
                self._set_streaming(self.encoder, False)
            moments = torch.cat(parts, dim=2)
        else:
            moments = self.encoder(coeffs)
        return DiagonalGaussianDistribution(moments)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Video ``B x 3 x 4(t-1)+1 x 8h x 8w`` for raw latents ``B x latent_dim x t x h x w``."""
        if z.dim() != 5:
            raise ValueError(f"WFVAEModel.decode expects latents B x C x t x h x w, got shape {tuple(z.shape)}.")
        if self.use_tiling:
            frames = z.shape[2]
            parts = []
            self._set_streaming(self.decoder, True)
            try:
                for s, e in self.chunk_bounds(frames, self.t_chunk_dec):
                    extra = 1 if e < frames else 0  # decode one more frame so the time interpolation sees it
                    for m in self._stream_modules(self.decoder):
                        m.overlap = extra * m.rate
                    y = self.decoder(z[:, :, s:e + extra])
                    parts.append(y[:, :, : y.shape[2] - 2 * extra])  # its two wavelet frames are dropped
            finally:
                self._set_streaming(self.decoder, False)
            coeffs = torch.cat(parts, dim=2)
        else:
            coeffs = self.decoder(z)
        return haar3d_synthesis(coeffs)

    def forward(self, x: torch.Tensor, sample_posterior: bool = True,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, DiagonalGaussianDistribution]:
        """Reconstruction and posterior of ``x`` (sampled latents, or the mean when ``sample_posterior`` is False)."""
        posterior = self.encode(x)
        z = posterior.sample(generator=generator) if sample_posterior else posterior.mode()
        return self.decode(z), posterior

    def get_last_layer(self) -> torch.Tensor:
        """Weight of the decoder's last convolution (used by adaptive GAN-loss weighting)."""
        return self.decoder.conv_out.weight

    # loading ---------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs: Any) -> WFVAEModel:
        """Load a diffusers folder (``config.json`` + ``diffusion_pytorch_model.safetensors``), or, like the
        reference, a folder with ``config.json`` and a training ``*.ckpt`` (its ``ema_state_dict``, else
        ``state_dict``; the last file in name order when there are several)."""
        folder = os.fspath(pretrained_model_name_or_path)
        ckpts = sorted(glob.glob(os.path.join(folder, "*.ckpt"))) if os.path.isdir(folder) else []
        if not ckpts:
            return super().from_pretrained(folder, **kwargs)
        torch_dtype = kwargs.get("torch_dtype")
        config = cls.load_config(folder)
        model = cls.from_config(config)
        model.load_checkpoint(ckpts[-1])
        if torch_dtype is not None:
            model = model.to(torch_dtype)
        model.eval()
        return model

    def load_checkpoint(self, path: str | os.PathLike) -> None:
        """Load weights from a training checkpoint (``torch.load(weights_only=True)``).

        Takes ``ema_state_dict`` when present and non-empty (``module.`` prefixes removed), else
        ``state_dict`` (its ``gen_model`` part if nested), else the file as a plain state dict. Fixed
        Haar filters may be absent (they keep their built-in values); any other missing weight is an error.
        """
        raw = torch.load(os.fspath(path), map_location="cpu", weights_only=True)
        if isinstance(raw, dict) and raw.get("ema_state_dict"):
            state = {k.removeprefix("module."): v for k, v in raw["ema_state_dict"].items()}
        elif isinstance(raw, dict) and "state_dict" in raw:
            state = raw["state_dict"]
            if isinstance(state, dict) and "gen_model" in state:
                state = state["gen_model"]
        else:
            state = raw
        if not isinstance(state, dict):
            raise ValueError(f"{path} holds no state dict (expected ema_state_dict or state_dict).")
        result = self.load_state_dict(state, strict=False)
        missing = [k for k in result.missing_keys if "wavelet_tranform" not in k]
        if missing:
            shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
            raise ValueError(f"{path} lacks {len(missing)} WF-VAE weights ({shown}); is it a checkpoint of this config?")
        if result.unexpected_keys:
            logger.warning("ignored %d keys of %s that WFVAEModel does not use (e.g. %s)",
                           len(result.unexpected_keys), path, result.unexpected_keys[0])
