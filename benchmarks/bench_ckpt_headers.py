"""Time reading one safetensors header: ``safetensors.safe_open`` vs a hand-written parser, in one run.

``osctl ckpt inspect`` (and ``ckpt convert``'s checks) describe every tensor of a file from its header
alone. This compares, on the same generated DiT-like file (see ``bench_ckpt_inspect.py``), interleaved
round by round, medians reported:

- ``osctl.ckpt.headers.read_header(path)``: what osctl calls, ``safe_open(path, framework="numpy")`` and
  every tensor's name, shape, dtype and byte range as ``TensorInfo`` objects, plus the metadata;
- ``hand_parser(path)``: the way osctl read headers before (``struct`` + ``json`` + the same objects and
  the size checks), kept here as the baseline;
- ``safe_open`` alone, listing the keys (the least work the library can do).

Each call runs in this process with the file in the page cache, so the figures are the CPU cost of the
header (a few hundred microseconds to milliseconds), not of the disk.

    .venv/bin/python benchmarks/bench_ckpt_headers.py [--size-gb 0.4] [--width 1536] [--reps 200] [--dir /tmp]

``--width 256`` gives many small tensors (about 3,000 at 0.4 GB), where the header itself is large.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import struct
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench_ckpt_inspect import layout, write_checkpoint


def hand_parser(path: Path) -> dict[str, object]:
    """osctl's former reader, in short: ``u64 N`` + ``N`` bytes of JSON, each entry checked and described."""
    from osctl.ckpt.headers import DTYPES, TensorInfo

    size = path.stat().st_size
    with path.open("rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        if 8 + length > size:
            raise ValueError("truncated header")
        header = json.loads(handle.read(length).decode("utf-8").rstrip(" "))
    header.pop("__metadata__", None)
    data_start = 8 + length
    tensors: dict[str, object] = {}
    furthest = 0
    for name, entry in header.items():
        dtype, itemsize = DTYPES[entry["dtype"]]
        begin, end = entry["data_offsets"]
        if end - begin != int(math.prod(entry["shape"]) * itemsize):
            raise ValueError(f"{name}: size does not match")
        tensors[name] = TensorInfo(name=name, shape=tuple(entry["shape"]), dtype=dtype, file=path.name,
                                   begin=data_start + begin, end=data_start + end)
        furthest = max(furthest, end)
    if data_start + furthest != size:
        raise ValueError("file not covered")
    return tensors


def library_keys(path: Path) -> list[str]:
    """Only open the file and list its tensor names through ``safetensors.safe_open``."""
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as handle:
        return list(handle.keys())


def osctl_header(path: Path) -> object:
    """osctl's reader (what ``ckpt inspect`` calls): ``safe_open`` underneath."""
    from osctl.ckpt.headers import read_header

    return read_header(path)


def main() -> None:
    """Generate the file, time each reader ``--reps`` times, interleaved, and print medians and ratios."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-gb", type=float, default=0.4, help="file size in GB (10^9 bytes)")
    parser.add_argument("--width", type=int, default=1536, help="hidden width of the generated blocks")
    parser.add_argument("--reps", type=int, default=200, help="rounds; each round calls every reader once")
    parser.add_argument("--dir", type=Path, default=None, help="where to write the file (default: a temp folder)")
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="bench_headers_", dir=args.dir))
    path = folder / "dit.safetensors"
    try:
        tensors = layout(int(args.size_gb * 1e9), args.width)
        size = write_checkpoint(path, tensors)
        print(f"generated {path}: {size / 1e9:.2f} GB, {len(tensors)} tensors")
        readers: dict[str, Callable[[Path], object]] = {
            "osctl read_header": osctl_header,
            "hand parser (before)": hand_parser,
            "safe_open + keys only": library_keys,
        }
        for reader in readers.values():  # warm-up: imports, page cache
            reader(path)
        samples: dict[str, list[float]] = {label: [] for label in readers}
        for _ in range(args.reps):
            for label, reader in readers.items():
                start = time.perf_counter()
                reader(path)
                samples[label].append(time.perf_counter() - start)
        medians = {label: statistics.median(values) for label, values in samples.items()}
        for label, value in medians.items():
            print(f"{label:28s} {value * 1e3:8.3f} ms  (median of {args.reps}, best {min(samples[label]) * 1e3:.3f})")
        ours = medians["osctl read_header"]
        print(f"osctl read_header / hand parser: {ours / medians['hand parser (before)']:.2f}x the time")
        print(f"safe_open keys only / osctl:     {medians['safe_open + keys only'] / ours:.2f}x the time")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
