"""The lossless pixel autoencoder: exact round trips, stride-following shapes, clear shape errors."""

from __future__ import annotations

import pytest
import torch

import osctl
from osctl.geometry import AutoencoderGeometry
from osctl.plugin_manager import build_registry, new_plugin_manager
from osctl.protocols import Autoencoder
from osctl_builtin.autoencoders.pixel.model import PixelAutoencoder


@pytest.fixture(scope="module")
def registry():
    return build_registry(new_plugin_manager())


def video(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed)) * 2 - 1


@pytest.mark.parametrize("stride", [4, 8])
@pytest.mark.parametrize("shape", [(1, 3, 1, 16, 16), (2, 3, 9, 16, 16), (1, 3, 17, 8, 24), (1, 3, 5, 32, 8)])
def test_round_trip_is_bitwise_exact_and_shapes_follow_strides(registry, stride, shape):
    ae = registry.build("autoencoder", "pixel", {"spatial_stride": stride})
    assert isinstance(ae, Autoencoder) and isinstance(ae, torch.nn.Module)
    x = video(*shape)
    z = ae.encode(x)
    b, _, t, h, w = shape
    assert z.shape == (b, 3 * 4 * stride * stride, (t - 1) // 4 + 1, h // stride, w // stride)
    assert ae.latent_channels == z.shape[1] and (ae.spatial_stride, ae.temporal_stride) == (stride, 4)
    assert torch.equal(ae.decode(z), x)


def test_first_frame_group_is_padded_by_repetition():
    ae = PixelAutoencoder(spatial_stride=2, temporal_stride=4)
    x = video(1, 3, 5, 4, 4)
    z = ae.encode(x).reshape(1, 3, 4, 2, 2, 2, 2, 2)  # B x C x k x s x s x t x h x w
    for copy in range(4):
        assert torch.equal(z[:, :, copy, :, :, 0], z[:, :, 3, :, :, 0])
    # the second latent frame holds frames 1..4 in order
    frames = ae.decode(ae.encode(x))
    assert torch.equal(frames[:, :, 1:], x[:, :, 1:])


def test_other_strides_and_normalisation(registry):
    x = video(1, 3, 7, 6, 9)
    ae = PixelAutoencoder(spatial_stride=3, temporal_stride=2, scale=2.0)
    z = ae.encode(x)
    assert z.shape == (1, 3 * 2 * 9, 4, 2, 3) and torch.equal(ae.decode(z), x)
    assert torch.equal(z.abs().max(), 2 * x.abs().max())
    lossy = registry.build("autoencoder", "pixel", {"scale": 0.18215, "shift": 0.1})
    x = video(1, 3, 5, 16, 16)
    torch.testing.assert_close(lossy.decode(lossy.encode(x)), x, atol=1e-6, rtol=0)


def test_sampling_options_are_ignored_and_use_no_rng(registry):
    ae = registry.build("autoencoder", "pixel", {})
    x = video(1, 3, 5, 16, 16)
    torch.manual_seed(1)
    a = ae.encode(x, sample=True, generator=torch.Generator().manual_seed(3))
    b = ae.encode(x, sample=False)
    assert torch.equal(a, b)
    assert torch.equal(torch.randn(3), torch.manual_seed(1) and torch.randn(3))


def test_dtype_runtime_argument(registry):
    ae = registry.build("autoencoder", "pixel", {"spatial_stride": 4}, dtype="bf16")
    z = ae.encode(video(1, 3, 5, 8, 8))
    assert z.dtype == torch.bfloat16 and ae.decode(z).dtype == torch.bfloat16


@pytest.mark.parametrize("shape, match", [
    ((1, 3, 8, 16, 16), r"num_frames 8 is not 4k\+1; use 5 or 9"),
    ((1, 3, 9, 12, 16), "height 12 is not a multiple of spatial_stride 8"),
    ((1, 3, 9, 16, 20), "width 20 is not a multiple of spatial_stride 8"),
    ((1, 4, 9, 16, 16), "B x 3 x T x H x W"),
    ((3, 9, 16, 16), "B x 3 x T x H x W"),
])
def test_bad_shapes_raise_a_clear_error(registry, shape, match):
    ae = registry.build("autoencoder", "pixel", {})
    with pytest.raises(ValueError, match=match):
        ae.encode(torch.zeros(shape))


def test_bad_latents_and_config(registry):
    ae = registry.build("autoencoder", "pixel", {"spatial_stride": 4})
    with pytest.raises(ValueError, match="B x 192 x t x h x w"):
        ae.decode(torch.zeros(1, 8, 2, 2, 2))
    config = registry.make_config("autoencoder", "pixel", {"spatial_stride": 4}, where="autoencoder")
    assert config.autoencoder_geometry() == AutoencoderGeometry(stride_t=4, stride_hw=4, latent_channels=192)
    assert ae.latent_channels == 192  # what the built autoencoder makes is what its config declares
    with pytest.raises(osctl.ConfigError, match="unknown key"):
        registry.make_config("autoencoder", "pixel", {"stride": 4}, where="autoencoder")
    with pytest.raises(osctl.ConfigError, match="scale"):
        registry.build("autoencoder", "pixel", {"scale": 0.0})
