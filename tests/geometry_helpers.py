"""Latent geometries for tests that build data or sampling settings by hand (runs get theirs from the
recipe check: ``CheckedRecipe.geometry``)."""

from __future__ import annotations

from osctl.geometry import LatentGeometry

V13 = LatentGeometry(stride_t=4, stride_hw=8, latent_channels=8, patch_t=1, patch_hw=2)
"""Open-Sora-Plan v1.3: the WF-VAE (4x time, 8x8 space, 8 latent channels) under the transformer's 1x2x2 patches."""


def v13_with(**changes: int) -> LatentGeometry:
    """The v1.3 geometry with some numbers changed (e.g. ``stride_t=8``)."""
    return LatentGeometry(**{**V13.as_dict(), **changes})
