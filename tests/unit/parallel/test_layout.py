"""The parallel layout (one global-batch formula and its checks), launch options, the strategy check,
the output-dir lock, laggard naming and the launcher contract pieces that need no process group."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from typer.testing import CliRunner

from osctl.build import strategy_name
from osctl.cli import app
from osctl.data.epochs import epoch_batches
from osctl.data.stream.sampler import BucketBatchSampler
from osctl.errors import ConfigError, PeerFailed, UsageError
from osctl.parallel.launch import LaunchOptions, failure_summary, reporting_errors_to_launcher
from osctl.parallel.layout import LAUNCH_NAMES, SAMPLE_SP_NAMES, ParallelLayout
from osctl.parallel.progress import RankProgress
from osctl.plugin_manager import default_registry
from osctl.recipe.load import load_recipe
from osctl.recipe.validate import check_recipe
from osctl.utils.dir_lock import LOCK_FILE, DirLock
from tests.train_helpers import write_tiny_recipe

REPO = Path(__file__).resolve().parents[3]


# ---------------------------------------------------------------------------------------------- layout


def test_the_global_batch_formula() -> None:
    # the layout: 8 ranks in SP groups of 4 -> 2 replicas x train_sp_batch_size 2 x 2 accumulation
    train = SimpleNamespace(train_batch_size=4, gradient_accumulation_steps=2)
    sp = SimpleNamespace(sp_size=4, train_sp_batch_size=2, nproc_per_node=8, nnodes=1)
    layout = ParallelLayout.from_sections(train, sp)
    assert (layout.world_size, layout.dp_size, layout.stream_batch, layout.micro_batch) == (8, 2, 2, 4)
    assert layout.global_batch == 8  # the reference's total_batch_size formula gave 32 for this layout
    no_sp = SimpleNamespace(sp_size=1, train_sp_batch_size=2, nproc_per_node=None, nnodes=1)
    assert ParallelLayout.from_sections(train, no_sp).global_batch == 4 * 1 * 2  # no process count: one process
    assert ParallelLayout.from_sections(train, no_sp, world_size=8).global_batch == 4 * 8 * 2
    assert ParallelLayout(world_size=8, stream_batch=4, grad_accum=3).optimizer_steps(10) == 3
    assert layout.describe() == "2 per sequence-parallel group of 4 ranks x 2 group(s) x 2 accumulation = 8 per optimizer step"
    assert layout.as_dict()["global_batch"] == 8


@pytest.mark.parametrize(
    ("kwargs", "heads", "message"),
    [
        ({"world_size": 6, "sp_size": 4}, None, "parallel.sp_size 4 does not divide the world size (6)"),
        ({"world_size": 8, "sp_size": 4}, 6, "parallel.sp_size 4 does not divide the model's 6 attention heads"),
        ({"world_size": 4, "sp_size": 0}, None, "parallel.sp_size is 0"),
        ({"world_size": 3, "sp_size": 2, "names": LAUNCH_NAMES}, None, "does not divide --nproc-per-node x --nnodes (3)"),
        ({"world_size": 2, "sp_size": 2, "names": SAMPLE_SP_NAMES}, 3,
         "--sp over 2 processes does not divide the model's 3 attention heads; use a process count that divides 3"),
        ({"world_size": 2, "grad_accum": 0}, None, "train.gradient_accumulation_steps is 0"),
    ],
)
def test_impossible_layouts_are_refused(kwargs, heads, message) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        ParallelLayout(**kwargs).check_heads(heads)


def test_possible_layouts_pass() -> None:
    ParallelLayout(world_size=8, sp_size=8).check_heads(24)
    ParallelLayout(world_size=8, sp_size=1).check_heads(5)  # heads only matter with sequence parallelism


def test_the_sampler_and_data_bucket_share_the_epoch_arithmetic() -> None:
    counts = np.array([9, 4, 1])
    assert [a.tolist() for a in epoch_batches(counts, 4, "drop")] == [[2, 1, 0], [1, 0, 1], [0, 0, 0]]
    assert [a.tolist() for a in epoch_batches(counts, 4, "pad")] == [[3, 1, 1], [0, 0, 0], [3, 0, 3]]
    ids = np.repeat(np.arange(3), counts)
    for leftover in ("drop", "pad"):
        sampler = BucketBatchSampler(ids, batch_size=2, dp_size=2, leftover=leftover)
        steps, dropped, duplicated = epoch_batches(counts, sampler.global_batch, leftover)
        assert (sampler.steps_per_epoch, sampler.dropped_per_epoch, sampler.duplicated_per_epoch) == \
            (steps.sum(), dropped.sum(), duplicated.sum())
        assert len(sampler.schedule(0)) == sampler.steps_per_epoch


# ----------------------------------------------------------------------------------- launch options


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"nproc_per_node": 0}, "--nproc-per-node must be at least 1, got 0"),
        ({"nproc_per_node": -2}, "--nproc-per-node must be at least 1, got -2"),
        ({"nproc_per_node": 2, "nnodes": 0}, "--nnodes must be at least 1, got 0"),
        ({"nproc_per_node": 2, "nnodes": 2, "node_rank": 2}, "--node-rank 2 is outside 0..1 for --nnodes 2"),
        ({"nproc_per_node": 2, "node_rank": -1}, "--node-rank -1 is outside 0..0 for --nnodes 1"),
    ],
)
def test_impossible_launch_options_are_refused(kwargs, message) -> None:
    with pytest.raises(UsageError, match=message):
        LaunchOptions(**kwargs)


@pytest.mark.parametrize("command", ["train", "sample"])
@pytest.mark.parametrize(("flags", "message"), [
    (["--nproc-per-node", "0"], "--nproc-per-node must be at least 1, got 0"),
    (["--nproc-per-node", "2", "--nnodes", "2", "--node-rank", "5"], "--node-rank 5 is outside 0..1"),
])
def test_commands_refuse_impossible_launch_options(tmp_path, command, flags, message) -> None:
    recipe = write_tiny_recipe(tmp_path, tmp_path / "out", tmp_path / "cache")
    result = CliRunner().invoke(app, [command, "--recipe", str(recipe), *flags])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------- one-process strategy


def test_single_strategy_is_refused_for_several_processes(tmp_path) -> None:
    recipe = write_tiny_recipe(tmp_path, tmp_path / "out", tmp_path / "cache")  # parallel.strategy: single
    registry = default_registry()
    checked = check_recipe(load_recipe(recipe, []), registry)
    with pytest.raises(ConfigError, match=r"parallel.strategy is 'single' but 2 processes were started; use 'auto' "
                                          r"or 'ddp' \(or fsdp/deepspeed\), or start one process."):
        strategy_name(checked.loaded.recipe, registry, 2)
    assert strategy_name(checked.loaded.recipe, registry, 1) == "single"
    auto = check_recipe(load_recipe(recipe, ["parallel.strategy=auto"]), registry).loaded.recipe
    assert (strategy_name(auto, registry, 1), strategy_name(auto, registry, 2)) == ("single", "ddp")
    # before any process starts
    result = CliRunner().invoke(app, ["train", "--recipe", str(recipe), "--nproc-per-node", "2"])
    assert result.exit_code == 2, result.output
    assert "parallel.strategy is 'single' but --nproc-per-node x --nnodes starts 2 processes" in result.output
    # and when the recipe itself asks for several processes
    with pytest.raises(ConfigError, match=r"parallel.strategy is 'single' but parallel.nproc_per_node x nnodes is 4"):
        check_recipe(load_recipe(recipe, ["parallel.nproc_per_node=4"]), registry)


def test_recipe_check_runs_the_layout_checks(tmp_path) -> None:
    registry = default_registry()
    path = tmp_path / "r.yaml"
    path.write_text("parallel:\n  strategy: ddp\n  sp_size: 3\n  nproc_per_node: 8\n")
    with pytest.raises(ConfigError, match=r"r.yaml:3: parallel.sp_size 3 does not divide the world size \(8\)"):
        check_recipe(load_recipe(path, []), registry)
    # no process count in the recipe (a launcher decides it): the world is checked when the run starts
    path.write_text("parallel:\n  strategy: ddp\n  sp_size: 2\n")
    check_recipe(load_recipe(path, []), registry)


# --------------------------------------------------------------------------------------- output lock


def test_a_locked_output_dir_is_refused_with_its_holder(tmp_path) -> None:
    out = tmp_path / "out"
    with DirLock(out) as held:
        info = json.loads((out / LOCK_FILE).read_text())
        assert info["pid"] == os.getpid() and held.held
        with pytest.raises(UsageError, match=rf"train.output_dir {out} is in use by osctl train \(pid {os.getpid()} "
                                             rf"on host .+ since .+\); wait for it or stop it."):
            DirLock(out).acquire()
    with DirLock(out):  # released: the next run takes it
        pass


def test_a_dry_run_takes_no_lock_and_writes_nothing(tmp_path) -> None:
    recipe = write_tiny_recipe(tmp_path, tmp_path / "out", tmp_path / "cache")
    with DirLock(tmp_path / "out"):  # another run holds the folder
        result = CliRunner().invoke(app, ["train", "--recipe", str(recipe), "--dry-run"])
    # it got past the lock to the plan (which needs data the tiny recipe does not name)
    assert "no sample index" in result.output and "is in use" not in result.output
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [LOCK_FILE]  # only the holder's file


# ------------------------------------------------------------------------- naming a hung or dead rank


class FakeStore:
    """The part of torch's c10d store that RankProgress uses."""

    def __init__(self) -> None:
        self.values: dict[str, bytes] = {}

    def set(self, key: str, value: str) -> None:
        self.values[key] = value.encode()

    def check(self, keys: list[str]) -> bool:
        return all(key in self.values for key in keys)

    def get(self, key: str) -> bytes:
        return self.values[key]


