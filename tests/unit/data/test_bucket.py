"""Drop reasons, buckets, the minority rule and the batch arithmetic of `osctl data bucket`."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from osctl.data.annotations import read_annotations
from osctl.data.bucket import BucketSettings, Reason, ScoreFilters, build_buckets
from osctl.data.datatxt import load_data_txt
from osctl.data.rules import FrameRules, ResolutionRules
from osctl.parallel.layout import ParallelLayout
from tests.geometry_helpers import V13

VIDEO = {"cap": "a clip", "resolution": {"height": 720, "width": 1280}, "num_frames": 100, "fps": 16}
IMAGE = {"cap": "a photo", "resolution": {"height": 720, "width": 1280}}

CASES: list[tuple[dict[str, Any], Reason]] = [
    ({**VIDEO, "path": "ok.mp4"}, Reason.KEPT),
    ({**VIDEO, "path": "bad.mp4", "resolution": {"height": "720", "width": 1280}}, Reason.INVALID_RECORD),
    ({**VIDEO}, Reason.NO_PATH),
    ({**VIDEO, "path": "clip.gif"}, Reason.UNKNOWN_EXTENSION),
    ({**VIDEO, "path": "nocap.mp4", "cap": None}, Reason.NO_CAPTION),
    ({**VIDEO, "path": "blank.mp4", "cap": ["fine", "  "]}, Reason.NO_CAPTION),
    ({**VIDEO, "path": "nores.mp4", "resolution": {"width": 1280}}, Reason.NO_RESOLUTION),
    ({**VIDEO, "path": "zero.mp4", "resolution": {"height": 0, "width": 1280}}, Reason.NO_RESOLUTION),
    ({**VIDEO, "path": "nonf.mp4", "num_frames": None}, Reason.NO_NUM_FRAMES),
    ({**VIDEO, "path": "nofps.mp4", "fps": None}, Reason.NO_FPS),
    ({**VIDEO, "path": "cut.mp4", "cut": [50, 20]}, Reason.BAD_CUT),
    ({**VIDEO, "path": "cut2.mp4", "cut": [0, 101]}, Reason.BAD_CUT),
    ({**VIDEO, "path": "crop.mp4", "crop": [0, 1300, 0, 720]}, Reason.BAD_CROP),
    ({**VIDEO, "path": "ugly.mp4", "aesthetic": 3.0}, Reason.LOW_AESTHETIC),
    ({**VIDEO, "path": "ugly2.mp4", "aes": 3.5}, Reason.LOW_AESTHETIC),
    ({**VIDEO, "path": "blurry.mp4", "tech": 0.1}, Reason.LOW_TECH),
    ({**VIDEO, "path": "shaky.mp4", "motion": 0.9}, Reason.MOTION_OUT_OF_RANGE),
    ({**VIDEO, "path": "thin.mp4", "resolution": {"height": 20, "width": 2000}}, Reason.SIZE_ZERO),
    ({**VIDEO, "path": "small.mp4", "resolution": {"height": 200, "width": 300}}, Reason.TOO_SMALL),
    ({**VIDEO, "path": "wide.mp4", "resolution": {"height": 300, "width": 1500}}, Reason.ASPECT),
    ({**VIDEO, "path": "long.mp4", "num_frames": 1000}, Reason.TOO_LONG),
    ({**VIDEO, "path": "short.mp4", "num_frames": 20}, Reason.SHORT_DROPPED),
    ({**VIDEO, "path": "square.mp4", "resolution": {"height": 512, "width": 512}}, Reason.MINORITY_BUCKET),
    ({**IMAGE, "path": "photo.JPG"}, Reason.KEPT),
]

SETTINGS = BucketSettings(
    frames=FrameRules(num_frames=29, train_fps=16, drop_short_ratio=1.0),
    resolution=ResolutionRules(mode="area", max_hxw=262144, min_hxw=65536, hw_stride=32),
    filters=ScoreFilters(min_aesthetic=4.0, min_tech=0.5, max_motion=0.5),
    min_bucket_batches=4,
    geometry=V13,
)


def _build(make_data: Any, records: list[Any], settings: BucketSettings = SETTINGS, **kw: Any):  # type: ignore[no-untyped-def]
    loaded = read_annotations(load_data_txt(make_data({"a.json": records})))
    return build_buckets(loaded, settings, **kw)


def test_every_reason_in_order(make_data: Any) -> None:
    records = [r for r, _ in CASES] + [{**VIDEO, "path": f"ok{i}.mp4"} for i in range(3)] + [
        {**IMAGE, "path": f"p{i}.png"} for i in range(3)]
    result = _build(make_data, records)
    reasons = result.outcomes[0].reason[: len(CASES)]
    assert [Reason(r).name for r in reasons] == [why.name for _, why in CASES]
    assert [(b.key, b.count) for b in result.buckets] == [("1x384x672", 4), ("29x384x672", 4)]
    assert result.minority == [("29x512x512", 1)]
    assert result.reason_counts()["kept"] == 8
    assert result.n_kept == 8 and result.n_records == len(records)


def test_probabilistic_short_drop_is_seeded(make_data: Any) -> None:
    records = [{**VIDEO, "path": f"s{i}.mp4", "num_frames": 20} for i in range(200)]
    settings = dataclasses.replace(SETTINGS, min_bucket_batches=0,
                                   frames=FrameRules(num_frames=61, train_fps=16, drop_short_ratio=0.5, seed=7))
    first = _build(make_data, records, settings).outcomes[0].reason
    again = _build(make_data, records, settings).outcomes[0].reason
    assert first.tolist() == again.tolist()
    dropped = int((first == Reason.SHORT_DROPPED).sum())
    assert 70 < dropped < 130
    # the survivors have 20 candidate frames, fewer than min_frames 29: too short after snapping
    assert set(first[first != Reason.SHORT_DROPPED].tolist()) == {Reason.TOO_SHORT}
    other = dataclasses.replace(settings, frames=dataclasses.replace(settings.frames, seed=8))
    assert _build(make_data, records, other).outcomes[0].reason.tolist() != first.tolist()
    keep = dataclasses.replace(settings, frames=dataclasses.replace(settings.frames, min_frames=17))
    kept = _build(make_data, records, keep)
    assert {b.key for b in kept.buckets} == {"17x384x672"}


def test_compatibility_switches(make_data: Any) -> None:
    records = [{**VIDEO, "path": "nofps.mp4", "fps": None}, {**VIDEO, "path": "empty.mp4", "cap": ""},
               {**VIDEO, "path": "crop.mp4", "crop": [0, 640, 0, 720]}]
    loose = dataclasses.replace(SETTINGS, min_bucket_batches=0, keep_empty_captions=True,
                                frames=dataclasses.replace(SETTINGS.frames, default_fps=24.0))
    result = _build(make_data, records, loose)
    assert (result.outcomes[0].reason == Reason.KEPT).all()
    o = result.outcomes[0]
    assert (int(o.h[2]), int(o.w[2])) == (512, 480)  # sized from the 640x720 crop box
    reference = dataclasses.replace(loose, resolution=dataclasses.replace(loose.resolution, crop_before_sizing=False))
    o = _build(make_data, records, reference).outcomes[0]
    assert (int(o.h[2]), int(o.w[2])) == (384, 672)  # sized from the full frame, as the reference does
    strict = dataclasses.replace(SETTINGS, min_bucket_batches=0)
    assert _build(make_data, records, strict).outcomes[0].reason.tolist() == [Reason.NO_FPS, Reason.NO_CAPTION, Reason.KEPT]


@pytest.mark.parametrize(("group", "batches", "lost"), [(True, 2 + 1, 2 + 2), (False, 13 // 3, 13 % 3)])
def test_batches_per_epoch_and_rounding(make_data: Any, group: bool, batches: int, lost: int) -> None:
    records = [{**VIDEO, "path": f"v{i}.mp4"} for i in range(8)] + [{**IMAGE, "path": f"i{i}.jpg"} for i in range(5)]
    records.append({**VIDEO, "path": "odd.mp4", "resolution": {"height": 512, "width": 512}})
    settings = dataclasses.replace(SETTINGS, min_bucket_batches=1, group_data=group,
                                   layout=ParallelLayout(stream_batch=3))
    result = _build(make_data, records, settings)
    assert settings.layout.global_batch == 3 and settings.minority_threshold == 3
    assert [(b.key, b.count, b.batches, b.lost) for b in result.buckets] == [("29x384x672", 8, 2, 2), ("1x384x672", 5, 1, 2)]
    assert result.minority == [("29x512x512", 1)]
    assert result.n_kept == 13
    assert (result.batches_per_epoch, result.samples_lost) == (batches, lost)


def test_global_batch_is_the_layouts() -> None:
    # was the reference's `train_batch_size x world x accumulation // sp x train_sp_batch_size` (32 here):
    # 2 SP groups of 4 ranks, each sharing a batch of 2, x 2 accumulation = 8 samples per optimizer step
    layout = ParallelLayout(world_size=8, sp_size=4, stream_batch=2, grad_accum=2)
    assert layout.global_batch == 8
    settings = dataclasses.replace(SETTINGS, frames=dataclasses.replace(SETTINGS.frames, sp_size=4), layout=layout,
                                   min_bucket_batches=2)
    assert settings.minority_threshold == 16


def test_settings_from_recipe(tmp_path: Path) -> None:
    from osctl.recipe.load import load_recipe

    recipe = tmp_path / "r.yaml"
    recipe.write_text("data:\n  max_hxw: 262144\n  num_frames: 61\n  min_bucket_batches: 2\n"
                      "train:\n  train_batch_size: 2\n  gradient_accumulation_steps: 3\n"
                      "parallel:\n  nproc_per_node: 4\n  nnodes: 2\n  sp_size: 2\n")
    settings = BucketSettings.from_recipe(load_recipe(recipe, []).recipe, geometry=V13)
    # 8 ranks in SP groups of 2 = 4 replicas x train_sp_batch_size 1 x 3 accumulation (not the reference's 24)
    assert settings.layout.world_size == 8 and settings.layout.global_batch == 4 * 1 * 3
    assert settings.minority_threshold == 24
    assert settings.resolution.mode == "area" and settings.resolution.min_hxw == 65536
    assert BucketSettings.from_recipe(load_recipe(recipe, []).recipe, geometry=V13,
                                      world_size=2).layout.world_size == 2
    assert settings.geometry == V13 and settings.shaping_fields()["geometry"] == V13.as_dict()
    assert np.isclose(settings.frames.train_fps, 24.0)


def test_media_kinds_match_the_per_path_rule() -> None:
    import pyarrow as pa

    from osctl.data.bucket import media_kinds
    from osctl.data.records import media_kind

    paths = ["a.mp4", "b.JPG", "c.MoV", "d", "e.x/y", "f.png", "g.webm", "h.mp4.txt", "dir.d/x", "i.JpEg", "j.bmp",
             "k.avi", "l.mkv", "m.webp", ".mp4"]
    assert media_kinds(pa.array(paths)).tolist() == [media_kind(p) for p in paths]


def _mixed(n: int, seed: int) -> list[Any]:
    """Videos and images of varied sizes, lengths, frame rates and defects (for part/thread equivalence)."""
    rng = np.random.default_rng(seed)
    out: list[Any] = []
    for i in range(n):
        h, w = int(rng.integers(100, 2200)), int(rng.integers(100, 2200))
        if i % 4 == 0:
            rec: Any = {**IMAGE, "path": f"i{i}.png", "resolution": {"height": h, "width": w}}
        else:
            nf = int(rng.integers(10, 600))
            rec = {**VIDEO, "path": f"v{i}.mp4", "resolution": {"height": h, "width": w}, "num_frames": nf,
                   "fps": float(rng.choice([16, 24, 29.97, 60]))}
            if i % 5 == 0:
                rec["cut"] = [3, 3 + nf]
            if i % 9 == 0:
                rec["aesthetic"] = float(rng.uniform(3, 7))
        if i % 17 == 0:
            rec["resolution"] = {"height": "tall", "width": w}
        if i % 23 == 0:
            rec["cap"] = None
        if i == 31:
            rec = 5
        out.append(rec)
    return out


@pytest.mark.parametrize("ratio", [1.0, 0.5, 0.0])
def test_rules_in_parts_and_threads_give_the_whole_file_outcome(make_data: Any, monkeypatch: pytest.MonkeyPatch,
                                                                ratio: float) -> None:
    """Parts of any size, on any number of threads, across several files: the same outcome, draws included."""
    import osctl.data.bucket as bucket

    settings = dataclasses.replace(SETTINGS, min_bucket_batches=1, filters=ScoreFilters(min_aesthetic=4.5),
                                   frames=FrameRules(num_frames=29, train_fps=16, drop_short_ratio=ratio, seed=3))
    data_txt = make_data({"a.json": _mixed(700, 1), "b.json": _mixed(5, 2), "c.json": [], "d.json": _mixed(333, 4)})
    loaded = read_annotations(load_data_txt(data_txt))
    whole = build_buckets(loaded, settings, threads=1)
    for rows, threads in ((64, 1), (64, 3), (7, 8), (1000, 2)):
        monkeypatch.setattr(bucket, "RULE_PART_ROWS", rows)
        parts = build_buckets(loaded, settings, threads=threads)
        for a, b in zip(whole.outcomes, parts.outcomes, strict=True):
            assert a is not None and b is not None
            for name in ("reason", "kind", "t", "h", "w", "start", "span", "n_candidates", "bucket"):
                assert np.array_equal(getattr(a, name), getattr(b, name)), name
                assert getattr(a, name).dtype == getattr(b, name).dtype, name
            assert np.array_equal(a.fps, b.fps, equal_nan=True)
        assert parts.buckets == whole.buckets and parts.minority == whole.minority
    assert whole.reason_counts()["invalid_record"] > 0 and whole.n_kept > 0
    if 0 < ratio < 1:
        assert whole.reason_counts()["short_dropped"] > 0


def test_a_table_part_shares_columns_and_shifts_issues(make_data: Any) -> None:
    table = read_annotations(load_data_txt(make_data({"a.json": _mixed(120, 5)})))[0].table
    assert table is not None
    part = table.rows(30, 80)
    assert part.n == 50 and part.path.to_pylist() == table.path.to_pylist()[30:80]
    assert part.cap_json is not None and part.cap_json.to_pylist() == table.cap_json.to_pylist()[30:80]
    assert np.shares_memory(part.height, table.height) and np.array_equal(part.crop, table.crop[30:80], equal_nan=True)
    assert [(i + 30, x) for i, x in part.issues] == [(i, x) for i, x in table.issues if 30 <= i < 80]
    assert part.invalid_mask.tolist() == table.invalid_mask[30:80].tolist()
