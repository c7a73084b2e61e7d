"""`osctl.eval.shapes`: real shapes clips score 1.0, noise scores no better than chance, odd input never crashes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from osctl.errors import DataError, UsageError
from osctl.eval.shapes import (
    CLASSES,
    Expected,
    analyse_frames,
    chance,
    evaluate_dir,
    evaluate_file,
    parse_prompt,
    prompt_from_name,
)
from osctl.media.write import write_video
from osctl.synth.shapes import COLORS, MOTIONS, SHAPES, plan_dataset, render, synth_shapes
from tests.shapes_helpers import covering_plans, write_noise_samples, write_shape_samples


@pytest.fixture(scope="module")
def shape_samples(tmp_path_factory) -> Path:
    """15 real shapes clips through the H.264 path (every colour, shape, motion; cut and crop) + 3 pngs."""
    out = tmp_path_factory.mktemp("samples")
    write_shape_samples(out, covering_plans(15, seed=5), images=3)
    return out


def test_ground_truth_clips_score_one(shape_samples):
    report = evaluate_dir(shape_samples)
    totals = report.totals()
    assert totals["samples"] == totals["evaluated"] == totals["found"] == 18
    for attribute in ("color", "shape", "motion"):
        assert totals[attribute] == {"correct": 18, "total": 18, "accuracy": 1.0,
                                     "chance": round(1 / len(CLASSES[attribute]), 4)}, attribute
    assert {s.prompt_source for s in report.samples} == {"sidecar"}
    rows = report.per_prompt()
    assert sum(r["samples"] for r in rows) == 18
    assert all(r["motion"]["accuracy"] == 1.0 for r in rows)
    payload = report.to_json()
    assert payload["schema"] == "osctl.eval.shapes/1"
    sample = payload["samples"][0]
    assert set(sample) == {"file", "prompt", "prompt_source", "expected", "predicted", "correct", "found", "reason",
                           "measurements"}
    assert sample["correct"] == {"color": True, "shape": True, "motion": True}


def test_chance_is_one_over_the_classes_the_analysis_predicts(shape_samples):
    """One owner: the classes are the shapes dataset's; every prediction is one of them."""
    assert {"color": tuple(COLORS), "shape": SHAPES, "motion": MOTIONS} == CLASSES
    assert {a: chance(a) for a in CLASSES} == {"color": 0.2, "shape": 0.3333, "motion": 0.2}
    report = evaluate_dir(shape_samples)
    for sample in report.samples:
        for attribute, value in sample.measurement.predicted().items():
            assert value in CLASSES[attribute], (sample.file, attribute, value)
    for row in report.per_prompt():
        assert all(row[a]["chance"] == chance(a) for a in CLASSES)


def test_noise_videos_score_at_most_chance(tmp_path):
    write_noise_samples(tmp_path, 15, seed=3)
    totals = evaluate_dir(tmp_path).totals()
    assert totals["samples"] == 15
    for attribute in ("color", "shape", "motion"):
        assert totals[attribute]["total"] == 15
        assert totals[attribute]["accuracy"] < 0.6, attribute


def test_empty_blank_and_broken_samples_count_as_wrong(tmp_path):
    prompt = "a red circle moving left on a black background"
    write_video(tmp_path / "0000-00-blank.mp4", np.zeros((6, 64, 64, 3), np.uint8), 12)
    (tmp_path / "0001-00-broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 truncated")
    frames = np.zeros((6, 64, 64, 3), np.uint8)
    frames[:, 4:60, 4:60] = 200  # an object covering most of the frame is not "a shape"
    write_video(tmp_path / "0002-00-huge.mp4", frames, 12)
    for stem in ("0000-00-blank", "0001-00-broken", "0002-00-huge"):
        (tmp_path / f"{stem}.json").write_text(json.dumps({"prompt": prompt}))
    report = evaluate_dir(tmp_path)
    assert [s.measurement.found for s in report.samples] == [False, False, False]
    assert report.samples[1].error.startswith("unreadable")
    assert report.totals()["color"] == {"correct": 0, "total": 3, "accuracy": 0.0, "chance": 0.2}
    assert analyse_frames(np.zeros((0, 8, 8, 3), np.uint8)).found is False
    assert analyse_frames(np.zeros((3, 4, 4, 3), np.uint8)).found is False


