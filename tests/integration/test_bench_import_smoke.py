"""The import benchmark still runs end to end (a few clips, one round, no Ray; its timings are never asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_bench_import_runs_every_measurement_and_prints_its_figures(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_import.py"), "--clips", "6", "--rounds", "1",
                          "--dir", str(tmp_path), "--no-ray"], capture_output=True, text=True, timeout=300,
                         check=True).stdout
    payload = json.loads(out.strip().splitlines()[-1])
    assert payload["clips"] == 6 and payload["ray_startup_seconds"] is None
    assert set(payload["figures"]) == {"bare", "bare_1thread", "bare_header", "local", "local_1", "rerun"}
    for name, values in payload["figures"].items():
        assert values["files_per_s"] > 0 and values["median_seconds"] >= values["seconds"], name
    assert set(payload["ratios"]) == {"local_vs_bare", "local_vs_bare_median", "local_vs_bare_1thread",
                                      "local_vs_bare_1thread_median", "local_vs_bare_header", "local_1_vs_bare",
                                      "cpu_bound_local_vs_bare"}
    assert "(target >= 1.8)" in out
    assert len(list((tmp_path / "clips").glob("*.mp4"))) == 6
