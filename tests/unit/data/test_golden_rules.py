"""Conformance with the reference (golden data-rules fixtures): every build setting, frame indices, error cases.

osctl reproduces the reference's index build exactly when three documented compatibility settings are
on (``default_fps: 24``, ``crop_before_sizing: false``, ``keep_empty_captions: true``); the tests at the
end show what osctl does by default instead, and what it does for each input that crashes the reference.
One label differs on purpose: in force mode a record with a zero height is counted by the reference as
an aspect-ratio mismatch (0 / w is outside the range) and by osctl as ``no_resolution``.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import random
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from osctl.data.annotations import read_annotations
from osctl.data.bucket import BucketResult, BucketSettings, Reason, build_buckets
from osctl.data.datatxt import load_data_txt, parse_data_txt
from osctl.data.index import write_index
from osctl.data.records import KIND_IMAGE, KIND_VIDEO
from osctl.data.rules import FrameCountError, FrameRules, ResolutionRules, sample_frame_indices
from osctl.data.table import LoadedAnnotation
from osctl.data.validate import validate_data
from osctl.errors import ConfigError, DataError
from osctl.parallel.layout import ParallelLayout
from tests.geometry_helpers import V13

GOLDEN_SEED = 1234
CHAR = {Reason.KEPT: "K", Reason.MINORITY_BUCKET: "K", Reason.NO_CAPTION: "c", Reason.NO_RESOLUTION: "r",
        Reason.TOO_LONG: "L", Reason.SHORT_DROPPED: "S", Reason.TOO_SHORT: "S", Reason.SIZE_ZERO: "z",
        Reason.TOO_SMALL: "m", Reason.ASPECT: "a"}


def _data_txt(golden: Path, folder: Path, name: str = "data.txt") -> Path:
    text = (golden / "data" / "annotations" / name).read_text()
    path = folder / name
    path.write_text(text.replace("{ANNOTATION_DIR}", str(golden / "data" / "annotations")))
    return path


@functools.cache
def _builds(golden: Path) -> dict[str, Any]:
    return json.loads((golden / "data" / "builds.json").read_text())


@functools.cache
def _loaded(golden: Path, folder: Path) -> list[LoadedAnnotation]:
    return read_annotations(load_data_txt(_data_txt(golden, folder)))


@pytest.fixture
def builds(golden: Path) -> dict[str, Any]:
    """builds.json, parsed once per session."""
    return _builds(golden)


@pytest.fixture
def loaded(golden: Path, tmp_path_factory: pytest.TempPathFactory) -> list[LoadedAnnotation]:
    """The golden annotations (anno_a.json, anno_b.json), read once per session."""
    return _loaded(golden, tmp_path_factory.getbasetemp())


def reference_settings(setting: dict[str, Any], total_batch_size: int = 1) -> BucketSettings:
    """The osctl settings of a reference build (compatibility switches on)."""
    force = setting["force_resolution"]
    return BucketSettings(
        frames=FrameRules(num_frames=setting["num_frames"], train_fps=setting["train_fps"],
                          speed_factor=setting["speed_factor"], drop_short_ratio=setting["drop_short_ratio"],
                          sp_size=setting["sp_size"], default_fps=24.0),
        resolution=ResolutionRules(mode="force" if force else "area", max_height=setting.get("max_height"),
                                   max_width=setting.get("max_width"), max_hxw=setting.get("max_hxw"),
                                   min_hxw=setting.get("min_hxw"), hw_stride=setting.get("hw_stride", 32),
                                   crop_before_sizing=False),
        keep_empty_captions=True, min_bucket_batches=4,
        # one SP group (world = sp_size) reading total_batch_size samples: the fixtures' total_batch_size
        layout=ParallelLayout(world_size=setting["sp_size"], sp_size=setting["sp_size"], stream_batch=total_batch_size),
        geometry=V13,  # the fixtures' ae_stride_t=4 (WF-VAE)
    )


def _flat(result: BucketResult, attr: str) -> np.ndarray:
    return np.concatenate([getattr(o, attr) for o in result.outcomes])


def _kept_rows(result: BucketResult) -> tuple[list[list[Any]], list[list[Any]], list[list[Any]]]:
    begins = np.concatenate(result.crop_begins(seed=GOLDEN_SEED))
    kept, minority, frames = [], [], []
    base = 0
    for f, outcome in enumerate(result.outcomes):
        for i, reason in enumerate(outcome.reason.tolist()):
            g = base + i
            key = f"{outcome.t[i]}x{outcome.h[i]}x{outcome.w[i]}"
            if reason == Reason.MINORITY_BUCKET:
                minority.append([g, key])
            if reason != Reason.KEPT:
                continue
            if outcome.kind[i] == KIND_VIDEO:
                kept.append([g, key, int(outcome.n_candidates[i]), int(begins[g]), int(outcome.t[i])])
            else:
                kept.append([g, key, None, None, 1])
            frames.append([g, result.frame_indices(f, i, int(begins[g]))])
        base += len(outcome.reason)
    return kept, minority, frames


def _counters(result: BucketResult) -> dict[str, int]:
    reason, kind = _flat(result, "reason"), _flat(result, "kind")
    video, image = kind == KIND_VIDEO, kind == KIND_IMAGE
    survived = np.isin(reason, [Reason.KEPT, Reason.MINORITY_BUCKET])

    def count(mask: np.ndarray) -> int:
        return int(mask.sum())

    return {
        "no_cap": count(reason == Reason.NO_CAPTION), "no_resolution": count(reason == Reason.NO_RESOLUTION),
        "too_long": count(reason == Reason.TOO_LONG),
        "too_short": count((reason == Reason.SHORT_DROPPED) | (reason == Reason.TOO_SHORT)),
        "cnt_img_res_mismatch_stride": count(image & (reason == Reason.SIZE_ZERO)),
        "cnt_vid_res_mismatch_stride": count(video & (reason == Reason.SIZE_ZERO)),
        "cnt_img_res_too_small": count(image & (reason == Reason.TOO_SMALL)),
        "cnt_vid_res_too_small": count(video & (reason == Reason.TOO_SMALL)),
        "cnt_img_aspect_mismatch": count(image & (reason == Reason.ASPECT)),
        "cnt_vid_aspect_mismatch": count(video & (reason == Reason.ASPECT)),
        "cnt_filter_minority": count(reason == Reason.MINORITY_BUCKET),
        "cnt_vid": count(video), "cnt_vid_after_filter": count(video & survived),
        "cnt_img": count(image), "cnt_img_after_filter": count(image & survived),
        "before_filter": len(reason), "after_filter": count(reason == Reason.KEPT),
    }


def _expected_with_label_deviation(case: dict[str, Any], loaded: list[LoadedAnnotation]) -> tuple[str, dict[str, int]]:
    """Golden reasons and counters with the force-mode zero-size records relabelled ``r``."""
    reasons = list(case.get("record_reasons", ""))
    counters = dict(case["counters"])
    if case["setting"]["force_resolution"]:
        h = np.concatenate([item.table.height for item in loaded if item.table is not None])
        w = np.concatenate([item.table.width for item in loaded if item.table is not None])
        kinds = _flat_kinds(loaded)
        for g in np.flatnonzero((h <= 0) | (w <= 0)):
            if reasons and reasons[g] == "a":
                reasons[g] = "r"
            counters["no_resolution"] += 1
            counters["cnt_vid_aspect_mismatch" if kinds[g] == KIND_VIDEO else "cnt_img_aspect_mismatch"] -= 1
    return "".join(reasons), counters


def _flat_kinds(loaded: list[LoadedAnnotation]) -> np.ndarray:
    from osctl.data.bucket import media_kinds

    return np.concatenate([media_kinds(item.table.path) for item in loaded if item.table is not None])


def test_every_reference_build(builds: dict[str, Any], loaded: list[LoadedAnnotation]) -> None:
    cases = builds["results"] + builds["minority_drop_cases"]
    assert len(builds["results"]) == 192 and len(cases) == 194
    for case in cases:
        result = build_buckets(loaded, reference_settings(case["setting"], case["total_batch_size"]))
        name = case["name"]
        kept, minority, frames = _kept_rows(result)
        if len(case["kept"][0]) == 2:  # minority_drop_cases list [index, key] only
            assert [row[:2] for row in kept] == case["kept"], name
        else:
            assert kept == case["kept"], name
        assert dict(Counter(row[1] for row in kept)) == case["bucket_counts"], name
        assert {b.key: b.count for b in result.buckets} == case["bucket_counts"], name
        reasons, counters = _expected_with_label_deviation(case, loaded)
        assert _counters(result) == counters, name
        if "record_reasons" in case:
            assert "".join(CHAR[Reason(r)] for r in _flat(result, "reason")) == reasons, name
            assert minority == case["minority_dropped"], name
            before = Counter(row[1] for row in kept) + Counter(row[1] for row in minority)
            assert dict(before) == case["bucket_counts_before_minority_filter"], name
        if "frame_index_sha256" in case:
            digest = hashlib.sha256(json.dumps(frames, separators=(",", ":")).encode()).hexdigest()
            assert digest == case["frame_index_sha256"], name


def test_pickle_annotations_build_the_same(golden: Path, builds: dict[str, Any], tmp_path: Path,
                                           loaded: list[LoadedAnnotation]) -> None:
    pkl = read_annotations(load_data_txt(_data_txt(golden, tmp_path, "data_pkl.txt")))
    assert pkl[1].source.format == "pkl"
    for case in builds["results"][::37]:
        settings = reference_settings(case["setting"])
        a, b = build_buckets(loaded, settings), build_buckets(pkl, settings)
        assert _kept_rows(a) == _kept_rows(b)


def test_frame_indices_at_build_and_read_time(golden: Path, builds: dict[str, Any], loaded: list[LoadedAnnotation]) -> None:
    fixture = json.loads((golden / "data" / "frame_indices.json").read_text())
    by_name = {case["name"]: case for case in builds["results"]}
    annotated_fps = np.concatenate([item.table.fps for item in loaded if item.table is not None])
    statuses: Counter[str] = Counter()
    for entry in fixture["settings"]:
        setting = by_name[entry["name"]]["setting"]
        result = build_buckets(loaded, reference_settings(setting))
        _, _, frames = _kept_rows(result)
        assert frames == entry["build_frame_index"], entry["name"]
        start, span, fps, t = (_flat(result, k) for k in ("start", "span", "fps", "t"))
        kind = _flat(result, "kind")
        rng = random.Random(fixture["py_random_seed_before_read_time_loop"])
        common = {"num_frames": setting["num_frames"], "train_fps": setting["train_fps"],
                  "speed_factor": setting["speed_factor"], "sp_size": setting["sp_size"],
                  "drop_short_ratio": setting["drop_short_ratio"], "stride_t": V13.stride_t}
        for g, status, indices in entry["read_time"]:
            assert kind[g] == KIND_VIDEO
            statuses[status] += 1
            args = (float(fps[g]), int(start[g]), int(span[g]))
            if status == "KeyError":  # the reference reads fps that the record lacks (no draw happens)
                assert np.isnan(annotated_fps[g])
                # osctl stores the fps it bucketed with, so the read succeeds with the bucket's count
                got = sample_frame_indices(*args, rng=random.Random(0), expected_frames=int(t[g]), **common)
                assert len(got) == t[g]
                continue
            if status == "ValueError":
                with pytest.raises(FrameCountError):
                    sample_frame_indices(*args, rng=rng, expected_frames=int(t[g]), reference_quirks=True, **common)
                fixed = sample_frame_indices(*args, rng=random.Random(g), expected_frames=int(t[g]), **common)
                assert len(fixed) == t[g]  # osctl never loses a frame to rounding
                continue
            got = sample_frame_indices(*args, rng=rng, expected_frames=int(t[g]), reference_quirks=True, **common)
            assert got.tolist() == indices, (entry["name"], g)
    assert statuses["ok"] > 100 and statuses["KeyError"] and statuses["ValueError"]


def _case_data(tmp_path: Path, case: dict[str, Any]) -> Path:
    anno = tmp_path / "anno.json"
    anno.write_text(json.dumps(case["records"]))
    data_txt = tmp_path / "data.txt"
    data_txt.write_text(case["data_txt_line"].replace("{ANNOTATION_FILE}", str(anno)) + "\n")
    return data_txt


def _case_build(tmp_path: Path, case: dict[str, Any], **changes: Any) -> BucketResult:
    settings = reference_settings({"max_height": None, "max_width": None, **case["setting"]})
    settings = dataclasses.replace(settings, min_bucket_batches=0, **changes)
    return build_buckets(read_annotations(load_data_txt(_case_data(tmp_path, case))), settings)


def test_error_cases_are_designed_out(golden: Path, tmp_path: Path) -> None:
    cases = {case["name"]: case for case in json.loads((golden / "data" / "error_cases.json").read_text())}
    assert len(cases) == 11

    def reasons(name: str, **changes: Any) -> list[str]:
        folder = tmp_path / name
        folder.mkdir(exist_ok=True)
        return [Reason(r).code for r in _case_build(folder, cases[name], **changes).outcomes[0].reason]

    def codes(name: str) -> set[str]:
        folder = tmp_path / f"{name}-validate"
        folder.mkdir(exist_ok=True)
        return {f.code for f in validate_data(_case_data(folder, cases[name])).findings()} - {"media_missing"}

    # NameError in the reference: .png and upper-case .MP4 are ordinary image / video types in osctl
    assert reasons("png_extension") == ["kept", "kept"]
    assert reasons("uppercase_MP4_extension") == ["kept", "kept"]
    # KeyError: a video without num_frames is dropped with its reason; validate reports it
    assert reasons("video_without_num_frames") == ["kept", "no_num_frames"]
    assert codes("video_without_num_frames") == {"missing_num_frames"}
    # ZeroDivisionError in force mode: a zero width is a bad resolution
    assert reasons("force_mode_width_zero") == ["kept", "no_resolution"]
    assert codes("force_mode_width_zero") == {"bad_resolution"}
    # TypeError (area mode without max_hxw): the recipe is refused before anything runs
    from osctl.recipe.load import load_recipe

    recipe = tmp_path / "area.yaml"
    recipe.write_text("data:\n  resolution_mode: area\n")
    with pytest.raises(ConfigError, match="area resolution mode needs max_hxw"):
        load_recipe(recipe, [])
    # ValueError on an empty result: a clear error naming the drop reasons, nothing written
    (tmp_path / "empty").mkdir()
    result = _case_build(tmp_path / "empty", cases["everything_filtered"])
    with pytest.raises(DataError, match=r"no sample survived the rules \(no_caption 1\)"):
        write_index(result, tmp_path / "empty" / "data.txt", tmp_path / "empty" / "out")
    # UnboundLocalError on an unknown suffix: the data.txt line is reported instead
    bad = tmp_path / "suffix.txt"
    bad.write_text(f"/data/root,{tmp_path / 'anno.txt'}\n")
    assert "has suffix '.txt'" in parse_data_txt(bad)[1][0].message
    # ValueError on a comma in the root: the line is split on its last comma
    assert reasons("comma_in_data_txt_path") == ["kept"]
    assert load_data_txt(tmp_path / "comma_in_data_txt_path" / "data.txt")[0].root == "/data/root,with,comma"
    # cases the reference accepts: same result, plus what osctl does by default
    assert reasons("png_filtered_before_extension_check") == ["kept", "no_caption"]
    case = cases["video_without_fps_build_ok"]
    assert reasons("video_without_fps_build_ok").count("kept") == case["kept"]  # with default_fps: 24
    assert reasons("video_without_fps_build_ok", frames=FrameRules(num_frames=29, train_fps=16, drop_short_ratio=0.0)) == [
        "kept"] * 4 + ["no_fps"] * 4  # osctl default: no fps, no guess (the reference fails when reading)
    assert codes("video_without_fps_build_ok") == {"missing_fps", "duplicate_path"}
    assert reasons("cap_empty_list_kept").count("kept") == cases["cap_empty_list_kept"]["kept"]  # keep_empty_captions
    assert reasons("cap_empty_list_kept", keep_empty_captions=False)[-1] == "no_caption"  # osctl default
    assert "empty_caption" in codes("cap_empty_list_kept")


def test_osctl_defaults_differ_only_where_documented(builds: dict[str, Any], loaded: list[LoadedAnnotation]) -> None:
    case = next(c for c in builds["results"] if c["name"] == "area262144_s32_nf29_dsr0.0_sf1.0_fps16_sp1")
    compat = build_buckets(loaded, reference_settings(case["setting"]))
    settings = dataclasses.replace(reference_settings(case["setting"]), keep_empty_captions=False,
                                   resolution=dataclasses.replace(reference_settings(case["setting"]).resolution,
                                                                  crop_before_sizing=True),
                                   frames=dataclasses.replace(reference_settings(case["setting"]).frames, default_fps=None))
    default = build_buckets(loaded, settings)
    before, after = _flat(compat, "reason"), _flat(default, "reason")
    changed = np.flatnonzero(before != after)
    fps = np.concatenate([item.table.fps for item in loaded if item.table is not None])
    crop = np.concatenate([item.table.crop for item in loaded if item.table is not None])
    state = np.concatenate([item.table.cap_state for item in loaded if item.table is not None])
    kind = _flat(default, "kind")
    explained = (np.isnan(fps) & (kind == KIND_VIDEO)) | ~np.isnan(crop[:, 0]) | (state == 2)
    assert explained[changed].all()
    assert (after[np.isnan(fps) & (kind == KIND_VIDEO) & (before == Reason.KEPT)] == Reason.NO_FPS).all()