def test_a_collective_timeout_names_the_ranks_behind() -> None:
    store = FakeStore()
    ranks = [RankProgress(rank, 3, timeout_s=0.0, store=store) for rank in range(3)]
    ranks[0].mark(3, "loss average")
    ranks[1].mark(3, "backward and optimizer step", micro=1)
    timeout = RuntimeError("[../gloo/transport/tcp/unbound_buffer.cc:78] Timed out waiting 5000ms for recv")
    explained = ranks[0].explain(timeout)
    assert isinstance(explained, PeerFailed)
    assert explained.message == (
        "ranks 1, 2 did not reach step 3's loss average within parallel.timeout_s (0 s) (rank 1 last seen at step 3's "
        "backward and optimizer step (micro-step 2); rank 2 never reached a step); it is stuck or died — its own "
        "output says which.")
    assert ranks[0].explain(RuntimeError("mat1 and mat2 shapes cannot be multiplied")) is None  # its own error
    ranks[2].mark(3, "loss average")
    ranks[1].mark(3, "loss average")
    assert ranks[0].explain(timeout) is None  # nobody behind: the error passes through unchanged
    early = RankProgress(1, 2, timeout_s=600, store=store)
    early.mark(4, "stop check")
    closed = RuntimeError("[../gloo/transport/tcp/pair.cc:553] Connection closed by peer [127.0.0.1]:1234")
    assert "rank 0 left the run before step 4's stop check" in early.explain(closed).message


