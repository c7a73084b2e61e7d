"""The latent geometry: its arithmetic, the join of the two halves, and the words for sizes it cannot make."""

from __future__ import annotations

import pytest

from osctl.errors import ConfigError
from osctl.geometry import AutoencoderGeometry, LatentGeometry, ModelGeometry, latent_geometry
from tests.geometry_helpers import V13


def test_v13_shapes_and_tokens() -> None:
    assert V13.hw_unit == 16
    assert V13.latent_shape(93, 352, 640) == (24, 44, 80)
    assert V13.tokens(93, 352, 640) == 24 * 22 * 40
    assert V13.tokens(1, 480, 640) == 30 * 40
    assert V13.frames_for(24) == 93 and V13.latent_frames(93) == 24
    assert [f for f in range(1, 20) if V13.valid_frames(f)] == [1, 5, 9, 13, 17]


def test_a_coarser_geometry_changes_every_number() -> None:
    g = LatentGeometry(stride_t=8, stride_hw=16, latent_channels=16, patch_t=1, patch_hw=1)
    assert g.hw_unit == 16 and g.tokens(17, 64, 32) == 3 * 4 * 2
    assert [f for f in range(1, 30) if g.valid_frames(f)] == [1, 9, 17, 25]


def test_join_refuses_channels_that_do_not_fit() -> None:
    ae = AutoencoderGeometry(stride_t=4, stride_hw=8, latent_channels=384)
    model = ModelGeometry(patch_t=1, patch_hw=2, in_channels=192, out_channels=192)
    with pytest.raises(ConfigError, match="model 'm' has in_channels 192 but autoencoder 'pixel' makes latents "
                                          "with 384 channels"):
        latent_geometry(ae, model, autoencoder_name="pixel", model_name="m")
    fits = ModelGeometry(patch_t=1, patch_hw=2, in_channels=384, out_channels=384)
    assert latent_geometry(ae, fits).as_dict() == {"stride_t": 4, "stride_hw": 8, "latent_channels": 384,
                                                   "patch_t": 1, "patch_hw": 2}


def test_size_problems_name_the_nearest_sizes() -> None:
    assert V13.size_problems(num_frames=93, height=352, width=640) == []
    assert V13.size_problems(num_frames=30, height=18) == [
        ("num_frames", "must be 4k+1 (the autoencoder compresses time 4x with a causal first frame), got 30; "
                       "use 29 or 33"),
        ("height", "must be a multiple of 16 (autoencoder stride 8 x patch size 2), got 18; use 16 or 32"),
    ]
    coarse = LatentGeometry(stride_t=8, stride_hw=16, latent_channels=3, patch_t=1, patch_hw=1)
    assert coarse.size_problems(num_frames=13)[0][1].startswith("must be 8k+1 (the autoencoder compresses time 8x")


def test_describe_for_plans() -> None:
    assert V13.describe() == ("autoencoder 4x8x8 (8 latent channels), patch 1x2x2: 4k+1 frames, sizes in multiples "
                              "of 16")
