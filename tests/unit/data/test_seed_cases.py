"""The seed document's recipes (Cases 1-3 and a combination) on a generated mix of sizes, durations and fps."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from osctl.data.annotations import read_annotations
from osctl.data.bucket import BucketResult, BucketSettings, Reason, build_buckets
from osctl.data.datatxt import load_data_txt
from osctl.plugin_manager import default_registry
from osctl.recipe.load import load_recipe
from osctl.recipe.validate import recipe_geometry

SIZES = [(720, 1280), (1080, 1920), (480, 640), (480, 854), (360, 640), (1920, 1080), (512, 512), (2160, 3840),
         (240, 320), (1024, 768), (100, 1000), (64, 64), (1280, 720)]
FPS = [8, 12, 15.95, 16, 23.976, 24, 25, 29.97, 30, 50, 60]


def _records(n: int = 3000) -> list[dict[str, Any]]:
    rng = np.random.default_rng(3)
    out = []
    for i in range(n):
        h, w = SIZES[rng.integers(len(SIZES))]
        if rng.random() < 0.25:
            out.append({"path": f"img/{i}.jpg", "cap": f"image {i}", "resolution": {"height": h, "width": w}})
        else:
            frames = int(rng.integers(10, 1500))
            out.append({"path": f"vid/{i}.mp4", "cap": f"video {i}", "resolution": {"height": h, "width": w},
                        "num_frames": frames, "fps": float(FPS[rng.integers(len(FPS))]), "cut": [0, frames]})
    return out


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """The generated annotations, read once for every case."""
    folder = tmp_path_factory.mktemp("seed")
    (folder / "anno.json").write_text(json.dumps(_records()))
    (folder / "data.txt").write_text(f"{folder / 'media'},anno.json\n")
    return read_annotations(load_data_txt(folder / "data.txt"))


def _bucket(loaded: Any, tmp_path: Path, yaml: str) -> tuple[BucketResult, BucketSettings]:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml)
    loaded_recipe = load_recipe(recipe, [])
    settings = BucketSettings.from_recipe(loaded_recipe.recipe,
                                          geometry=recipe_geometry(loaded_recipe, default_registry()))
    return build_buckets(loaded, settings), settings


def _videos(result: BucketResult) -> list[Any]:
    return [b for b in result.buckets if b.t > 1]


def test_case1_fixed_480p_93_frames(loaded: Any, tmp_path: Path) -> None:
    result, _ = _bucket(loaded, tmp_path, """
data: {max_height: 480, max_width: 640, force_resolution: true, num_frames: 93, drop_short_ratio: 1.0, train_fps: 16}
""")
    assert {b.key for b in result.buckets} == {"93x480x640", "1x480x640"}
    reasons = result.reason_counts()
    assert reasons["kept"] == result.n_kept > 1000
    assert reasons["short_dropped"] > 0 and reasons["too_long"] > 0 and reasons["aspect"] > 0
    assert "too_short" not in reasons and "minority_bucket" not in reasons


def test_case2_variable_duration(loaded: Any, tmp_path: Path) -> None:
    result, settings = _bucket(loaded, tmp_path, """
data: {max_height: 480, max_width: 640, force_resolution: true, num_frames: 93, drop_short_ratio: 0.0,
       group_data: true, train_fps: 16}
train: {train_batch_size: 2}
""")
    frames = sorted({b.t for b in _videos(result)})
    assert frames[-1] == 93 and frames[0] >= 29 and len(frames) >= 5
    assert all((t - 1) % 4 == 0 for t in frames)
    rare = {int(key.split("x")[0]) for key, _ in result.minority}  # lengths too rare for 4 global batches
    assert len(set(frames) | rare) > 10
    assert "short_dropped" not in result.reason_counts() and result.reason_counts()["too_short"] > 0
    assert settings.group_data and result.batches_per_epoch == sum(b.count // 2 for b in result.buckets)
    assert result.samples_lost == sum(b.count % 2 for b in result.buckets)


def test_case3_area_bounded(loaded: Any, tmp_path: Path) -> None:
    result, _ = _bucket(loaded, tmp_path, """
data: {max_hxw: 262144, min_hxw: 65536, group_data: true, num_frames: 61, drop_short_ratio: 0.0}
""")
    assert len(result.buckets) > 5
    for b in result.buckets:
        assert 65536 <= b.h * b.w <= 262144 and b.h % 32 == 0 and b.w % 32 == 0 and 0.5 <= b.h / b.w <= 2
    assert result.reason_counts()["too_small"] > 0  # 64x64 and 240x320 sources


def test_case3_absolute_box(loaded: Any, tmp_path: Path) -> None:
    result, settings = _bucket(loaded, tmp_path, """
data: {max_height: 480, max_width: 640, min_height: 240, min_width: 320, group_data: true, num_frames: 61,
       drop_short_ratio: 0.0}
""")
    assert settings.resolution.mode == "absolute"
    shapes = {(b.h, b.w) for b in result.buckets}
    assert (352, 640) in shapes and (480, 480) in shapes  # 720p landscape; 1024x768 fits by height
    for b in result.buckets:
        assert 240 <= b.h <= 480 and 320 <= b.w <= 640 and b.h % 32 == 0 and b.w % 32 == 0
    assert result.reason_counts()["too_small"] > 0


def test_combined_recipe(loaded: Any, tmp_path: Path) -> None:
    result, settings = _bucket(loaded, tmp_path, """
data: {max_hxw: 236544, min_hxw: 102400, num_frames: 93, drop_short_ratio: 0.0, group_data: true, hw_stride: 32,
       train_fps: 16, speed_factor: 1.5, min_bucket_batches: 2}
train: {train_batch_size: 4}
parallel: {sp_size: 2, nproc_per_node: 4, train_sp_batch_size: 4}
""")
    # 2 SP groups sharing a batch of 4 each (train_batch_size is the per-rank batch without SP only)
    assert settings.layout.global_batch == 4 * 4 // 2 and settings.minority_threshold == 16
    for b in _videos(result):
        assert ((b.t - 1) // 4 + 1) % 2 == 0  # latent frames divide by sp_size
        assert 102400 <= b.h * b.w <= 236544
    assert all(b.count >= 16 for b in result.buckets)
    assert result.reason_counts().get(Reason.MINORITY_BUCKET.code, 0) == sum(c for _, c in result.minority) > 0
