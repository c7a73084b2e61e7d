"""The memory plan against measured peaks on CPU: seven configurations (tiny and small models, with and without
gradient checkpointing (full and selective), LoRA, offload), each measured in a fresh process (``memory_probe.py`` explains how).

Sizes are chosen so that each peak is 100 MB or more: the resident-set measurement has a floor of about 10 MB
(small allocations glibc keeps in its arenas, the batch and the data source), which would dominate a
20 MB peak of the tiny model at 16 x 16 pixels."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

PROBE = Path(__file__).with_name("memory_probe.py")
REPO = Path(__file__).resolve().parents[2]
SMALL = ["model.num_attention_heads=8", "model.attention_head_dim=48"]  # 384 wide, about 10 M parameters
CONFIGS = {  # smallest peak first: memory a configuration freed is not reused by a larger one after it
    "tiny-checkpointing": {"sets": ["train.gradient_checkpointing=true"], "size": 128, "batch": 4},
    "small-lora": {"sets": [*SMALL, "train.lora={rank: 8}"], "size": 64},
    "small-lora-offload": {"sets": [*SMALL, "train.lora={rank: 8}", "train.offload={blocks: 2}"], "size": 64},
    "tiny": {"sets": [], "size": 128, "batch": 4},
    "small-checkpointing": {"sets": [*SMALL, "train.gradient_checkpointing=true"], "size": 64},
    "small-selective": {"sets": [*SMALL, "train.gradient_checkpointing=selective"], "size": 64},
    "small": {"sets": SMALL, "size": 64},
}


@pytest.fixture(scope="module")
def measured(tmp_path_factory) -> dict[str, dict]:
    """Every configuration measured in one fresh process (imports and kernel warm-up paid once)."""
    results = probe(list(CONFIGS.values()), tmp_path_factory.mktemp("probe"))
    return dict(zip(CONFIGS, results, strict=True))


def probe(spec: list[dict], folder: Path) -> list[dict]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MALLOC_MMAP_THRESHOLD_": "65536",
           "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "plugins")])}
    proc = subprocess.run([sys.executable, str(PROBE), json.dumps(spec), str(folder)], env=env, capture_output=True,
                          text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("name", list(CONFIGS))
def test_estimate_is_within_20_percent_of_the_measured_peak(name, measured):
    result = measured[name]
    ratio = result["estimated"] / result["measured"]
    assert 0.8 <= ratio <= 1.2, (name, ratio, result)
