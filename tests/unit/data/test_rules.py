"""Pure frame and resolution rules against hand-worked examples and numpy.arange."""

from __future__ import annotations

import random

import numpy as np
import pytest

from osctl.data.rules import (
    FrameCountError,
    FrameRules,
    ResolutionRules,
    build_frame_indices,
    candidate_indices,
    count_candidates,
    resample_interval,
    sample_frame_indices,
    short_drop_draws,
    size_absolute,
    size_area,
    size_force,
    snap_frame_count,
    temporal_crop_begins,
    too_long_mask,
)


def test_count_candidates_matches_numpy_arange_exactly() -> None:
    rng = np.random.default_rng(0)
    fps = rng.choice([8, 12, 15.95, 16, 23.976, 24, 25, 29.97, 30, 50, 59.94, 60, 7.3, 144.0], 4000)
    train = rng.choice([12.5, 16, 24, 30], 4000)
    start = rng.integers(0, 1000, 4000)
    span = rng.integers(0, 2000, 4000)
    got = count_candidates(start, span, resample_interval(fps, train))
    want = [len(candidate_indices(int(s), int(n), float(f), float(t))) for s, n, f, t in zip(start, span, fps, train, strict=True)]
    assert got.tolist() == want


def test_resampling_examples() -> None:
    assert candidate_indices(0, 10, 30, 16).tolist() == [0, 1, 3, 5, 7, 9]  # every 1.875th frame
    assert candidate_indices(5, 4, 12, 16).tolist() == [5, 5, 6, 7, 8, 8]  # 12 fps repeats frames
    assert candidate_indices(3, 5, 16.05, 16).tolist() == [3, 4, 5, 6, 7]  # within 0.1 fps: no resampling


@pytest.mark.parametrize(("count", "sp", "min_frames", "want"), [
    (93, 1, 29, 93), (100, 1, 29, 97), (29, 1, 29, 29), (28, 1, 29, -1), (61, 2, 29, 61), (64, 2, 29, 61),
    (93, 8, 29, 93), (92, 8, 29, 61), (60, 8, 29, 29), (1, 1, 29, -1), (1, 1, 1, 1), (20, 1, 1, 17), (0, 1, 1, -1), (31, 1, 30, -1),
])
def test_snap_to_4k_plus_1(count: int, sp: int, min_frames: int, want: int) -> None:
    assert int(snap_frame_count(count, stride_t=4, sp_size=sp, min_frames=min_frames)) == want


@pytest.mark.parametrize(("count", "sp", "want"), [(93, 1, 89), (100, 1, 97), (16, 1, 9), (8, 1, -1), (33, 2, 25),
                                                   (40, 4, 25), (24, 4, -1)])
def test_snap_follows_the_autoencoders_temporal_stride(count: int, sp: int, want: int) -> None:
    """An 8x temporal autoencoder: 8k+1 frames whose latent length (k + 1) divides sp_size."""
    assert int(snap_frame_count(count, stride_t=8, sp_size=sp, min_frames=9)) == want


def test_too_long_uses_factor_and_speed() -> None:
    rules = FrameRules(num_frames=93, train_fps=16, speed_factor=1.0, too_long_factor=5.0)
    limit = 5 * 93 * 30 / 16  # 871.875 source frames at 30 fps
    assert too_long_mask(np.array([871, 872]), np.array([30.0, 30.0]), rules).tolist() == [False, True]
    faster = FrameRules(num_frames=93, train_fps=16, speed_factor=1.5, too_long_factor=5.0)
    assert not too_long_mask(np.array([int(limit) + 1]), np.array([30.0]), faster)[0]


def test_area_mode_examples() -> None:
    rules = ResolutionRules(mode="area", max_hxw=236544, min_hxw=59136, hw_stride=32)
    h, w = size_area(np.array([720, 300, 2160]), np.array([1280, 400, 3840]), rules)
    assert list(zip(h.tolist(), w.tolist(), strict=True)) == [(352, 640), (288, 384), (352, 640)]  # never upscales