# ------------------------------------------------------------------------------------ launcher contract


def test_a_rank_stopped_while_reporting_leaves_no_partial_error_file(tmp_path, monkeypatch) -> None:
    """The launcher reads a failed rank's error file while stopping the others: a rank stopped mid-write must
    leave no file rather than an empty one (torch's agent then failed with a JSONDecodeError of its own)."""
    error_file = tmp_path / "error.json"
    monkeypatch.setenv("TORCHELASTIC_ERROR_FILE", str(error_file))

    def stopped(*args: object) -> None:
        raise KeyboardInterrupt  # the stop arrives before the file is complete

    monkeypatch.setattr("osctl.utils.atomic.os.replace", stopped)
    with pytest.raises(KeyboardInterrupt), reporting_errors_to_launcher():
        raise PeerFailed("rank 1 left the run")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_failing_worker_reports_its_sentence_and_the_summary_names_the_rank(tmp_path, monkeypatch) -> None:
    files = {rank: tmp_path / f"error-{rank}.json" for rank in (0, 1)}

    def fail(rank: int, exc: Exception) -> None:
        monkeypatch.setenv("TORCHELASTIC_ERROR_FILE", str(files[rank]))
        monkeypatch.setenv("RANK", str(rank))
        with pytest.raises(type(exc)), reporting_errors_to_launcher():
            raise exc

    fail(1, RuntimeError("deliberate failure\non rank 1"))
    fail(0, PeerFailed("rank 1 left the run before step 3's loss average"))
    assert json.loads(files[1].read_text())["message"] == "RuntimeError: deliberate failure on rank 1"

    def failure(rank: int, exitcode: int = 1) -> SimpleNamespace:
        data = json.loads(files[rank].read_text()) if rank in files else {}
        return SimpleNamespace(exitcode=exitcode, error_file_data=data, message=data.get("message", ""))

    # rank 1's own error wins over rank 0's (which only says rank 1 left), whatever their times
    error = SimpleNamespace(failures={0: failure(0), 1: failure(1)})
    assert failure_summary(error) == "rank 1 failed first (exit 1): RuntimeError: deliberate failure on rank 1"
    error = SimpleNamespace(failures={0: failure(0), 1: SimpleNamespace(exitcode=-9, error_file_data={}, message="x")})
    assert failure_summary(error).startswith("rank 0 failed first (exit 1): rank 1 left the run before step 3")


DIE_WITH_LAUNCHER = """
import os, sys, time
sys.path.insert(0, {repo!r})
os.environ["OSCTL_LAUNCHER_PID"] = sys.argv[1]
from osctl.parallel.launch import die_with_launcher
print(die_with_launcher(), flush=True)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_worker_whose_launcher_is_already_gone_ends_itself(tmp_path) -> None:
    script = tmp_path / "worker.py"
    script.write_text(DIE_WITH_LAUNCHER.format(repo=str(REPO)))
    # its parent is this test, not the launcher it names: the launcher died before the signal was armed
    gone = subprocess.run([sys.executable, str(script), "1"], capture_output=True, text=True, timeout=60)
    assert gone.returncode == -signal.SIGKILL, gone.stderr
    alive = subprocess.run([sys.executable, str(script), str(os.getpid())], capture_output=True, text=True, timeout=60)
    assert alive.returncode == 0 and alive.stdout.strip() == "True", alive.stderr
