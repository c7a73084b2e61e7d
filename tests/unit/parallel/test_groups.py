"""Process groups, launcher detection and the multi-process CLI error path (no process group needed);
the layout's checks and batch arithmetic are in test_layout.py."""

from __future__ import annotations

import os

import pytest
from typer.testing import CliRunner

from osctl.cli import app
from osctl.errors import ConfigError
from osctl.parallel import dist as pdist
from osctl.parallel.groups import ParallelGroups
from osctl.parallel.launch import absorb_local_rank
from tests.train_helpers import write_tiny_recipe


def test_single_process_groups_are_trivial():
    groups = ParallelGroups(1, 0, 1)
    assert (groups.sp_group, groups.dp_group, groups.dp_rank, groups.dp_size, groups.sp_rank) == (None, None, 0, 1, 0)
    with pytest.raises(ConfigError, match=r"parallel.sp_size 4 does not divide the world size \(6\)"):
        ParallelGroups(6, 0, 4)


def test_deepspeed_launcher_local_rank_argument_is_absorbed(monkeypatch):
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    argv = ["osctl", "--local_rank=3", "train", "--recipe", "r.yaml"]
    assert absorb_local_rank(argv) == ["osctl", "train", "--recipe", "r.yaml"]
    assert os.environ["LOCAL_RANK"] == "3"
    assert absorb_local_rank(["osctl", "--local-rank", "5", "train"]) == ["osctl", "train"]
    assert os.environ["LOCAL_RANK"] == "3"  # a launcher's LOCAL_RANK wins


def test_launchers_are_detected_from_their_environment(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "SLURM_PROCID", "SLURM_NTASKS",
                 "SLURM_LOCALID"):
        monkeypatch.delenv(name, raising=False)
    assert not pdist.under_launcher()
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")  # torchrun and the deepspeed launcher set both
    assert pdist.under_launcher()
    for name in ("RANK", "WORLD_SIZE"):
        monkeypatch.delenv(name)
    monkeypatch.setenv("SLURM_PROCID", "3")
    monkeypatch.setenv("SLURM_NTASKS", "4")
    monkeypatch.setenv("SLURM_LOCALID", "1")
    assert pdist.under_launcher()
    pdist._env_from_slurm()
    assert (os.environ["RANK"], os.environ["WORLD_SIZE"], os.environ["LOCAL_RANK"]) == ("3", "4", "1")


def test_errors_of_a_multi_process_run_name_the_rank(tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    result = CliRunner().invoke(app, ["train", "--recipe", str(tmp_path / "missing.yaml")])
    assert result.exit_code == 2
    assert "error: rank 1: " in result.output


def test_layout_is_checked_before_processes_start(tmp_path):
    recipe = write_tiny_recipe(tmp_path, tmp_path / "out", tmp_path / "cache")
    result = CliRunner().invoke(app, ["train", "--recipe", str(recipe), "--set", "parallel.sp_size=3",
                                      "--nproc-per-node", "3"])
    assert result.exit_code == 2, result.output
    assert "parallel.sp_size 3 does not divide the model's 2 attention heads" in result.output
    result = CliRunner().invoke(app, ["train", "--recipe", str(recipe), "--set", "parallel.sp_size=2",
                                      "--nproc-per-node", "3"])
    assert result.exit_code == 2, result.output
    assert "does not divide --nproc-per-node x --nnodes (3)" in result.output


def test_recipe_process_count_launches_like_the_flag(tmp_path):
    recipe = write_tiny_recipe(tmp_path, tmp_path / "out", tmp_path / "cache")
    result = CliRunner().invoke(app, ["train", "--recipe", str(recipe), "--set", "parallel.sp_size=4",
                                      "--set", "parallel.nproc_per_node=4"])
    assert result.exit_code == 2, result.output
    assert "parallel.sp_size 4 does not divide the model's 2 attention heads" in result.output
