"""Time ``osctl ckpt inspect`` on a generated 2 GB safetensors checkpoint; compare with loading it.

The file mimics a large DiT: ``--layers`` transformer blocks of bf16 attention/MLP weights plus fp32
norms and embeddings, streamed to disk block by block (never held in memory). Each measurement runs
in its own subprocess, so its peak RSS (``ru_maxrss`` from ``os.wait4``) and wall time are that
command's alone:

- ``osctl ckpt inspect FILE --json`` (the target: < 1 s and < 200 MB);
- the same with ``--tensors`` (every tensor listed);
- the baseline: ``safetensors.torch.load_file(FILE)`` in a bare Python process.

The file is written once and stays in the page cache, so the baseline is the best case for loading.

    .venv/bin/python benchmarks/bench_ckpt_inspect.py [--size-gb 2] [--reps 3] [--dir /tmp] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

_ITEMSIZE = {"BF16": 2, "F32": 4}


def layout(size_bytes: int, width: int) -> list[tuple[str, str, list[int]]]:
    """(name, dtype, shape) of a DiT-like state dict of about ``size_bytes`` bytes."""
    per_block = [
        ("attn1.to_q.weight", "BF16", [width, width]), ("attn1.to_k.weight", "BF16", [width, width]),
        ("attn1.to_v.weight", "BF16", [width, width]), ("attn1.to_out.0.weight", "BF16", [width, width]),
        ("attn2.to_q.weight", "BF16", [width, width]), ("attn2.to_k.weight", "BF16", [width, width]),
        ("attn2.to_v.weight", "BF16", [width, width]), ("attn2.to_out.0.weight", "BF16", [width, width]),
        ("ff.net.0.proj.weight", "BF16", [4 * width, width]), ("ff.net.2.weight", "BF16", [width, 4 * width]),
        ("norm1.weight", "F32", [width]), ("norm2.weight", "F32", [width]), ("scale_shift_table", "F32", [6, width]),
    ] + [(f"{name}.bias", "F32", [width]) for name in ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn2.to_q")]
    block_bytes = sum(_ITEMSIZE[d] * _numel(s) for _, d, s in per_block)
    tensors = [("pos_embed.proj.weight", "F32", [width, 8, 1, 2, 2]), ("caption_projection.linear_1.weight", "F32",
                                                                       [width, 4096])]
    layers = max(1, -(-(size_bytes - sum(_ITEMSIZE[d] * _numel(s) for _, d, s in tensors)) // block_bytes))
    for index in range(layers):
        tensors += [(f"transformer_blocks.{index}.{name}", dtype, shape) for name, dtype, shape in per_block]
    tensors += [("proj_out.weight", "F32", [32, width]), ("proj_out.bias", "F32", [32])]
    return tensors


def _numel(shape: list[int]) -> int:
    count = 1
    for dim in shape:
        count *= dim
    return count


def write_checkpoint(path: Path, tensors: list[tuple[str, str, list[int]]], chunk: int = 1 << 24) -> int:
    """Write a valid safetensors file tensor by tensor (pseudo-random bytes, a few MB of memory)."""
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, dtype, shape in tensors:
        size = _ITEMSIZE[dtype] * _numel(shape)
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    block = os.urandom(chunk)
    with path.open("wb") as handle:
        handle.write(struct.pack("<Q", len(raw)) + raw)
        remaining = offset
        while remaining:
            step = min(chunk, remaining)
            handle.write(block[:step])
            remaining -= step
    return path.stat().st_size


def measure(command: list[str]) -> tuple[float, float]:
    """(wall seconds, peak RSS in MB) of one subprocess."""
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    elapsed = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        stderr = process.stderr.read().decode() if process.stderr else ""
        raise SystemExit(f"{' '.join(command)} failed ({process.returncode}): {stderr[-2000:]}")
    if process.stderr:
        process.stderr.close()
    return elapsed, usage.ru_maxrss / 1024  # ru_maxrss is in KiB on Linux


def main() -> None:
    """Generate the checkpoint, run each measurement ``--reps`` times and print medians and ratios."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-gb", type=float, default=2.0, help="checkpoint size in GB (10^9 bytes)")
    parser.add_argument("--width", type=int, default=1536, help="hidden width of the generated blocks")
    parser.add_argument("--reps", type=int, default=3, help="repetitions of each measurement (median reported)")
    parser.add_argument("--dir", type=Path, default=None, help="where to write the file (default: a temp folder)")
    parser.add_argument("--keep", action="store_true", help="keep the generated file")
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="bench_ckpt_", dir=args.dir))
    path = folder / "dit.safetensors"
    try:
        tensors = layout(int(args.size_gb * 1e9), args.width)
        start = time.perf_counter()
        size = write_checkpoint(path, tensors)
        print(f"generated {path}: {size / 1e9:.2f} GB, {len(tensors)} tensors in {time.perf_counter() - start:.1f} s")
        osctl = [sys.executable, "-m", "osctl", "ckpt", "inspect", str(path), "--json"]
        runs = {
            "osctl ckpt inspect --json": osctl,
            "osctl ckpt inspect --json --tensors": [*osctl, "--tensors"],
            "safetensors.torch.load_file (baseline)": [
                sys.executable, "-c", f"from safetensors.torch import load_file; load_file({str(path)!r})"],
        }
        results: dict[str, tuple[float, float]] = {}
        for label, command in runs.items():
            samples = [measure(command) for _ in range(args.reps)]
            results[label] = (statistics.median(s[0] for s in samples), statistics.median(s[1] for s in samples))
            print(f"{label:42s} {results[label][0]:7.3f} s  {results[label][1]:8.1f} MB peak RSS "
                  f"(median of {args.reps})")
        inspect_s, inspect_mb = results["osctl ckpt inspect --json"]
        base_s, base_mb = results["safetensors.torch.load_file (baseline)"]
        print(f"inspect vs load_file: {base_s / inspect_s:.1f}x faster, {base_mb / inspect_mb:.1f}x less memory")
        verdict = "meets" if inspect_s < 1.0 and inspect_mb < 200 else "MISSES"
        print(f"target (< 1 s, < 200 MB): {verdict} ({inspect_s:.3f} s, {inspect_mb:.0f} MB)")
    finally:
        if args.keep:
            print(f"kept {path}")
        else:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
