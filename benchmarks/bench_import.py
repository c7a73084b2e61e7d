"""Benchmark ``osctl data import`` (issue 26): files probed per second, osctl vs a bare PyAV loop, and Ray vs local.

Usage::

    python benchmarks/bench_import.py [--clips 1000] [--dir /tmp/osctl-bench-import] [--rounds 3]
                                      [--workers 2] [--no-ray]

Writes ``--clips`` short H.264 clips once (1 s, 24 fps, 96x128, a moving gradient; cached in ``--dir``),
then measures, round after round (the machine is shared, so every figure is taken in the same run; each
round runs all of them, starting with a different one each time):

- **bare PyAV, same work**: one process, a plain loop that lists the folder and, for each file, opens
  it with PyAV, demuxes and counts every video packet, decodes the first frame and reads fps, size and
  codec -- what osctl's probe does, without osctl;
- **bare PyAV, same work, one decoder thread**: the same loop with the decoder setting osctl's probe
  uses (PyAV starts decoder threads by default, which cost more than decoding one frame): osctl's
  figure against this one is what running on several processes alone brings;
- **bare PyAV, header only**: the same loop reading only the container header (``stream.frames``,
  rate, size, codec): the least a script can do, shown for context (it cannot see a truncated file);
- **osctl, local engine**: ``import_media`` with ``--workers`` processes into an empty output folder:
  listing, probing, captions, the journal and the annotation files, all included; and with 1 worker;
- **osctl rerun**: the same import again on the unchanged folder (nothing is probed);
- **osctl, Ray engine** (unless ``--no-ray`` or Ray is missing): the import on a local Ray instance
  with ``--workers`` CPUs, started once before the rounds (its start-up is reported separately: a
  cluster is started once and then serves many jobs).

Prints files per second (best and median round), the CPU time per file (this process and the local
engine's workers; Ray workers are not counted) and the ratios: local / bare same-work (target >= 1.8
on 2 cores), local / bare header-only, Ray time / local time (target <= 1.3). The last line is a JSON
object with every figure. Timings are never asserted by tests.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from osctl.curate.engines import LocalEngine, RayEngine, _python_path  # noqa: E402
from osctl.curate.importer import import_media  # noqa: E402

FRAMES, FPS, SIZE = 24, 24, (96, 128)


def write_clip(path: Path, seed: int) -> None:
    """One short clip: a diagonal gradient drifting by a seed-dependent speed (small, realistic packets)."""
    import av

    height, width = SIZE
    ys, xs = np.mgrid[0:height, 0:width]
    speed = 1 + seed % 5
    tmp = path.with_name(f".{path.name}.tmp")
    with av.open(str(tmp), "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=Fraction(FPS))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"crf": "23", "preset": "veryfast"}
        for k in range(FRAMES):
            grey = ((xs + ys + speed * k + seed * 7) % 256).astype(np.uint8)
            frame = np.stack([grey, np.roll(grey, 17, axis=1), 255 - grey], axis=-1)
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    os.replace(tmp, path)
    path.with_suffix(".txt").write_text(f"clip {seed}\n")


def make_clips(folder: Path, count: int, workers: int) -> list[Path]:
    """``count`` clips in ``folder`` (kept between runs: only missing ones are written)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"clip-{i:05d}.mp4" for i in range(count)]
    missing = [(p, i) for i, p in enumerate(paths) if not p.is_file()]
    if missing:
        started = time.perf_counter()
        with ProcessPoolExecutor(max_workers=workers) as pool:
            list(pool.map(write_clip, [p for p, _ in missing], [i for _, i in missing], chunksize=16))
        print(f"wrote {len(missing)} clips in {time.perf_counter() - started:.1f} s", flush=True)
    for stray in folder.glob("clip-*.mp4"):
        if stray not in set(paths):
            stray.unlink()
            stray.with_suffix(".txt").unlink(missing_ok=True)
    return paths


