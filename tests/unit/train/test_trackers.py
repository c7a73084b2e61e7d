"""Trackers (#6): ``logs/metrics.jsonl`` always, ``train.trackers`` as plugins (an out-of-tree one and the
built-in TensorBoard one), loader counters in every record, a broken tracker dropped with one warning,
trackers closed after an error and after a stop signal, and a clear error when tensorboard is missing."""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from osctl.errors import ConfigError
from osctl.plugin_manager import default_registry
from osctl.recipe.load import load_recipe
from osctl.recipe.validate import check_recipe
from osctl.train.run import TrainOptions, run_training
from tests.train_helpers import SyntheticClips, write_tiny_recipe

FAST = ["train.max_steps=2", "train.checkpointing_steps=100", "train.use_ema=false"]


class CountingClips(SyntheticClips):
    """SyntheticClips with the loader's ``stats()``: one bad read replaced per batch handed out."""

    def __iter__(self):
        for batch in super().__iter__():
            self.handed = getattr(self, "handed", 0) + 1
            yield batch

    def stats(self) -> dict:
        handed = getattr(self, "handed", 0)
        return {"reads": 3 * handed, "bad_reads": handed, "bad_samples": 1 if handed else 0, "replaced": handed,
                "by_code": {"undecodable": handed}, "examples": ["x.mp4: undecodable"], "epoch": self.epoch}


def _run(tmp_path: Path, overrides: list[str], source_class=CountingClips, on_step=None):
    out = tmp_path / "out"
    recipe = write_tiny_recipe(tmp_path, out, tmp_path / "cache")
    registry = default_registry()
    checked = check_recipe(load_recipe(recipe, [*FAST, *overrides]), registry)
    text_encoder = registry.build("text_encoder", "tiny_t5", checked.components["text_encoder"])
    source = source_class(lambda caps: text_encoder.tokenize(caps), batch_size=2)
    return run_training(checked, registry, TrainOptions(data_source=source, on_step=on_step)), out


