"""Re-measure each systems trick of the data commands against the plain library way, in one run.

Usage::

    python benchmarks/bench_tricks.py [--dir /tmp/osctl-bench-data] [--records 1000000] [--rounds 5]
                                      [--variants tricks,plain_pool,...]

Every variant is the current osctl with one trick replaced by the plain way (``tricks`` replaces
nothing), run as ``osctl data validate`` / ``osctl data bucket`` processes on the benchmark file of
``benchmarks/bench_data.py`` (generated once, 1,000,000 records). Each round runs every variant of
every command once, in turn, so slow phases of a shared machine hit all of them; the medians of wall
time and of CPU time (user + system of the command and its waited-for worker processes: what other
jobs on the machine change least) are printed, with the ratio to ``tricks``. Every run's output
(the printed report, and the index columns for ``bucket``) must equal the ``tricks`` run's: a plain
way that changed a result would not be a replacement.

Variants (the trick each replaces; see benchmarks/README.md, "Systems tricks measured", also for the
two tricks this measurement removed: writing the index's metadata last, and ``os._exit``):

- ``plain_strings``: the path facts of ``data validate`` with ``pyarrow.compute`` only, instead of numpy
  passes over the string buffers and the 64-bit hashes of :mod:`osctl.data._fast.strings`;
- ``plain_release``: a replaced index freed by the rename itself, instead of a hidden hard link deleted on
  a background thread (``release_old_later`` in :mod:`osctl.utils.atomic`);
- ``plain_pool``: the slices of large JSON files decoded by a ``concurrent.futures.ProcessPoolExecutor``
  (fork) returning each slice as Arrow IPC bytes, instead of the hand-rolled pool of
  :mod:`osctl.data._fast.pool` (work tokens in a pipe, results in shared memory);
- ``plain_numbers``: numbers gathered by :func:`osctl.data.columns.numbers_plain` only, not read
  through their msgpack encoding (:mod:`osctl.data._fast.numbers`);
- ``numpy_hugepages``: numpy's default transparent huge pages for large arrays (not turned off);
- ``mimalloc``: Arrow's default memory pool (not the system allocator).

Run with ``--help`` for options.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
COMMANDS = ("validate", "bucket", "rebuild")
"""``rebuild``: ``data bucket`` over the index of the previous run (as after a recipe change)."""


# ------------------------------------------------------------------------------------------- variants


def _plain_pool() -> None:
    """Decode the slices in a ProcessPoolExecutor whose workers send each slice back as Arrow IPC bytes."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    import pyarrow as pa

    from osctl.data._fast import pool

    def decode_slices(items: list[tuple[int, int, int]], workers: int, decode: Callable[..., Any],
                      start_background: Callable[[], None] | None = None) -> list[Any]:
        if min(workers, len(items)) < 2:
            if start_background is not None:
                start_background()
            return [decode(*item) for item in items]
        with ProcessPoolExecutor(min(workers, len(items)), mp_context=multiprocessing.get_context("fork")) as ex:
            futures = [ex.submit(_packed, decode, item) for item in items]
            if start_background is not None:
                start_background()
            return [_unpacked(future.result()) for future in futures]

    def _unpacked(packed: tuple[Any, list[Any]] | None) -> Any:
        if packed is None:
            return None
        data, issues = packed
        return pool._table(pa.ipc.open_stream(data).read_next_batch(), issues)

    pool.decode_slices_parallel = decode_slices  # type: ignore[assignment]


def _packed(decode: Callable[..., Any], item: tuple[int, int, int]) -> tuple[Any, list[Any]] | None:
    """In a worker: one slice decoded, as an Arrow IPC stream and its issues (None when it did not decode)."""
    import pyarrow as pa

    from osctl.data._fast import pool

    table = decode(*item)
    if table is None:
        return None
    batch = pool._batch(table)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, batch.schema) as writer:
        writer.write_batch(batch)
    return sink.getvalue(), [(i, issue.code, issue.field, issue.message) for i, issue in table.issues]


