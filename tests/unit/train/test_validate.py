"""Validation sampling during training: videos per step for the current and EMA weights, no effect on
training, and a failure is logged instead of ending the run."""

from __future__ import annotations

import logging
from pathlib import Path

from osctl.plugin_manager import default_registry
from osctl.recipe.load import load_recipe
from osctl.recipe.validate import check_recipe
from osctl.train.run import TrainOptions, run_training
from tests.train_helpers import SyntheticClips, write_tiny_recipe

VALIDATION = ["train.max_steps=4", "train.checkpointing_steps=4", "train.validation_steps=2",
              'train.validation_prompts=["a red ball", "a blue cube"]']


def _run(tmp_path: Path, name: str, overrides: list[str]):
    folder = tmp_path / name
    folder.mkdir()
    recipe = write_tiny_recipe(folder, folder / "out", tmp_path / "cache")
    registry = default_registry()
    checked = check_recipe(load_recipe(recipe, overrides), registry)
    text_encoder = registry.build("text_encoder", "tiny_t5", checked.components["text_encoder"])
    source = SyntheticClips(lambda caps: text_encoder.tokenize(caps), batch_size=2)
    return run_training(checked, registry, TrainOptions(data_source=source)), folder / "out"


def test_validation_writes_videos_and_leaves_training_unchanged(tmp_path):
    with_validation, out = _run(tmp_path, "a", VALIDATION)
    without, _ = _run(tmp_path, "b", VALIDATION[:2])
    assert with_validation.losses == without.losses
    for step in (2, 4):
        for weights in ("model", "model_ema"):
            files = sorted(p.name for p in (out / "validation" / f"step-{step}" / weights).iterdir())
            assert files == ["0000-a-red-ball.mp4", "0001-a-blue-cube.mp4"], (step, weights, files)


def test_validation_failure_is_logged_and_training_goes_on(tmp_path, monkeypatch, caplog):
    from osctl.sample.pipeline import VideoPipeline

    def broken(self, *args, **kwargs):
        raise RuntimeError("sampler exploded")

    monkeypatch.setattr(VideoPipeline, "__call__", broken)
    with caplog.at_level(logging.WARNING, logger="osctl.train.validate"):
        result, out = _run(tmp_path, "a", VALIDATION)
    assert result.final_step == 4
    assert (out / "checkpoint-4" / "manifest.json").is_file()
    failures = [r.getMessage() for r in caplog.records if "sampler exploded" in r.getMessage()]
    assert len(failures) == 4  # steps 2 and 4, current and EMA weights
    assert failures[0].startswith("rank 0: validation at step 2 (model) failed: RuntimeError")