def _jsonl(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "logs" / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture
def calls(hello_plugin):
    """The out-of-tree ``recording`` tracker's call list (``osctl_hello.CALLS``), empty at the start."""
    import osctl_hello

    osctl_hello.CALLS.clear()
    yield osctl_hello.CALLS
    osctl_hello.CALLS.clear()


def test_out_of_tree_tracker_gets_config_metrics_and_videos(tmp_path, calls):
    result, out = _run(tmp_path, ["train.trackers=[recording]", "train.validation_steps=2",
                                  'train.validation_prompts=["a red ball"]', "sample.num_sampling_steps=2"])
    assert result.final_step == 2
    methods = [method for method, _ in calls]
    assert methods == ["init", "log_config", "log_metrics", "log_metrics", "log_videos", "close"]
    assert calls[0][1] == (out, 0)
    config = calls[1][1][0]
    assert config["train"]["trackers"] == [{"name": "recording"}] and config["model"]["name"] == "opensora_v1_3"
    records = [args[1] for method, args in calls if method == "log_metrics"]
    assert [args[0] for method, args in calls if method == "log_metrics"] == [1, 2]
    assert records == _jsonl(out)  # the tracker sees exactly what the metrics file holds
    assert [r["loss"] for r in records] == result.losses
    for record in records:
        assert {"loss", "loss_avg", "lr", "grad_norm", "elapsed_s", "samples_per_s"} <= set(record)
        assert record["samples_per_s"] > 0
    # the loader's bad-media counters ride along
    assert (records[-1]["data_reads"], records[-1]["data_bad_reads"], records[-1]["data_replaced"]) == (6, 2, 2)
    assert records[-1]["data_bad_samples"] == 1 and records[-1]["data_epoch"] == 0
    step, tag, paths = calls[4][1]
    assert (step, tag) == (2, "validation/model")
    assert paths == [out / "validation" / "step-2" / "model" / "0000-a-red-ball.mp4"] and paths[0].is_file()


def test_tensorboard_tracker_writes_the_loss_and_the_recipe(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    result, out = _run(tmp_path, ["train.trackers=[tensorboard]"])
    events = EventAccumulator(str(out / "logs" / "tensorboard"))
    events.Reload()
    tags = events.Tags()
    assert {"train/loss", "train/lr", "train/grad_norm", "train/samples_per_s", "data/replaced",
            "data/bad_reads"} <= set(tags["scalars"])
    losses = events.Scalars("train/loss")
    assert [e.step for e in losses] == [1, 2]
    assert [e.value for e in losses] == pytest.approx(result.losses, rel=1e-6)
    assert [e.value for e in events.Scalars("data/replaced")] == [1, 2]
    assert "recipe/text_summary" in tags["tensors"]
    assert len(_jsonl(out)) == 2  # the metrics file is written as well


def test_tensorboard_tracker_logs_validation_samples_as_frame_strips(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from osctl.media.write import write_image, write_video

    frames = np.zeros((5, 16, 16, 3), dtype=np.uint8)
    frames[:, :, :, 0] = np.arange(5, dtype=np.uint8)[:, None, None] * 50
    video = write_video(tmp_path / "0000-a-red-ball.mp4", frames, 8)
    image = write_image(tmp_path / "0001-one-frame.png", frames[4])
    tracker = default_registry().build("tracker", "tensorboard", {"video_frames": 3, "log_dir": "tb"},
                                       output_dir=tmp_path, start_step=0)
    tracker.log_videos(4, "validation/model_ema", [video, image])
    tracker.close()
    events = EventAccumulator(str(tmp_path / "tb"), size_guidance={"images": 0})
    events.Reload()
    assert sorted(events.Tags()["images"]) == ["validation/model_ema/0000-a-red-ball",
                                               "validation/model_ema/0001-one-frame"]
    strip = events.Images("validation/model_ema/0000-a-red-ball")[0]
    assert (strip.step, strip.width, strip.height) == (4, 3 * 16, 16)
    single = events.Images("validation/model_ema/0001-one-frame")[0]
    assert (single.width, single.height) == (16, 16)


def test_a_failing_tracker_is_dropped_with_one_warning_and_training_finishes(tmp_path, calls, caplog):
    with caplog.at_level(logging.WARNING, logger="osctl.train.tracking"):
        result, out = _run(tmp_path, ['train.trackers=[{name: recording, fail_in: log_metrics}]'])
    assert result.final_step == 2 and (out / "checkpoint-2" / "manifest.json").is_file()
    warnings = [r.getMessage() for r in caplog.records]
    assert warnings == ["tracker 'recording' failed in log_metrics and is disabled for the rest of this run: "
                        "RuntimeError: recording tracker broke in log_metrics"]
    assert [method for method, _ in calls] == ["init", "log_config", "log_metrics", "close"]  # closed once, at once
    assert [r["step"] for r in _jsonl(out)] == [1, 2]


class ExplodingClips(CountingClips):
    """Breaks on the second batch, as a storage failure would."""

    def __iter__(self):
        for i, batch in enumerate(super().__iter__()):
            if i == 1:
                raise OSError("storage went away")
            yield batch


def test_trackers_are_closed_after_an_error(tmp_path, calls):
    with pytest.raises(OSError, match="storage went away"):
        _run(tmp_path, ["train.trackers=[recording]"], source_class=ExplodingClips)
    assert [method for method, _ in calls] == ["init", "log_config", "log_metrics", "close"]


def test_trackers_are_closed_after_a_stop_signal(tmp_path, calls):
    def sigterm(step, record):
        if step == 1:
            os.kill(os.getpid(), signal.SIGTERM)

    result, out = _run(tmp_path, ["train.trackers=[recording]", "train.max_steps=5"], on_step=sigterm)
    assert result.interrupted and result.final_step == 1
    assert (out / "checkpoint-1" / "manifest.json").is_file()
    assert [method for method, _ in calls] == ["init", "log_config", "log_metrics", "close"]


def test_tracker_entries_accept_names_and_options_and_are_checked(tmp_path):
    recipe = write_tiny_recipe(tmp_path, tmp_path / "out", tmp_path / "cache")
    registry = default_registry()
    for value in ("tensorboard", "[tensorboard]", "[{name: tensorboard, flush_secs: 5}]", "[tb]"):
        checked = check_recipe(load_recipe(recipe, [f"train.trackers={value}"]), registry)
        assert [name for name, _ in checked.trackers] == ["tb" if value == "[tb]" else "tensorboard"]
    assert check_recipe(load_recipe(recipe, []), registry).trackers == []
    with pytest.raises(ConfigError, match=r"train\.trackers\.0: unknown tracker 'tensorbord'.*Did you mean 'tensorboard'"):
        check_recipe(load_recipe(recipe, ["train.trackers=[tensorbord]"]), registry)
    with pytest.raises(ConfigError, match=r"train\.trackers\.0\.flush_sec: unknown key; did you mean 'flush_secs'"):
        check_recipe(load_recipe(recipe, ["train.trackers=[{name: tensorboard, flush_sec: 5}]"]), registry)


def test_missing_tensorboard_fails_at_recipe_check_with_the_install_command(tmp_path, monkeypatch):
    from osctl_builtin.trackers.tensorboard_tracker import TensorBoardConfig, build_tensorboard

    monkeypatch.setitem(sys.modules, "tensorboard", None)  # `import tensorboard` now fails
    recipe = write_tiny_recipe(tmp_path, tmp_path / "out", tmp_path / "cache")
    install = 'pip install -c constraints.txt "osctl[tensorboard]"'
    with pytest.raises(ConfigError) as err:
        check_recipe(load_recipe(recipe, ["train.trackers=[tensorboard]"]), default_registry())
    assert "train.trackers.0: the tracker 'tensorboard' needs the Python package 'tensorboard', which is not " \
           "installed" in err.value.message
    assert f"`{install}`" in err.value.message and err.value.message.count(". ") == 0
    with pytest.raises(ConfigError, match=r"install it with `pip install -c constraints\.txt \"osctl\[tensorboard\]\"`"):
        build_tensorboard(TensorBoardConfig(), output_dir=tmp_path)
    assert not (tmp_path / "out").exists()  # nothing ran


def test_plugins_list_shows_trackers(calls):
    from osctl.cli import app

    result = CliRunner().invoke(app, ["plugins", "list", "--kind", "tracker", "--json"])
    assert result.exit_code == 0, result.output
    found = {c["name"]: c["distribution"] for c in json.loads(result.stdout)["components"]}
    assert found == {"tensorboard": "osctl", "recording": "osctl-hello"}