def bare_same_work(folder: Path, single_thread: bool = False) -> int:
    """The plain loop doing osctl's probe work (see the module docstring); returns the frames counted.

    ``single_thread``: decode with one thread, as osctl's probe does (PyAV's default starts decoder threads).
    """
    import av

    total = 0
    options = {"threads": "1"} if single_thread else {}
    for path in sorted(folder.rglob("*.mp4")):
        with av.open(str(path), options=options) as container:
            stream = container.streams.video[0]
            if single_thread:
                stream.codec_context.thread_count = 1
            count, first = 0, None
            for packet in container.demux(stream):
                if packet.dts is None and packet.size == 0:
                    continue
                count += 1
                if first is None:
                    decoded = packet.decode()
                    first = decoded[0] if decoded else None
            facts = (count, float(stream.average_rate), first.width if first else 0, stream.codec_context.name)
            total += facts[0]
    return total


def bare_header_only(folder: Path) -> int:
    """The plain loop reading only the container header of each file; returns the frames listed."""
    import av

    total = 0
    for path in sorted(folder.rglob("*.mp4")):
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            facts = (stream.frames, float(stream.average_rate), stream.codec_context.width, stream.codec_context.name)
            total += int(facts[0])
    return total


CPU: dict[str, list[float]] = {}


