"""The built-in demo, shortened: synth -> validate -> bucket -> train -> kill -> resume -> sample -> eval.

Real commands in subprocesses on generated data, as a user runs them; asserts the files and reports
each step produces (not the accuracy, which needs the full-length run of `make demo`).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def osctl(*args: str, expect: int = 0, cwd: Path = REPO) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "osctl", *args], cwd=cwd, env=ENV, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == expect, f"osctl {' '.join(args)} -> {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.mark.slow
def test_shapes_demo_end_to_end(tmp_path):
    data, out, samples = tmp_path / "data", tmp_path / "train", tmp_path / "samples"
    sets = ["--set", f"data.data={data / 'data.txt'}", "--set", f"train.output_dir={out}",
            "--set", "train.train_batch_size=2", "--set", "train.checkpointing_steps=2",
            "--set", "train.log_interval=1", "--set", "data.num_workers=0",
            "--set", f"text_encoder.cache_dir={tmp_path / 'cache'}"]
    recipe = str(REPO / "recipes" / "demo.yaml")

    # 1. a real dataset: mp4/jpg/png, JSON + pkl annotations, two roots
    osctl("data", "synth", "shapes", str(data), "--videos", "12", "--images", "4", "--seed", "3")
    assert (data / "data.txt").is_file() and (data / "held_out_prompts.txt").is_file()

    # 2. validate (decoding every file) and bucket
    report = json.loads(osctl("data", "validate", str(data / "data.txt"), "--probe", "--json").stdout)
    assert report["ok"] is True
    bucket = osctl("data", "bucket", str(data / "data.txt"), "--recipe", recipe, *sets, "--json",
                   "--plot", str(tmp_path / "buckets.png")).stdout
    buckets = json.loads(bucket)
    assert (tmp_path / "buckets.png").stat().st_size > 0
    assert buckets["kept"] == 16 and buckets["buckets"]  # every clip gives a 5, 7 or 9-frame sample at 4 fps
    assert (out / "index" / "samples.arrow").is_file()

    # 3. train, interrupted by SIGTERM once a checkpoint exists: it saves and exits cleanly
    proc = subprocess.Popen([sys.executable, "-m", "osctl", "train", "--recipe", recipe, *sets,
                             "--set", "train.max_steps=100000"], cwd=REPO, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not list(out.glob("checkpoint-*/manifest.json")):  # any: the oldest are rotated out
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.time() < deadline, "no checkpoint within 5 minutes"
        time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr[-3000:]
    assert "stopped by signal" in stdout
    steps = sorted(int(p.name.split("-")[1]) for p in out.glob("checkpoint-*"))
    last = steps[-1]
    assert 2 <= last < 100000
    state = json.loads((out / f"checkpoint-{last}" / "trainer_state.json").read_text())
    assert state["step"] == last

    # 4. resume from the latest checkpoint and finish two more steps
    resumed = osctl("train", "--recipe", recipe, *sets, "--set", f"train.max_steps={last + 2}")
    assert f"finished at step {last + 2}" in resumed.stdout
    assert f"step {last + 2:>6}/{last + 2}  loss " in resumed.stdout and "  ETA 0:00:00" in resumed.stdout
    assert (out / "logs" / "curves.png").stat().st_size > 0  # redrawn at each checkpoint
    metrics = [json.loads(line) for line in (out / "logs" / "metrics.jsonl").read_text().splitlines()]
    assert metrics[-1]["step"] == last + 2
    assert (out / f"checkpoint-{last + 2}" / "model_ema" / "config.json").is_file()

    # 5. sample the held-out prompts from the newest checkpoint, then evaluate
    osctl("sample", "--checkpoint", str(out), "--prompts", str(data / "held_out_prompts.txt"), "-o", str(samples),
          "--set", "sample.num_sampling_steps=3", "--set", "sample.num_samples_per_prompt=1", "--grid")
    videos = sorted(samples.glob("0*.mp4"))
    held_out = [p for p in (data / "held_out_prompts.txt").read_text().splitlines() if p.strip()]
    assert len(videos) == len(held_out) == 6
    assert all(v.with_suffix(".json").is_file() for v in videos)
    assert list(samples.glob("grid-*.gif")) and list(samples.glob("grid-*.mp4"))
    scores = json.loads(osctl("eval", "shapes", str(samples), "--json").stdout)
    assert scores["totals"]["samples"] == len(videos)
    for attribute in ("color", "motion", "shape"):
        assert 0.0 <= scores["totals"][attribute]["accuracy"] <= 1.0