def test_force_mode_aspect_bounds() -> None:
    rules = ResolutionRules(mode="force", max_height=480, max_width=640, max_aspect=2.0)
    h, w, keep = size_force(np.array([480, 100, 1000, 600, 100]), np.array([640, 1000, 100, 1000, 267]), rules)
    assert keep.tolist() == [True, False, False, True, False]  # h/w within [0.375, 1.5]
    assert set(h.tolist()) == {480} and set(w.tolist()) == {640}


def test_absolute_mode_fits_the_box_without_upscaling() -> None:
    rules = ResolutionRules(mode="absolute", max_height=480, max_width=640, min_height=240, min_width=320, hw_stride=32)
    h, w = size_absolute(np.array([720, 1000, 2000, 300, 1080]), np.array([1280, 1000, 1000, 400, 1920]), rules)
    assert list(zip(h.tolist(), w.tolist(), strict=True)) == [(352, 640), (480, 480), (480, 224), (288, 384), (352, 640)]
    h, w = size_absolute(np.array([1000]), np.array([1601]), ResolutionRules(mode="absolute", max_height=480, max_width=640, hw_stride=1))
    assert (int(h[0]), int(w[0])) == (399, 640)  # integer arithmetic: the limiting side is exact


def test_reference_speed_rounding_and_the_osctl_fix() -> None:
    # reference §2.3: N=200 at 30 fps, train_fps 16, num_frames 93, speed 1.5 -> int(107 / (107/93)) = 92 -> 89 != 93
    args = {"num_frames": 93, "train_fps": 16, "expected_frames": 93, "speed_factor": 1.5, "stride_t": 4}
    with pytest.raises(FrameCountError, match="89 frames"):
        sample_frame_indices(30, 0, 200, rng=random.Random(0), reference_quirks=True, **args)  # type: ignore[arg-type]
    frames = sample_frame_indices(30, 0, 200, rng=random.Random(0), **args)  # type: ignore[arg-type]
    assert len(frames) == 93 and (np.diff(frames) >= 0).all()


def test_read_time_sampling_is_reproducible_and_in_range() -> None:
    for seed in range(20):
        a = sample_frame_indices(25, 10, 400, num_frames=61, train_fps=16, expected_frames=61, rng=random.Random(seed),
                                 stride_t=4)
        b = sample_frame_indices(25, 10, 400, num_frames=61, train_fps=16, expected_frames=61, rng=random.Random(seed),
                                 stride_t=4)
        assert a.tolist() == b.tolist() and len(a) == 61 and a.min() >= 10 and a.max() < 410
    with pytest.raises(FrameCountError, match="shorter than num_frames"):
        sample_frame_indices(16, 0, 40, num_frames=61, train_fps=16, expected_frames=37, rng=random.Random(0),
                             stride_t=4)


def test_temporal_crop_draws_follow_python_random() -> None:
    counts = np.array([100, 50, 0, 200, 93])
    rng = random.Random(1234)
    want = [rng.randint(0, 100 - 93 - 1), -1, -1, rng.randint(0, 200 - 93 - 1), -1]
    assert temporal_crop_begins(counts, 93, 1234).tolist() == want
    begins = temporal_crop_begins(np.full(2000, 95), 93, 7, reference_window=False)
    assert set(begins.tolist()) == {0, 1, 2}
    assert set(temporal_crop_begins(np.full(2000, 95), 93, 7).tolist()) == {0, 1}  # the reference never picks 2
    assert build_frame_indices(0, 10, 30, 16, 2, 3).tolist() == [3, 5, 7]


def test_short_drop_draws_are_seeded() -> None:
    assert short_drop_draws(5, 42).tolist() == short_drop_draws(5, 42).tolist()
    assert short_drop_draws(5, 42).tolist() != short_drop_draws(5, 43).tolist()
