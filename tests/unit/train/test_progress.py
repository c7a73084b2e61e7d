"""What a person sees of a training run (#21 item 16): step N/total and an ETA on every logged line, a
live progress bar on a terminal (rank 0 only), and ``logs/curves.png`` redrawn at each checkpoint, with a
failure to draw a warning that never stops training."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import pytest
from PIL import Image
from rich.console import Console

from osctl.cli.train import TrainingDisplay, duration, record_line
from osctl.plots import CURVES_SIZE
from osctl.plugin_manager import default_registry
from osctl.recipe.load import load_recipe
from osctl.recipe.validate import check_recipe
from osctl.train.run import TrainOptions, run_training
from tests.train_helpers import SyntheticClips, write_tiny_recipe

QUICK = ["train.max_steps=3", "train.checkpointing_steps=2", "train.use_ema=false", "train.log_interval=1"]


def _train(tmp_path: Path, *, log=None, on_step=None):
    out = tmp_path / "out"
    recipe = write_tiny_recipe(tmp_path, out, tmp_path / "cache")
    registry = default_registry()
    checked = check_recipe(load_recipe(recipe, QUICK), registry)
    text_encoder = registry.build("text_encoder", "tiny_t5", checked.components["text_encoder"])
    source = SyntheticClips(lambda caps: text_encoder.tokenize(caps), batch_size=2)
    return run_training(checked, registry, TrainOptions(data_source=source, log=log, on_step=on_step)), out


def test_lines_records_and_curves_of_a_short_run(tmp_path, capsys):
    seen_at_step: dict[int, bool] = {}
    display = TrainingDisplay(live=False)

    def on_step(step, record):
        display.on_step(step, record)
        seen_at_step[step] = (tmp_path / "out" / "logs" / "curves.png").is_file()

    result, out = _train(tmp_path, log=display.log, on_step=on_step)
    assert result.final_step == 3
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("step")]
    assert [line.split()[1] for line in lines] == ["1/3", "2/3", "3/3"]
    assert all(" ETA " in line and "samples/s" in line for line in lines)
    assert lines[-1].split("ETA ")[1].startswith("0:00:00")
    records = [json.loads(line) for line in (out / "logs" / "metrics.jsonl").read_text().splitlines()]
    assert [r["total_steps"] for r in records] == [3, 3, 3]
    assert records[0]["eta_s"] > 0 and records[-1]["eta_s"] == 0
    # drawn after the checkpoint of step 2 (seen during step 3), then again after the last one
    assert seen_at_step == {1: False, 2: False, 3: True}
    with Image.open(out / "logs" / "curves.png") as image:
        image.verify()
    with Image.open(out / "logs" / "curves.png") as image:
        assert image.format == "PNG" and image.size == CURVES_SIZE
    assert not list((out / "logs").glob(".*"))  # no temporary file left behind


def test_a_curve_that_cannot_be_drawn_is_a_warning(tmp_path, monkeypatch, caplog):
    def broken(records, path):
        raise OSError("disk full")

    monkeypatch.setattr("osctl.plots.training_curves", broken)
    with caplog.at_level(logging.WARNING, logger="osctl.train.tracking"):
        result, out = _train(tmp_path)
    assert result.final_step == 3 and (out / "checkpoint-3").is_dir()
    assert not (out / "logs" / "curves.png").exists()
    warnings = [r.getMessage() for r in caplog.records if "curves.png" in r.getMessage()]
    assert len(warnings) == 2 and "training goes on" in warnings[0] and "OSError: disk full" in warnings[0]


def _step(step: int, eta: float, **extra) -> dict:
    return {"step": step, "total_steps": 4, "loss": 0.5 / step, "lr": 1e-3, "grad_norm": 0.25,
            "elapsed_s": 2.0 * step, "eta_s": eta, **extra}


def test_live_bar_shows_step_of_total_loss_speed_and_eta_on_a_terminal(capsys):
    screen = io.StringIO()
    display = TrainingDisplay(live=True, bar_console=Console(file=screen, force_terminal=True, width=150))
    for step in (1, 2, 3):
        display.on_step(step, _step(step, 3725.0 - step))
    display.log(_step(3, 3722.0, loss_avg=0.2, samples_per_s=12.5))
    display.on_step(4, _step(4, 0.0))
    display.close()
    bar = screen.getvalue()
    assert "step 4/4" in bar and "loss 0.1250" in bar and "12.5 samples/s" in bar and "ETA 0:00:00" in bar
    assert "step 1/4" in bar and "loss 0.5000" in bar and "ETA 1:02:04" in bar  # the first picture: step 1's
    assert capsys.readouterr().out.splitlines() == [
        "step      3/4  loss 0.1667 (avg 0.2000)  lr 1.00e-03 grad 0.250  12.5 samples/s  6.0s  ETA 1:02:02"]


def test_no_bar_off_a_terminal_and_nothing_on_other_ranks(monkeypatch, capsys):
    screen = io.StringIO()
    display = TrainingDisplay(live=False, bar_console=Console(file=screen, force_terminal=True))
    display.on_step(1, _step(1, 10.0))
    display.log(_step(1, 10.0, loss_avg=0.5))
    display.close()
    assert screen.getvalue() == "" and capsys.readouterr().out.startswith("step      1/4  loss 0.5000")
    monkeypatch.setenv("RANK", "1")
    other = TrainingDisplay(live=True, bar_console=Console(file=screen, force_terminal=True))
    other.on_step(1, _step(1, 10.0))
    other.log(_step(1, 10.0, loss_avg=0.5))
    other.close()
    assert screen.getvalue() == "" and capsys.readouterr().out == ""


@pytest.mark.parametrize(("seconds", "text"), [(0, "0:00:00"), (59.6, "0:01:00"), (3725, "1:02:05"),
                                               (90061, "1 day, 1:01:01"), (2 * 86400, "2 days, 0:00:00"),
                                               (None, "?"), (float("nan"), "?"), (float("inf"), "?")])
def test_duration(seconds, text):
    assert duration(seconds) == text


def test_record_line_without_the_new_fields_still_prints():
    """Records of an older metrics file (no total_steps, no eta_s) print as before."""
    line = record_line({"step": 7, "loss": 0.5, "loss_avg": 0.5, "lr": 1e-4, "grad_norm": None, "elapsed_s": 1.0})
    assert line == "step      7  loss 0.5000 (avg 0.5000)  lr 1.00e-04  1.0s"