def _plain_strings() -> None:
    """The path checks of ``data validate`` with pyarrow.compute only (no numpy work on string buffers)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    import osctl.data.paths as paths
    import osctl.data.validate as validate
    from osctl.data._fast import strings

    def mask(array: Any) -> np.ndarray:
        return pc.fill_null(array, False).to_numpy(zero_copy_only=False)

    def path_facts(raw: Any) -> Any:
        odd = mask(pc.match_substring_regex(raw, paths.ODD_SEGMENTS))
        from_end = pc.find_substring(pc.binary_reverse(pc.cast(raw, pa.binary())), "/")
        length = pc.binary_length(raw)
        slash = pc.if_else(pc.greater_equal(from_end, 0), pc.subtract(pc.subtract(length, 1), from_end), -1)
        return paths.PathFacts(valid=raw.is_valid().to_numpy(zero_copy_only=False),
                               absolute=mask(pc.starts_with(raw, "/")), odd=odd,
                               dotdot=paths._matching(raw, np.flatnonzero(odd), paths.DOTDOT_SEGMENT),
                               slash=pc.fill_null(slash, -1).to_numpy(zero_copy_only=False).astype(np.int64))

    def folders(raw: Any, facts: Any) -> list[str]:
        parents = pc.if_else(pc.match_substring(raw, "/"), pc.replace_substring_regex(raw, "/[^/]*$", ""), "")
        return pc.unique(parents).drop_null().to_pylist()

    validate.path_facts = path_facts  # type: ignore[assignment]
    paths._folders = folders  # type: ignore[assignment]
    # every valid record is a candidate for repeats: all of them are dictionary-encoded, no 64-bit hash first
    strings.hashes = lambda array, lengths=None: np.zeros(len(array), dtype=np.uint64)  # type: ignore[assignment]


def _keep_old_file() -> None:
    """Replace the previous index by a plain rename (the old file is freed by the rename itself)."""
    import osctl.utils.atomic as atomic

    atomic._link_aside = lambda target: None  # type: ignore[assignment]


def _plain_numbers() -> None:
    import osctl.data.columns as columns

    columns.numbers_from_msgpack = lambda rows: None  # type: ignore[assignment]


def _numpy_hugepages() -> None:
    os.environ["NUMPY_MADVISE_HUGEPAGE"] = "1"  # osctl leaves a value the user set alone


def _mimalloc() -> None:
    os.environ["ARROW_DEFAULT_MEMORY_POOL"] = "mimalloc"  # osctl leaves a value the user set alone


VARIANTS: dict[str, tuple[Callable[[], None] | None, tuple[str, ...]]] = {
    "tricks": (None, COMMANDS),
    "plain_strings": (_plain_strings, ("validate",)),
    "plain_release": (_keep_old_file, ("rebuild",)),
    "plain_pool": (_plain_pool, COMMANDS),
    "plain_numbers": (_plain_numbers, COMMANDS),
    "numpy_hugepages": (_numpy_hugepages, COMMANDS),
    "mimalloc": (_mimalloc, COMMANDS),
}
"""Variant -> (what it changes before the command runs, the commands it can change)."""


def run_variant(name: str, args: list[str]) -> None:
    """In the measured process: apply variant ``name``, then run the osctl CLI with ``args``."""
    change = VARIANTS[name][0]
    if change is not None:
        change()
    from osctl.cli import main

    sys.argv = ["osctl", *args]
    main()


# ----------------------------------------------------------------------------------------- measuring


def _measure(cmd: list[str], stdout: Path) -> tuple[float, float, float, int]:
    """Run ``cmd`` with its output in ``stdout`` (errors next to it); (wall s, CPU s of it and its waited-for
    workers, peak RSS MB, exit)."""
    start = time.perf_counter()
    with open(stdout, "wb") as out, open(stdout.with_suffix(".err"), "wb") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, os.waitstatus_to_exitcode(status)


def _digest(stdout: Path, index: Path | None) -> str:
    """What a run produced: its printed report and, for bucket, the index columns (not the build time)."""
    digest = hashlib.sha256(stdout.read_bytes())
    if index is not None and (index / "samples.arrow").is_file():
        import pyarrow as pa

        table = pa.ipc.open_file(pa.memory_map(str(index / "samples.arrow"))).read_all()
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, table.schema.remove_metadata()) as writer:
            writer.write_table(table.replace_schema_metadata(None))
        digest.update(sink.getvalue().to_pybytes())
    return digest.hexdigest()


def main() -> None:
    """Run every variant of every command, interleaved; print medians, ratios and whether outputs agree."""
    parser = argparse.ArgumentParser(description="osctl's data-command tricks vs the plain library way")
    parser.add_argument("--dir", type=Path, default=Path("/tmp/osctl-bench-data"))
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated, from: " + ", ".join(VARIANTS))
    parser.add_argument("--commands", default=",".join(COMMANDS))
    parser.add_argument("--seed", type=int, default=0, help="shuffles the order of the runs inside each round")
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    args, rest = parser.parse_known_args()
    if args.variant:
        run_variant(args.variant, rest)
        return
    sys.path.insert(0, str(HERE))
    from bench_data import compile_sources, ensure_data

    data_txt = ensure_data(args.dir, args.records)
    compile_sources()
    variants = [v for v in args.variants.split(",") if v]
    if "tricks" not in variants:
        variants.insert(0, "tricks")
    jobs = [(command, variant) for command in args.commands.split(",") for variant in variants
            if command in VARIANTS[variant][1]]
    work = args.dir / "tricks"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    me = [sys.executable, str(Path(__file__).resolve())]
    runs: dict[tuple[str, str], list[tuple[float, float, float, int]]] = {job: [] for job in jobs}
    outputs: dict[tuple[str, str], set[str]] = {job: set() for job in jobs}
    loads = [os.getloadavg()[0]]
    order = random.Random(args.seed)

    def command_line(command: str, variant: str) -> tuple[list[str], Path | None]:
        if command == "validate":
            return [*me, "--variant", variant, "data", "validate", str(data_txt)], None
        index = work / command  # one folder per command: the printed report names it
        return [*me, "--variant", variant, "data", "bucket", str(data_txt), "--recipe", str(args.dir / "recipe.yaml"),
                "--out", str(index)], index

    if any(command == "rebuild" for command, _ in jobs):  # "rebuild" writes over the index of the run before
        subprocess.run(command_line("rebuild", "tricks")[0], check=True, stdout=subprocess.DEVNULL)
    for _ in range(args.rounds):
        order.shuffle(jobs)
        for command, variant in jobs:
            cmd, index = command_line(command, variant)
            if command == "bucket":
                shutil.rmtree(index, ignore_errors=True)  # type: ignore[arg-type]
            stdout = work / f"{command}-{variant}.out"
            runs[(command, variant)].append(_measure(cmd, stdout))
            outputs[(command, variant)].add(_digest(stdout, index))
        loads.append(os.getloadavg()[0])
    results: dict[str, dict[str, Any]] = {}
    for command in args.commands.split(","):
        base = runs.get((command, "tricks"))
        if not base:
            continue
        base_wall, base_cpu = statistics.median(r[0] for r in base), statistics.median(r[1] for r in base)
        for variant in variants:
            done = runs.get((command, variant))
            if not done:
                continue
            wall, cpu = statistics.median(r[0] for r in done), statistics.median(r[1] for r in done)
            same = outputs[(command, variant)] == outputs[(command, "tricks")] and len(outputs[(command, variant)]) == 1
            results[f"{command}/{variant}"] = {
                "wall_median_s": round(wall, 3), "cpu_median_s": round(cpu, 3),
                "wall_best_s": round(min(r[0] for r in done), 3), "cpu_best_s": round(min(r[1] for r in done), 3),
                "wall_vs_tricks": round(wall / base_wall, 3), "cpu_vs_tricks": round(cpu / base_cpu, 3),
                "peak_rss_mb": round(max(r[2] for r in done)), "exit": sorted({r[3] for r in done}), "same_output": same}
            res = results[f"{command}/{variant}"]
            print(f"{command:8s} {variant:16s} wall {wall:6.2f} s ({res['wall_vs_tricks']:5.3f}x)  CPU {cpu:6.2f} s "
                  f"({res['cpu_vs_tricks']:5.3f}x)  best {res['wall_best_s']:5.2f} / {res['cpu_best_s']:5.2f} s  "
                  f"{res['peak_rss_mb']:5d} MB  exit {res['exit']}  same output: {same}", flush=True)
    print(f"\n{args.rounds} round(s); load average {min(loads):.1f}-{max(loads):.1f} during the runs "
          f"(other processes share these cores); medians, ratios to 'tricks'")
    print(json.dumps({"loads": loads, "results": results}))


if __name__ == "__main__":
    main()