def cpu_seconds() -> float:
    """CPU time of this process and of its finished children (the local engine's worker processes)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def timed(fn: Any, name: str | None = None) -> tuple[float, Any]:
    """Wall seconds of ``fn()`` and its value; with ``name``, its CPU seconds are recorded under that name."""
    cpu = cpu_seconds()
    started = time.perf_counter()
    value = fn()
    seconds = time.perf_counter() - started
    if name is not None:
        CPU.setdefault(name, []).append(cpu_seconds() - cpu)
    return seconds, value


def summary(seconds: list[float], files: int, cpu: list[float] | None) -> dict[str, Any]:
    best, median = min(seconds), statistics.median(seconds)
    out = {"seconds": round(best, 4), "median_seconds": round(median, 4), "files_per_s": round(files / best, 1),
           "median_files_per_s": round(files / median, 1), "rounds": len(seconds)}
    if cpu:
        out["cpu_ms_per_file"] = round(1000 * statistics.median(cpu) / files, 3)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", type=int, default=1000)
    parser.add_argument("--dir", type=Path, default=Path("/tmp/osctl-bench-import"))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--no-ray", action="store_true", help="skip the Ray engine")
    args = parser.parse_args()

    clips = args.dir / "clips"
    make_clips(clips, args.clips, args.workers)
    outs = args.dir / "outs"
    shutil.rmtree(outs, ignore_errors=True)
    use_ray = not args.no_ray
    ray = None
    if use_ray:
        try:
            import ray  # type: ignore[no-redef]
        except ImportError:
            print("Ray is not installed: the Ray engine is skipped (pip install \"osctl[ray]\")")
            use_ray = False
    startup = None
    if use_ray and ray is not None:
        startup, _ = timed(lambda: ray.init(num_cpus=args.workers, include_dashboard=False, log_to_driver=False,
                                            logging_level="WARNING",
                                            runtime_env={"env_vars": {"PYTHONPATH": _python_path()}}))
        warm = RayEngine(workers=args.workers)
        import_media(clips, outs / "ray-warm", engine=warm)  # first tasks start the workers and import osctl there
        print(f"Ray start-up: {startup:.1f} s (ray.init), then one warm-up import", flush=True)
    import_media(clips, outs / "warm", engine=LocalEngine(1))  # imports and page cache, as for every later round

    times: dict[str, list[float]] = {"bare": [], "bare_1thread": [], "bare_header": [], "local": [], "local_1": [], "rerun": [], "ray": []}
    expected = {}

    def bare() -> None:
        seconds, frames = timed(lambda: bare_same_work(clips), "bare")
        assert frames == args.clips * FRAMES, frames
        times["bare"].append(seconds)

    def bare_1thread() -> None:
        times["bare_1thread"].append(timed(lambda: bare_same_work(clips, single_thread=True), "bare_1thread")[0])

    def bare_header() -> None:
        times["bare_header"].append(timed(lambda: bare_header_only(clips), "bare_header")[0])

    def local(round_no: int) -> None:
        target = outs / f"local-{round_no}"
        seconds, result = timed(lambda: import_media(clips, target, engine=LocalEngine(args.workers)), "local")
        assert result.written == args.clips and result.probed == args.clips, result.to_json()
        expected.setdefault("annotations", result.annotations[0].read_bytes())
        times["local"].append(seconds)
        times["rerun"].append(timed(lambda: import_media(clips, target, engine=LocalEngine(args.workers)))[0])

    def local_1(round_no: int) -> None:
        target = outs / f"local1-{round_no}"
        times["local_1"].append(timed(lambda: import_media(clips, target, engine=LocalEngine(1)), "local_1")[0])

    def on_ray(round_no: int) -> None:
        target = outs / f"ray-{round_no}"
        seconds, result = timed(lambda: import_media(clips, target, engine=RayEngine(workers=args.workers)))
        assert result.written == args.clips
        if "annotations" in expected:
            assert result.annotations[0].read_bytes() == expected["annotations"]
        times["ray"].append(seconds)

    steps = [lambda r: bare(), lambda r: bare_1thread(), lambda r: bare_header(), local, local_1] + ([on_ray] if use_ray else [])
    for round_no in range(args.rounds):
        shift = round_no % len(steps)  # each round starts with another measurement: no one always goes first
        for step in steps[shift:] + steps[:shift]:
            step(round_no)
        shown = ", ".join(f"{k} {v[-1]:.2f} s" for k, v in times.items() if v)
        print(f"round {round_no + 1}/{args.rounds}: {shown}", flush=True)
    if use_ray and ray is not None:
        ray.shutdown()

    figures = {name: summary(values, args.clips, CPU.get(name)) for name, values in times.items() if values}
    ratios = {"local_vs_bare": round(min(times["bare"]) / min(times["local"]), 3),
              "local_vs_bare_median": round(statistics.median(times["bare"]) / statistics.median(times["local"]), 3),
              "local_vs_bare_1thread": round(min(times["bare_1thread"]) / min(times["local"]), 3),
              "local_vs_bare_1thread_median": round(statistics.median(times["bare_1thread"])
                                                    / statistics.median(times["local"]), 3),
              "local_vs_bare_header": round(min(times["bare_header"]) / min(times["local"]), 3),
              "local_1_vs_bare": round(min(times["bare"]) / min(times["local_1"]), 3),
              "cpu_bound_local_vs_bare": round(args.workers * statistics.median(CPU["bare"])
                                               / statistics.median(CPU["local"]), 3)}
    if times["ray"]:
        ratios["ray_vs_local"] = round(min(times["ray"]) / min(times["local"]), 3)
        ratios["ray_vs_local_median"] = round(statistics.median(times["ray"]) / statistics.median(times["local"]), 3)
    print(f"\n{args.clips} clips of {FRAMES} frames ({SIZE[0]}x{SIZE[1]}), {args.workers} workers, "
          f"{args.rounds} rounds, load average {os.getloadavg()[0]:.1f}:")
    for name, values in figures.items():
        cpu = f", {values['cpu_ms_per_file']:.2f} ms CPU per file" if "cpu_ms_per_file" in values else ""
        print(f"  {name:12s} {values['files_per_s']:8.1f} files/s best, {values['median_files_per_s']:8.1f} median{cpu}")
    print(f"  osctl local / bare PyAV (same work): {ratios['local_vs_bare']:.2f}x best, "
          f"{ratios['local_vs_bare_median']:.2f}x median (target >= 1.8)")
    print(f"  osctl local / bare PyAV with one decoder thread (same work, parallelism alone): "
          f"{ratios['local_vs_bare_1thread']:.2f}x best, {ratios['local_vs_bare_1thread_median']:.2f}x median")
    print(f"  osctl local / bare PyAV (header only): {ratios['local_vs_bare_header']:.2f}x; "
          f"osctl with 1 worker / bare: {ratios['local_1_vs_bare']:.2f}x")
    print(f"  on {args.workers} idle cores osctl could reach {ratios['cpu_bound_local_vs_bare']:.2f}x the bare loop "
          f"({args.workers} x bare CPU / osctl CPU per file): the wall ratio falls short of it by what other jobs take")
    if "ray_vs_local" in ratios:
        print(f"  Ray time / local time: {ratios['ray_vs_local']:.2f}x best, {ratios['ray_vs_local_median']:.2f}x "
              f"median (target <= 1.3); Ray start-up {startup:.1f} s, not included")
    print(json.dumps({"clips": args.clips, "workers": args.workers, "figures": figures, "ratios": ratios,
                      "ray_startup_seconds": None if startup is None else round(startup, 2)}))


if __name__ == "__main__":
    main()
