"""kill -9 while a checkpoint is being written: resume picks the previous complete checkpoint."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from osctl.train import checkpoint as ckpt
from tests.train_helpers import write_tiny_recipe

REPO = Path(__file__).resolve().parents[2]

SCRIPT = """
import sys
sys.path.insert(0, {repo!r})
from osctl.plugin_manager import default_registry
from osctl.recipe.load import load_recipe
from osctl.recipe.validate import check_recipe
from osctl.train.run import TrainOptions, run_training
from tests.train_helpers import SyntheticClips
registry = default_registry()
checked = check_recipe(load_recipe({recipe!r}, sys.argv[1:]), registry)
te = registry.build("text_encoder", "tiny_t5", checked.components["text_encoder"])
result = run_training(checked, registry, TrainOptions(data_source=SyntheticClips(te.tokenize)))
print("final", result.final_step)
"""


@pytest.mark.slow
def test_sigkill_during_checkpoint_write_resumes_from_the_previous_one(tmp_path):
    out = tmp_path / "out"
    recipe = write_tiny_recipe(tmp_path, out, tmp_path / "cache")
    script = tmp_path / "train.py"
    script.write_text(SCRIPT.format(repo=str(REPO), recipe=str(recipe)))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, str(script), "train.max_steps=1000", "train.checkpointing_steps=1"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    caught_partial = False
    try:
        # wait for a first complete checkpoint, then for a save in progress, and kill -9 right then
        while time.time() < deadline and proc.poll() is None:
            if ckpt.latest_checkpoint(out) is not None and list(out.glob(".checkpoint-*.partial")):
                caught_partial = True
                break
            time.sleep(0.002)
        assert proc.poll() is None, proc.communicate()[1][-2000:]
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    assert caught_partial, "never saw a checkpoint being written"
    latest = ckpt.latest_checkpoint(out)
    assert latest is not None and ckpt.is_complete(latest)
    step = int(latest.name.split("-")[1])
    # the partial folder of the killed save is ignored, and resuming continues from `latest`
    done = subprocess.run([sys.executable, str(script), f"train.max_steps={step + 1}",
                           "train.resume_from_checkpoint=latest"], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"final {step + 1}" in done.stdout
    assert ckpt.is_complete(out / f"checkpoint-{step + 1}")
