"""The data benchmark still runs end to end (on a few thousand records; its timings are never asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("files", [1, 3])
def test_bench_data_runs_every_command_and_prints_its_figures(tmp_path: Path, files: int) -> None:
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_data.py"), "--records", "3000",
                          "--dir", str(tmp_path), "--repeat", "2", "--no-compile", "--files", str(files)],
                         capture_output=True, text=True, timeout=300, check=True).stdout
    figures = json.loads(out.strip().splitlines()[-1])
    assert set(figures) == {"validate", "validate baseline", "bucket", "bucket baseline", "bucket rebuild"}
    for name, values in figures.items():
        assert values["seconds"] > 0 and values["median_seconds"] >= values["seconds"], name
        assert values["peak_rss_mb"] > 0, name
    assert "bucket rebuild speed-up" in out and "(exit 0)" in out
    index = tmp_path / ("index" if files == 1 else f"parts-{files}/index")
    assert (index / "samples.arrow").is_file()
    recorded = json.loads((index / "index.json").read_text())["fingerprint"]["annotations"]
    assert [entry["records"] for entry in recorded] == ([3000] if files == 1 else [1000] * files)


def test_bench_ckpt_headers_compares_the_readers(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_ckpt_headers.py"), "--size-gb", "0.01",
                          "--reps", "3", "--dir", str(tmp_path)], capture_output=True, text=True, timeout=300,
                         check=True).stdout
    assert "osctl read_header / hand parser:" in out and "safe_open keys only / osctl:" in out
    assert not list(tmp_path.iterdir())  # the generated file is removed


def test_bench_train_step_runs_for_the_wan_family() -> None:
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_train_step.py"), "--family", "wan",
                          "--steps", "2", "--warmup", "1"], capture_output=True, text=True, timeout=600,
                         check=True).stdout
    assert "ratio osctl / bare = " in out and "bare loop step" in out


def test_bench_realsize_reports_mfu_for_every_configuration() -> None:
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_realsize.py"), "--tiny", "--reps", "1",
                          "--checkpointing", "off,selective", "--profile", "--peak-tflops", "1"],
                         capture_output=True, text=True, timeout=600, check=True).stdout
    for label in ("skiparse forward+backward (off)", "dense forward+backward (selective)",
                  "training step (off, AdamW, EMA)", "sampling step 3x8x8 (CFG)"):
        line = next(line for line in out.splitlines() if line.startswith(label))
        assert "MFU" in line and "MFU n/a" not in line and "tokens/s" in line, line
    assert "1 TFLOP/s dense bf16 assumed" in out and "rearrangements: " in out


def test_bench_family_realsize_compares_osctl_with_the_bare_module() -> None:
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_family_realsize.py"), "--tiny", "--steps",
                          "1", "--sample", "--peak-tflops", "1"], capture_output=True, text=True, timeout=600,
                         check=True).stdout
    assert "ratio osctl / bare = " in out and "sampling step (CFG, batch 2)" in out
    assert sum("MFU" in line and "MFU n/a" not in line for line in out.splitlines()) == 2
