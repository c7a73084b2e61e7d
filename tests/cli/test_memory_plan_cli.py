"""`osctl train --dry-run` prints the memory plan per bucket; a launch that does not fit the device is refused."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from osctl.cli import app
from tests.integration.test_offline_plans import write_long_clips
from tests.train_helpers import write_tiny_recipe

runner = CliRunner()
#: the long test clips as 5-frame 16 x 16 samples of the tiny recipe
DATA = ["--set", "data.force_resolution=true", "--set", "data.too_long_factor=100", "--set", "data.min_frames=5"]


@pytest.fixture
def recipe(tmp_path: Path) -> tuple[Path, Path]:
    return write_tiny_recipe(tmp_path, tmp_path / "out", tmp_path / "cache"), write_long_clips(tmp_path / "data")


def plan(recipe: tuple[Path, Path], *extra: str):
    return runner.invoke(app, ["train", "--recipe", str(recipe[0]), "--dry-run", "--json",
                               "--set", f"data.data={recipe[1]}", *DATA, *extra])


def test_plan_lists_each_bucket_and_the_parts_of_the_peak(recipe):
    result = plan(recipe, "--set", "train.lora={rank: 4}", "--device-memory", "8GB")
    assert result.exit_code == 0, result.output
    lines = json.loads(result.output)
    assert lines["memory 5x16x16"].endswith("per process (20 tokens per clip)")  # 5 x (16/4/2) x (16/4/2)
    peak = lines["memory peak (largest bucket)"]
    for part in ("weights", "grads", "optimizer", "EMA", "activations", "attention"):
        assert part in peak, part
    # the activations under each checkpointing policy, least memory with full recomputation
    sizes = dict(re.findall(r"(off|full|selective) ([0-9.]+ [MG]B)", peak.split("(checkpointing ", 1)[1]))
    assert set(sizes) == {"off", "full", "selective"}
    mb = {k: float(v.split()[0]) * (1024 if v.endswith("GB") else 1) for k, v in sizes.items()}
    assert mb["full"] <= mb["selective"] <= mb["off"]
    assert lines["memory verdict"].startswith("fits in 8.00 GB")
    assert "host RAM while loading" in lines
    assert lines["model"].endswith("(0.02 M trainable)")  # the adapter alone


def test_plan_that_does_not_fit_names_the_knobs_and_a_launch_is_refused(recipe):
    lines = json.loads(plan(recipe, "--device-memory", "1MB").output)
    verdict = lines["memory verdict"]
    assert verdict.startswith("does not fit: the 5x16x16 bucket needs")
    assert "train.gradient_checkpointing: selective" in verdict and "train.gradient_checkpointing: full" in verdict
    assert "train.lora" in verdict
    result = runner.invoke(app, ["train", "--recipe", str(recipe[0]), "--set", f"data.data={recipe[1]}", *DATA,
                                 "--device-memory", "1MB"])
    assert result.exit_code == 2
    assert "does not fit" in result.output and not (recipe[0].parent / "out" / "checkpoint-6").exists()


def test_bad_device_memory_is_a_usage_error(recipe):
    result = plan(recipe, "--device-memory", "lots")
    assert result.exit_code == 2 and "--device-memory 'lots' is not a size" in result.output


def test_an_offload_plan_counts_the_offloaded_blocks_in_host_ram_while_loading(recipe, tmp_path):
    """``train.offload.blocks: auto`` with lean weights: the blocks the plan offloads (all 4 of the tiny model, the
    device being too small) are the ones loading reads into host memory; without offload all goes to the device."""
    from safetensors.torch import save_file

    from osctl.plugin_manager import default_registry
    from osctl.recipe.load import load_recipe
    from osctl.recipe.validate import check_recipe

    registry = default_registry()
    checked = check_recipe(load_recipe(recipe[0]), registry)
    model = registry.build("model", checked.loaded.recipe.model.name, checked.components["model"])
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp_path / "base.safetensors")
    lora = ["--set", f"train.pretrained={tmp_path / 'base.safetensors'}", "--set", "train.lora={rank: 4}"]
    lines = json.loads(plan(recipe, *lora, "--set", "train.offload={blocks: auto}", "--device-memory", "1MB").output)
    offloaded = re.fullmatch(r"4 blocks' frozen weights in host memory \((.+)\)", lines["offload"])
    assert offloaded, lines["offload"]
    assert f"(4 offloaded blocks' frozen weights read into host memory, where they stay: {offloaded[1]} with " \
           "base_dtype fp32;" in lines["host RAM while loading"]
    plain = json.loads(plan(recipe, *lora).output)["host RAM while loading"]
    assert "weights read" in plain and "straight to the device" in plain and "offloaded" not in plain
