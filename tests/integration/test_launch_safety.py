"""`osctl train` on several processes fails safe: workers die with a killed launcher, a stop signal to the
launcher saves and exits 0, one live run per output_dir, a one-process strategy is refused inside
workers, and the rank that failed or hung is named.

Real commands in subprocesses (gloo, 2 CPU processes) on a small generated shapes dataset and the tiny
test model. Waits are liveness checks with generous deadlines, never speed assertions.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest
from typer.testing import CliRunner

from osctl.cli import app
from osctl.synth.shapes import synth_shapes
from osctl.train import checkpoint as ckpt
from osctl.utils.dir_lock import LOCK_FILE
from tests.train_helpers import TINY_RECIPE

pytestmark = [pytest.mark.slow, pytest.mark.multiprocess]

REPO = Path(__file__).resolve().parents[2]
FAULTY = REPO / "tests" / "fixtures" / "osctl_faulty" / "osctl_faulty.py"
TINY_DATA = """data:
  num_frames: 5
  hw_stride: 8
  max_height: 16
  max_width: 16"""
DATA = """data:
  data: {data}
  num_frames: 9
  train_fps: 12
  min_frames: 5
  max_hxw: 1024
  hw_stride: 16
  drop_short_ratio: 0
  group_data: true
  min_bucket_batches: 0
  num_workers: 0"""
DDP = ["--set", "parallel.strategy=ddp", "--set", "train.train_batch_size=1"]
LONG = ["--set", "train.max_steps=100000", "--set", "train.checkpointing_steps=1"]
DEADLINE_S = 300


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synth_shapes(tmp_path_factory.mktemp("shapes"), videos=12, images=6, seed=0).data_txt


def _recipe(folder: Path, data_txt: Path) -> Path:
    path = folder / "recipe.yaml"
    path.write_text(TINY_RECIPE.replace(TINY_DATA, DATA.format(data=data_txt))
                    .format(out=folder / "out", cache=folder / "cache"))
    return path


def _env(**extra: str) -> dict[str, str]:
    paths = [str(REPO), str(REPO / "plugins"), *extra.pop("PATHS", "").split(os.pathsep), os.environ.get("PYTHONPATH", "")]
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(p for p in paths if p), **extra}


def _start(folder: Path, args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """``osctl train`` in the background, its output in folder/stdout.txt and folder/stderr.txt."""
    return subprocess.Popen([sys.executable, "-m", "osctl", "train", *args], cwd=folder, env=env or _env(),
                            stdout=(folder / "stdout.txt").open("wb"), stderr=(folder / "stderr.txt").open("wb"))


def _wait_for(what: str, ready: Callable[[], bool], proc: subprocess.Popen[bytes], folder: Path) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not ready():
        assert proc.poll() is None, f"exited {proc.returncode} before {what}:\n{_output(folder)[-4000:]}"
        assert time.monotonic() < deadline, f"no {what} within {DEADLINE_S} s:\n{_output(folder)[-4000:]}"
        time.sleep(0.2)


def _output(folder: Path) -> str:
    return "".join((folder / name).read_text(errors="replace") for name in ("stdout.txt", "stderr.txt")
                   if (folder / name).exists())


def _alive(process: psutil.Process) -> bool:
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _checkpoints(out: Path) -> list[str]:
    return sorted(p.name for p in out.glob("checkpoint-*"))


def test_workers_die_with_a_killed_launcher(shapes, tmp_path):
    recipe = _recipe(tmp_path, shapes)
    out = tmp_path / "out"
    launcher = _start(tmp_path, ["--recipe", str(recipe), "--nproc-per-node", "2", *DDP, *LONG])
    try:
        workers: list[psutil.Process] = []

        def training() -> bool:
            workers[:] = psutil.Process(launcher.pid).children()
            return len(workers) == 2 and ckpt.latest_checkpoint(out) is not None

        _wait_for("training workers", training, launcher, tmp_path)
    finally:
        launcher.kill()  # kill -9: the launcher cannot tell anyone
        launcher.wait(timeout=60)
    deadline = time.monotonic() + DEADLINE_S
    while any(_alive(w) for w in workers):
        assert time.monotonic() < deadline, f"workers {[w.pid for w in workers if _alive(w)]} outlived their launcher"
        time.sleep(0.2)
    left = _checkpoints(out)
    time.sleep(2)  # nothing writes any more: no checkpoint appears after the launcher died
    assert _checkpoints(out) == left and not list(out.glob(".checkpoint-*.partial"))


def test_sigterm_to_the_launcher_saves_and_exits_0(shapes, tmp_path):
    recipe = _recipe(tmp_path, shapes)
    out = tmp_path / "out"
    launcher = _start(tmp_path, ["--recipe", str(recipe), "--nproc-per-node", "2", *DDP, *LONG])
    try:
        _wait_for("a checkpoint", lambda: ckpt.latest_checkpoint(out) is not None, launcher, tmp_path)
        launcher.send_signal(signal.SIGTERM)
        assert launcher.wait(timeout=DEADLINE_S) == 0, _output(tmp_path)[-4000:]
    finally:
        if launcher.poll() is None:
            launcher.kill()
    text = _output(tmp_path)
    last = ckpt.latest_checkpoint(out)
    state = json.loads((last / ckpt.TRAINER_STATE).read_text())
    assert f"stopped by signal at step {state['step']}; last checkpoint: {last}" in text
    assert state["world_size"] == 2 and ckpt.is_complete(last)


def test_a_second_run_on_the_same_output_dir_is_refused_until_the_first_dies(shapes, tmp_path):
    recipe = _recipe(tmp_path, shapes)
    out = tmp_path / "out"
    holder = _start(tmp_path, ["--recipe", str(recipe), *LONG])
    try:
        def locked() -> bool:
            try:
                return json.loads((out / LOCK_FILE).read_text()).get("pid") == holder.pid
            except (OSError, ValueError):
                return False

        _wait_for("the holder's lock", locked, holder, tmp_path)
        second = CliRunner().invoke(app, ["train", "--recipe", str(recipe), "--set", "train.max_steps=1"])
        assert second.exit_code == 2, second.output
        text = " ".join(second.output.split())
        assert (f"train.output_dir {out} is in use by osctl train (pid {holder.pid} on host {socket.gethostname()} "
                "since ") in text
        assert "wait for it or stop it." in text
    finally:
        holder.kill()  # kill -9: the kernel drops its lock
        holder.wait(timeout=60)
    latest = ckpt.latest_checkpoint(out)
    step = int(latest.name.split("-")[1]) if latest is not None else 0
    third = CliRunner().invoke(app, ["train", "--recipe", str(recipe), "--resume-from-checkpoint", "latest",
                                     "--set", f"train.max_steps={step + 1}"])
    assert third.exit_code == 0, third.output
    assert f"finished at step {step + 1}" in third.output


def test_a_one_process_strategy_is_refused_inside_workers_of_an_outer_launcher(shapes, tmp_path):
    recipe = _recipe(tmp_path, shapes)  # parallel.strategy: single
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "-m", "osctl", "train", "--recipe", str(recipe)]
    proc = subprocess.run(command, env=_env(), capture_output=True, text=True, timeout=DEADLINE_S, cwd=tmp_path)
    output = " ".join((proc.stdout + proc.stderr).split())
    assert proc.returncode != 0
    for rank in (0, 1):
        assert (f"error: rank {rank}: parallel.strategy is 'single' but 2 processes were started; use 'auto' or "
                "'ddp' (or fsdp/deepspeed), or start one process.") in output, output[-3000:]
    assert not list((tmp_path / "out").glob("checkpoint-*"))


@pytest.mark.parametrize("mode", ["raise", "hang"])
def test_the_rank_that_failed_or_hung_is_named(shapes, tmp_path, mode):
    """Rank 1 raises (or stops answering) in its optimizer step 3 (the test plugin ``faulty_ddp``): rank 0
    names it instead of dumping gloo's error, and the launcher's summary quotes the rank that caused it."""
    plugins = tmp_path / "plugins"
    info = plugins / "osctl_faulty-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: osctl_faulty\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[osctl]\nfaulty = osctl_faulty\n")
    shutil.copy(FAULTY, plugins / FAULTY.name)
    recipe = _recipe(tmp_path, shapes)
    sets = ["--set", "parallel.strategy=faulty_ddp", "--set", "train.train_batch_size=1", "--set",
            "parallel.timeout_s=10", "--set", "train.max_steps=6", "--set", "train.checkpointing_steps=100"]
    env = _env(PATHS=str(plugins), OSCTL_TEST_FAULT=f"{mode}:1:3")
    proc = subprocess.run([sys.executable, "-m", "osctl", "train", "--recipe", str(recipe), "--nproc-per-node", "2",
                           *sets], env=env, capture_output=True, text=True, timeout=DEADLINE_S, cwd=tmp_path)
    output = " ".join((proc.stdout + proc.stderr).split())
    assert proc.returncode == 1, output[-4000:]
    assert "pair.cc" not in output and "unbound_buffer.cc" not in output  # no gloo dump
    if mode == "raise":
        failed = "RuntimeError: deliberate failure on rank 1 at step 3"
        assert f"error: rank 1: internal error: {failed}" in output, output[-4000:]
        assert ("error: rank 0: rank 1 left the run before step 3's loss average (rank 1 last seen at step 3's "
                "backward and optimizer step)") in output, output[-4000:]
        assert f"osctl: rank 1 failed first (exit 1): {failed}" in output
    else:
        hung = ("rank 1 did not reach step 3's loss average within parallel.timeout_s (10 s) (rank 1 last seen at step "
                "3's backward and optimizer step); it is stuck or died")
        assert f"error: rank 0: {hung}" in output, output[-4000:]
        assert f"osctl: rank 0 failed first (exit 1): {hung}" in output
