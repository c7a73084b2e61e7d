"""Registers ``pixel``, a lossless space-to-depth "autoencoder" for tiny CPU demos and tests.

No torch import at module level (every ``osctl`` command imports this module).
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

import osctl
from osctl.geometry import AutoencoderGeometry
from osctl.registry import ComponentConfig


class PixelConfig(ComponentConfig):
    """Options of the ``pixel`` autoencoder; its strides are options, declared as its latent geometry."""

    spatial_stride: int = Field(8, ge=1, le=64, description="pixels per latent position along H and W")
    temporal_stride: int = Field(4, ge=1, le=64, description="frames per latent frame after the first")
    scale: float = Field(1.0, description="z = (x - shift) * scale; exact round trip for powers of two")
    shift: float = 0.0

    def autoencoder_geometry(self) -> AutoencoderGeometry:
        """The strides of the options; every pixel of a ``temporal_stride x spatial_stride^2`` block becomes a
        channel: ``3 * temporal_stride * spatial_stride^2`` latent channels."""
        return AutoencoderGeometry(stride_t=self.temporal_stride, stride_hw=self.spatial_stride,
                                   latent_channels=3 * self.temporal_stride * self.spatial_stride ** 2)


def build(config: PixelConfig, *, device: Any = None, dtype: Any = None, **_: Any) -> Any:
    """Build the parameter-free pixel autoencoder (``device`` is irrelevant; ``dtype`` sets its output dtype)."""
    from osctl.utils.dtypes import torch_dtype as resolve_dtype
    from osctl_builtin.autoencoders.pixel.model import PixelAutoencoder

    if config.scale == 0:
        raise osctl.ConfigError("autoencoder.scale: 0 is not allowed (decode divides by it); use e.g. 1.0.")
    try:
        torch_dtype = resolve_dtype(dtype)
    except ValueError as exc:
        raise osctl.ConfigError(f"autoencoder dtype: {exc}") from None
    return PixelAutoencoder(spatial_stride=config.spatial_stride, temporal_stride=config.temporal_stride,
                            scale=config.scale, shift=config.shift, dtype=torch_dtype)


@osctl.hookimpl
def register_autoencoders(register: Any) -> None:
    """Register the pixel autoencoder."""
    register(osctl.ComponentSpec(
        name="pixel",
        summary="lossless space-to-depth pixel 'autoencoder' (no weights), for tiny CPU demos",
        factory=build,
        config=PixelConfig,
    ))