def test_robust_to_blur_noise_and_small_frames():
    rng = np.random.default_rng(0)
    plans = [p for p in plan_dataset(20, 0, seed=2, hold_out=False) if p.content_frames <= 48][:8]
    for plan in plans:
        frames = render(plan).astype(np.float32)
        blurred = (np.roll(frames, 1, 1) + frames + np.roll(frames, -1, 1)) / 3
        noisy = np.clip(blurred + rng.normal(0, 10, frames.shape), 0, 255).astype(np.uint8)
        small = frames[:, : frames.shape[1] // 2 * 2, : frames.shape[2] // 2 * 2]
        small = small.reshape(small.shape[0], small.shape[1] // 2, 2, small.shape[2] // 2, 2, 3).mean((2, 4))
        for variant in (noisy, small.astype(np.uint8)):
            m = analyse_frames(variant)
            assert (m.color, m.shape, m.motion) == (plan.color, plan.shape, plan.motion), plan.path


@pytest.mark.parametrize(("text", "expected"), [
    ("a red circle moving left on a black background", Expected("red", "circle", "left")),
    ("a still blue square on a grey background", Expected("blue", "square", "still")),
    ("on a plain black background, a yellow triangle slides upwards", Expected("yellow", "triangle", "up")),
    ("a motionless white triangle", Expected("white", "triangle", "still")),
    ("a green ball rolling from left to right", Expected("green", "circle", "right")),
    ("a square on a white background", Expected(None, "square", None)),
    ("a corgi on the beach", Expected(None, None, None)),
])
def test_parse_prompt(text, expected):
    assert parse_prompt(text) == expected


def test_prompt_from_file_name_when_no_sidecar(tmp_path):
    assert prompt_from_name(Path("0003-01-a-red-circle-moving-left-on-a-black-back.mp4")) == \
        "a red circle moving left on a black back"
    assert parse_prompt(prompt_from_name(Path("0012-green-square-down-on-grey.mp4"))) == \
        Expected("green", "square", "down")
    synth_shapes(tmp_path / "d", videos=3, images=2, seed=4)  # the dataset's own files evaluate by name
    for folder in ("videos", "images"):
        report = evaluate_dir(tmp_path / "d" / folder)
        assert {s.prompt_source for s in report.samples} == {"filename"}
        assert all(report.totals()[a]["accuracy"] == 1.0 for a in ("color", "shape", "motion"))
    sample = evaluate_file(next((tmp_path / "d" / "videos").glob("*.mp4")), prompt="a blue thing")
    assert sample.prompt_source == "argument" and sample.correct("shape") is None


def test_folder_errors(tmp_path):
    with pytest.raises(UsageError, match="not a folder"):
        evaluate_dir(tmp_path / "missing")
    with pytest.raises(DataError, match="no samples"):
        evaluate_dir(tmp_path)
    write_video(tmp_path / "0000-00-a-corgi.mp4", np.zeros((3, 32, 32, 3), np.uint8), 12)
    with pytest.raises(DataError, match="naming a colour"):
        evaluate_dir(tmp_path)


def test_shapes_that_ignore_the_prompt_score_near_chance(shape_samples, tmp_path):
    """Real clips paired with another clip's prompt: the metric must not reward a prompt-blind model."""
    import shutil

    videos = sorted(shape_samples.glob("*.mp4"))
    prompts = [json.loads(v.with_suffix(".json").read_text())["prompt"] for v in videos]
    for i, video in enumerate(videos):
        shutil.copy(video, tmp_path / video.name)
        (tmp_path / f"{video.stem}.json").write_text(json.dumps({"prompt": prompts[(i + 7) % len(prompts)]}))
    totals = evaluate_dir(tmp_path).totals()
    assert totals["found"] == len(videos)
    for attribute in ("color", "shape", "motion"):
        assert totals[attribute]["accuracy"] < 0.6, (attribute, totals[attribute])
