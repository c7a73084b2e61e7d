"""Crops, resizes and normalisation give every sample exactly its bucket's shape (reference §3)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from osctl.data.rules import ResolutionRules, size_absolute, size_area
from osctl.data.stream.transforms import (
    ShapeMismatch,
    apply_crop,
    force_crop_box,
    target_shape,
    to_training_tensor,
)

AREA = ResolutionRules(mode="area", max_hxw=236544, min_hxw=236544 // 4, hw_stride=32)
ABSOLUTE = ResolutionRules(mode="absolute", max_height=240, max_width=320, hw_stride=16)
FORCE = ResolutionRules(mode="force", max_height=48, max_width=64)


def _frames(t: int, h: int, w: int, value: int = 200) -> np.ndarray:
    return np.full((t, h, w, 3), value, dtype=np.uint8)


@pytest.mark.parametrize("rules", [AREA, ABSOLUTE])
def test_area_and_absolute_reproduce_the_index_bucket_for_many_sizes(rules):
    rng = np.random.default_rng(0)
    sizer = size_area if rules.mode == "area" else size_absolute
    sizes = [(720, 1280), (1080, 1920), (360, 640), (123, 457), (300, 300)]
    sizes += [(int(h), int(w)) for h, w in rng.integers(64, 900, (25, 2))]
    checked = 0
    for h, w in sizes:
        bh, bw = (int(v[0]) for v in sizer(np.array([h]), np.array([w]), rules))
        if bh <= 0 or bw <= 0:
            continue
        out = to_training_tensor(_frames(1, h, w), rules=rules, shape=(bh, bw))
        assert out.shape == (3, 1, bh, bw), (h, w)
        assert target_shape(h, w, rules) == (bh, bw)
        checked += 1
    assert checked > 20


def test_reference_example_720p_in_area_mode():
    # reference §3.1: 720x1280 with max_hxw 236544 -> 364x648 -> 352x640
    assert target_shape(720, 1280, AREA) == (352, 640)
    out = to_training_tensor(_frames(2, 720, 1280), rules=AREA, shape=(352, 640))
    assert out.shape == (3, 2, 352, 640)


def test_area_mode_never_upscales_and_center_crops_to_the_stride():
    frames = np.zeros((1, 70, 100, 3), dtype=np.uint8)
    frames[:, 3:67, 2:98] = 255  # the centred 64x96 window is white
    out = to_training_tensor(frames, rules=dataclasses.replace(AREA, max_hxw=10**6), shape=(64, 96))
    assert out.shape == (3, 1, 64, 96)
    assert torch.all(out == 1.0)  # exactly the centre window: (70-64)//2 = 3 rows, (100-96)//2 = 2 columns


def test_a_frame_that_resizes_elsewhere_is_a_mismatch():
    with pytest.raises(ShapeMismatch, match="not to the bucket's 352x640"):
        to_training_tensor(_frames(1, 480, 640), rules=AREA, shape=(352, 640))


def test_force_mode_crops_to_aspect_then_resizes_exactly():
    assert force_crop_box(100, 100, 48, 64) == (12, 0, 75, 100)  # wider target: keep width, cut rows
    assert force_crop_box(60, 200, 48, 64) == (0, 60, 60, 80)  # wider source: keep height, int(60 / 0.75) columns
    for h, w in [(100, 100), (60, 200), (48, 64), (1080, 1920), (31, 17)]:
        out = to_training_tensor(_frames(3, h, w, 51), rules=FORCE, shape=(48, 64))
        assert out.shape == (3, 3, 48, 64)
        assert torch.allclose(out, torch.full_like(out, 51 / 255 * 2 - 1), atol=1e-5)


def test_crop_box_is_applied_before_sizing():
    frames = np.zeros((2, 80, 120, 3), dtype=np.uint8)
    frames[:, 8:72, 20:100] = 255  # only the crop box is white
    crop = (20, 100, 8, 72)
    assert apply_crop(frames, crop).shape == (2, 64, 80, 3)
    out = to_training_tensor(frames, rules=dataclasses.replace(ABSOLUTE, max_height=64, max_width=80), shape=(64, 80),
                             crop=crop)
    assert torch.all(out == 1.0)
    with pytest.raises(ShapeMismatch, match="does not fit"):
        apply_crop(frames, (0, 130, 0, 10))


def test_layout_range_and_images():
    frames = np.stack([np.full((32, 32, 3), v, dtype=np.uint8) for v in (0, 255, 128)])
    frames[..., 1] = 0
    out = to_training_tensor(frames, rules=dataclasses.replace(AREA, hw_stride=16), shape=(32, 32))
    assert out.dtype == torch.float32 and out.shape == (3, 3, 32, 32)  # C x T x H x W
    assert out.min() >= -1 and out.max() <= 1
    assert out[0, 0].max() == -1 and out[0, 1].min() == 1 and torch.all(out[1] == -1)
    image = to_training_tensor(_frames(1, 40, 40), rules=FORCE, shape=(48, 64))
    assert image.shape == (3, 1, 48, 64)
