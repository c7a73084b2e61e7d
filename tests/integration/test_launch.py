"""`osctl train` under each launcher: osctl's own re-launch (--nproc-per-node), torchrun, and the
deepspeed launcher (which appends --local_rank=N). Every rank joins the process group and reports
its own error with its rank; the run ends at once instead of waiting for a collective timeout.

The recipe names no data (and a checkpoint that does not exist), so every rank fails right after
joining the group: what is checked is the launch path and the error reporting, not training (the
training itself is covered by test_distributed_training.py).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.train_helpers import write_tiny_recipe

pytestmark = [pytest.mark.slow, pytest.mark.multiprocess]

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


@pytest.mark.parametrize("launcher", ["osctl", "torchrun", "deepspeed"])
def test_every_rank_joins_and_reports_its_error(tmp_path, launcher):
    recipe = write_tiny_recipe(tmp_path, tmp_path / "out", tmp_path / "cache")
    train = ["train", "--recipe", str(recipe), "--resume-from-checkpoint", str(tmp_path / "missing"),
             "--set", "parallel.strategy=ddp"]  # the tiny recipe's `single` is refused for 2 processes
    command = {
        "osctl": [sys.executable, "-m", "osctl", *train, "--nproc-per-node", "2"],
        "torchrun": [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                     "-m", "osctl", *train],
        "deepspeed": [str(BIN / "deepspeed"), "--num_gpus", "2", "--master_port", str(_free_port()),
                      "--module", "osctl", *train],
    }[launcher]
    if launcher == "deepspeed" and not (BIN / "deepspeed").exists():
        pytest.skip("the deepspeed launcher is not installed")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "DS_ACCELERATOR": "cpu",
           "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=180, cwd=tmp_path)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, output[-3000:]
    for rank in (0, 1):
        assert f"error: rank {rank}: " in output, output[-3000:]
    if launcher == "osctl":
        assert "failed first" in output, output[-3000:]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]

