"""PNG charts (#21 item 16): training curves from metrics records and the `osctl data bucket --plot` histogram."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from PIL import Image
from typer.testing import CliRunner

from osctl.cli import app
from osctl.plots import (
    BUCKETS_SIZE,
    CURVES_SIZE,
    bucket_histogram,
    moving_average,
    read_metrics,
    training_curves,
)

BLUE = np.array([31, 119, 180])  # matplotlib's tab:blue (loss, samples per bucket)
ORANGE = np.array([255, 127, 14])  # tab:orange (learning rate, dropped records)


def _png(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.format == "PNG"
        return np.asarray(image.convert("RGB"))


def _pixels(image: np.ndarray, colour: np.ndarray) -> int:
    return int((np.abs(image.astype(int) - colour).sum(axis=2) < 10).sum())


def test_read_metrics_keeps_the_newest_record_of_a_step_and_skips_a_torn_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    lines = [{"step": 1, "loss": 1.0}, {"step": 2, "loss": 0.9}, {"step": 3, "loss": 0.8},
             {"step": 2, "loss": 0.5}, {"step": 3, "loss": 0.4}]  # a resumed run logs steps 2 and 3 again
    path.write_text("".join(json.dumps(r) + "\n" for r in lines) + '{"step": 4, "lo')
    assert [(r["step"], r["loss"]) for r in read_metrics(path)] == [(1, 1.0), (2, 0.5), (3, 0.4)]


def test_moving_average_is_trailing_and_loses_no_point():
    assert moving_average([1.0, 3.0, 5.0, 7.0], 2) == [1.0, 2.0, 4.0, 6.0]
    assert moving_average([], 5) == []


def test_training_curves_draw_loss_and_learning_rate(tmp_path):
    records = [{"step": s, "loss": 1 / (1 + s / 20) + 0.05 * math.sin(s), "lr": 1e-3 * min(1, s / 30)}
               for s in range(1, 201)]
    path = training_curves(records, tmp_path / "logs" / "curves.png")
    image = _png(path)
    assert image.shape == (CURVES_SIZE[1], CURVES_SIZE[0], 3)
    assert _pixels(image, BLUE) > 500 and _pixels(image, ORANGE) > 200
    no_lr = _png(training_curves([{k: v for k, v in r.items() if k != "lr"} for r in records], tmp_path / "b.png"))
    assert _pixels(no_lr, ORANGE) == 0 and _pixels(no_lr, BLUE) > 500
    assert _png(training_curves([], tmp_path / "empty.png")).shape == image.shape  # nothing logged yet: axes only
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["b.png", "curves.png", "empty.png", "logs"]


def test_bucket_histogram_panels(tmp_path):
    buckets = [(9, 16, 16, 300), (5, 12, 20, 120), (1, 16, 16, 60)] + [(1, h, 8, 2) for h in range(8, 400, 8)]
    image = _png(bucket_histogram(buckets, {"too_short": 40, "minority_bucket": 12, "aspect": 0}, tmp_path / "b.png"))
    assert image.shape == (BUCKETS_SIZE[1], BUCKETS_SIZE[0], 3)
    assert _pixels(image, BLUE) > 1000 and _pixels(image, ORANGE) > 1000
    clean = _png(bucket_histogram(buckets[:2], {}, tmp_path / "clean.png"))
    assert _pixels(clean, BLUE) > 1000 and _pixels(clean, ORANGE) == 0


def test_data_bucket_plot_option(tmp_path):
    media = tmp_path / "media"
    media.mkdir()
    video = {"cap": "a clip", "resolution": {"height": 720, "width": 1280}, "num_frames": 100, "fps": 16}
    image = {"cap": "a photo", "resolution": {"height": 720, "width": 1280}}
    records = [{**video, "path": f"v{i}.mp4"} for i in range(6)] + [{**image, "path": f"i{i}.jpg"} for i in range(6)]
    records += [{**video, "path": "long.mp4", "num_frames": 5000}]
    for record in records:
        (media / record["path"]).touch()
    (tmp_path / "anno.json").write_text(json.dumps(records))
    (tmp_path / "data.txt").write_text(f"{media},anno.json\n")
    (tmp_path / "recipe.yaml").write_text("data:\n  num_frames: 29\n  train_fps: 16\n  max_hxw: 262144\n")
    plot = tmp_path / "plots" / "buckets.png"
    result = CliRunner().invoke(app, ["data", "bucket", str(tmp_path / "data.txt"), "-r", str(tmp_path / "recipe.yaml"),
                                      "--out", str(tmp_path / "idx"), "--plot", str(plot)])
    assert result.exit_code == 0, result.output
    assert f"plot: {plot}" in result.output
    drawn = _png(plot)
    assert drawn.shape == (BUCKETS_SIZE[1], BUCKETS_SIZE[0], 3)
    assert _pixels(drawn, BLUE) > 1000 and _pixels(drawn, ORANGE) > 100  # two buckets; one too_long record
    plot.unlink()
    as_json = CliRunner().invoke(app, ["data", "bucket", str(tmp_path / "data.txt"), "-r", str(tmp_path / "recipe.yaml"),
                                       "--out", str(tmp_path / "idx"), "--plot", str(plot), "--json"])
    assert as_json.exit_code == 0 and json.loads(as_json.stdout)["kept"] == 12 and plot.is_file()
