"""Benchmark `osctl data validate` and `osctl data bucket` against a plain-Python baseline.

Usage::

    python benchmarks/bench_data.py [--records 1000000] [--dir /tmp/osctl-bench-data] [--repeat 1] [--no-compile]
                                    [--files 1]

Generates (once, cached in --dir) one JSON annotation file of N video records with
``benchmarks/gen_records.py``, then times, each as a separate process (whole process: start-up,
imports, reading, work, output) and with its peak RSS from ``os.wait4``:

- ``osctl data validate DATA_TXT`` (no probe),
- ``osctl data bucket DATA_TXT --recipe R --out DIR`` into an empty DIR (a first run: every annotation
  file is hashed for the index fingerprint), and again over the previous index ("bucket rebuild", as
  after a recipe change: the recorded digests of unchanged files are reused),
- the baseline for each: ``json.load`` + one Python loop over the records doing the same checks, or
  the same frame/resolution rules the way the reference's ``define_frame_index`` does them
  (``numpy.arange`` per video, ``random.randint`` crops, ``Counter`` of bucket keys, minority filter).

``--files K`` splits the same records over K annotation files (as real data sets list one per source).
Every round runs each command once, in turn, so slow phases of a shared machine hit all of them;
the best and the median over ``--repeat`` rounds are printed. osctl's modules are byte-compiled first,
as installing a wheel does (``--no-compile`` skips it). Prints seconds, peak RSS and the speed-up
ratios. Targets (issue #3, 2-core machine): each command <= 10 s and <= 1.5 GB; validate >= 5x and
bucket >= 10x faster than its baseline.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
RECIPE = """\
data:
  num_frames: 93
  train_fps: 16
  drop_short_ratio: 1.0
  max_hxw: 262144
  min_hxw: 65536
  group_data: true
train:
  train_batch_size: 4
"""
IMAGE = {"jpg", "jpeg", "png", "webp", "bmp"}
VIDEO = {"mp4", "mov", "mkv", "webm", "avi"}


# ------------------------------------------------------------------------------------------ baselines


def baseline_validate(data_txt: Path) -> int:
    """Plain json.load + per-record checks (the same checks `osctl data validate` runs without --probe)."""
    problems = 0
    seen: set[str] = set()
    for line in data_txt.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        root, anno = line.rsplit(",", 1)
        with open(anno) as handle:
            records = json.load(handle)
        if not isinstance(records, list):
            problems += 1
            continue
        for rec in records:
            if not isinstance(rec, dict):
                problems += 1
                continue
            path = rec.get("path")
            if not isinstance(path, str):
                problems += 1
                continue
            ext = path.rsplit(".", 1)[-1].lower()
            video = ext in VIDEO
            if not video and ext not in IMAGE:
                problems += 1
            cap = rec.get("cap")
            if isinstance(cap, str):
                if not cap.strip():
                    problems += 1
            elif isinstance(cap, list):
                if not cap or not all(isinstance(c, str) and c.strip() for c in cap):
                    problems += 1
            else:
                problems += 1
            res = rec.get("resolution")
            h = w = None
            if isinstance(res, dict):
                h, w = res.get("height"), res.get("width")
                if not (type(h) is int and type(w) is int and h > 0 and w > 0):
                    problems += 1
            else:
                problems += 1
            nf = rec.get("num_frames")
            if video:
                if type(nf) is not int or nf <= 0:
                    problems += 1
                fps = rec.get("fps")
                if type(fps) not in (int, float) or not math.isfinite(fps) or fps <= 0:
                    problems += 1
            for key in ("aesthetic", "aes", "tech", "motion"):
                value = rec.get(key)
                if value is not None and (type(value) not in (int, float) or not math.isfinite(value)):
                    problems += 1
            cut = rec.get("cut")
            if cut is not None and not (isinstance(cut, list) and len(cut) == 2 and all(type(c) is int for c in cut)
                                        and 0 <= cut[0] < cut[1] and (type(nf) is not int or cut[1] - cut[0] <= nf)):
                problems += 1
            crop = rec.get("crop")
            if crop is not None and not (isinstance(crop, list) and len(crop) == 4 and all(type(c) is int for c in crop)
                                         and 0 <= crop[0] < crop[1] and 0 <= crop[2] < crop[3]
                                         and (w is None or crop[1] <= w) and (h is None or crop[3] <= h)):
                problems += 1
            full = os.path.join(root, path)
            if not os.path.normpath(full).startswith(root.rstrip("/") + "/"):
                problems += 1
            if not os.path.exists(full):
                problems += 1
            if full in seen:
                problems += 1
            seen.add(full)
    return problems


def _closest(x: int, sp: int = 1) -> int:
    if x < 29:
        return -1
    for y in range(x, 28, -1):
        if (y - 1) % 4 == 0 and ((y - 1) // 4 + 1) % sp == 0:
            return y
    return -1


def baseline_bucket(data_txt: Path) -> int:
    """Plain json.load + the reference's per-record rule loop (area mode, the benchmark recipe)."""
    import numpy as np

    num_frames, train_fps, speed, max_hxw, min_hxw, stride, total_batch = 93, 16, 1.0, 262144, 65536, 32, 4
    random.seed(1234)
    generator = np.random.default_rng(42)
    kept, sizes = [], []
    for line in data_txt.read_text().splitlines():
        if not line.strip():
            continue
        root, anno = line.rsplit(",", 1)
        with open(anno) as handle:
            records = json.load(handle)
        for rec in records:
            path = os.path.join(root, rec["path"])
            rec["path"] = path
            if rec.get("cap") is None or rec.get("resolution") is None:
                continue
            h, w = rec["resolution"].get("height"), rec["resolution"].get("width")
            if h is None or w is None or h <= 0 or w <= 0:
                continue
            if h * w > max_hxw:
                scale = np.sqrt(max_hxw / (h * w))
                h, w = int(h * scale), int(w * scale)
            sh, sw = h // stride * stride, w // stride * stride
            if sh <= 0 or sw <= 0 or sh * sw < min_hxw or not 0.5 <= sh / sw <= 2.0:
                continue
            if path.endswith(".mp4"):
                fps = rec.get("fps", 24)
                if rec["num_frames"] > 5.0 * (num_frames * fps / train_fps * speed):
                    continue
                interval = 1.0 if abs(fps - train_fps) < 0.1 else fps / train_fps
                start = rec.get("cut", [0])[0]
                indices = np.arange(start, start + rec["num_frames"], interval).astype(int)
                indices = indices[indices < start + rec["num_frames"]]
                if len(indices) < num_frames and generator.random() < 1.0:
                    continue
                if len(indices) > num_frames:
                    begin = random.randint(0, max(0, len(indices) - num_frames - 1))
                    indices = indices[begin:begin + num_frames]
                end = _closest(len(indices))
                if end == -1:
                    continue
                rec["sample_frame_index"] = indices[:end].tolist()
            else:
                rec["sample_frame_index"] = [0]
            kept.append(rec)
            sizes.append(f"{len(rec['sample_frame_index'])}x{sh}x{sw}")
    counts = Counter(sizes)
    survivors = [(r, s) for r, s in zip(kept, sizes, strict=True) if counts[s] >= 4 * total_batch]
    return len(survivors)


# ----------------------------------------------------------------------------------------- measuring


def _watch_tree(pid: int, peak: list[float], done: threading.Event) -> None:
    """Sample the summed RSS of ``pid`` and its children (the decoding workers) every 20 ms."""
    import psutil

    try:
        root = psutil.Process(pid)
    except psutil.Error:
        return
    while not done.is_set():
        try:
            procs = [root, *root.children(recursive=True)]
            peak[0] = max(peak[0], sum(p.memory_info().rss for p in procs) / 2**20)
        except psutil.Error:
            pass
        done.wait(0.02)


def run_measured(cmd: list[str]) -> tuple[float, float, float, int, float]:
    """Run ``cmd``; return (wall s, peak RSS MB of the process, peak RSS MB of its tree, exit code, CPU s).

    The process's own peak comes from ``os.wait4``; the tree's (process plus forked workers, shared
    pages counted in each) from sampling, so it is an upper bound. CPU seconds (user + system, the
    waited-for workers included) do not depend on what else runs on the machine, unlike wall time.
    """
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak, done = [0.0], threading.Event()
    watcher = threading.Thread(target=_watch_tree, args=(proc.pid, peak, done), daemon=True)
    watcher.start()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    done.set()
    watcher.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode not in (0, 1):
        sys.stderr.write(proc.stderr.read().decode() if proc.stderr else "")
    own = usage.ru_maxrss / 1024
    return wall, own, max(own, peak[0]), proc.returncode, usage.ru_utime + usage.ru_stime


def ensure_data(folder: Path, records: int) -> Path:
    """Generate the synthetic data set once (reused when the record count matches)."""
    stamp = folder / "records.txt"
    if not (stamp.is_file() and stamp.read_text().strip() == str(records)):
        subprocess.run([sys.executable, str(HERE / "gen_records.py"), str(folder), "-n", str(records)], check=True)
        stamp.write_text(f"{records}\n")
    (folder / "recipe.yaml").write_text(RECIPE)
    return folder / "data.txt"


def split_data(folder: Path, files: int) -> Path:
    """The same records split into ``files`` annotation files of about equal size, and a data.txt listing them.

    Real data sets list many annotation files (one per source); the records and the media root are
    those of ``anno.json``, so every figure is comparable with the one-file run.
    """
    parts = folder / f"parts-{files}"
    data_txt = parts / "data.txt"
    stamp = parts / "records.txt"
    total = (folder / "records.txt").read_text()
    if not (stamp.is_file() and stamp.read_text() == total):
        # In a process of its own: the benchmark process must stay small, as every measured command
        # starts as its fork and the kernel counts the fork's pages in the command's peak RSS.
        subprocess.run([sys.executable, str(Path(__file__).resolve()), "--split", str(files), str(folder)], check=True)
        stamp.write_text(total)
    return data_txt


def _write_parts(folder: Path, files: int) -> None:
    """The work of :func:`split_data`, run in a child process."""
    import msgspec

    parts = folder / f"parts-{files}"
    records = msgspec.json.decode((folder / "anno.json").read_bytes())
    parts.mkdir(exist_ok=True)
    per = -(-len(records) // files)
    lines = []
    for k in range(files):
        name = parts / f"part-{k:03d}.json"
        name.write_bytes(msgspec.json.encode(records[k * per:(k + 1) * per]))
        lines.append(f"{folder / 'media'},{name}")
    (parts / "data.txt").write_text("\n".join(lines) + "\n")


def compile_sources() -> None:
    """Byte-compile osctl's own modules, as installing a wheel does (an editable install does not).

    Without ``.pyc`` files (an editable install, or ``PYTHONDONTWRITEBYTECODE`` set as on the project's
    machines) every osctl process compiles its ~60 modules again at start-up, about 0.1 s.
    """
    import compileall

    root = HERE.parent
    for folder in ("osctl", "plugins"):
        compileall.compile_dir(str(root / folder), quiet=1)


def main() -> None:
    """Run the benchmark and print a table of seconds, peak RSS and ratios."""
    parser = argparse.ArgumentParser(description="osctl data validate/bucket vs a plain Python baseline")
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--dir", type=Path, default=Path("/tmp/osctl-bench-data"))
    parser.add_argument("--repeat", type=int, default=1,
                        help="rounds; each runs every command once, in turn (best and median are kept)")
    parser.add_argument("--no-compile", action="store_true", help="do not byte-compile osctl's modules first")
    parser.add_argument("--files", type=int, default=1, help="split the records over this many annotation files")
    parser.add_argument("--baseline", choices=["validate", "bucket"], help=argparse.SUPPRESS)
    parser.add_argument("--split", type=int, help=argparse.SUPPRESS)
    parser.add_argument("data_txt", nargs="?", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.split:
        _write_parts(args.data_txt, args.split)
        return
    if args.baseline:
        result = (baseline_validate if args.baseline == "validate" else baseline_bucket)(args.data_txt)
        print(result)
        return
    args.dir.mkdir(parents=True, exist_ok=True)
    data_txt = ensure_data(args.dir, args.records)
    if args.files > 1:
        data_txt = split_data(args.dir, args.files)
    if not args.no_compile:
        compile_sources()
    osctl = [sys.executable, "-m", "osctl"]
    me = [sys.executable, str(Path(__file__).resolve())]
    index = data_txt.parent / "index"
    bucket = [*osctl, "data", "bucket", str(data_txt), "--recipe", str(args.dir / "recipe.yaml"), "--out", str(index)]
    # "bucket" starts from an empty output folder, as a first run does; "bucket rebuild" writes over the
    # index of the run before (as after a recipe change), which lets it reuse the annotation digests.
    jobs = {
        "validate": ([*osctl, "data", "validate", str(data_txt)], None),
        "validate baseline": ([*me, "--baseline", "validate", str(data_txt)], None),
        "bucket": (bucket, lambda: shutil.rmtree(index, ignore_errors=True)),
        "bucket baseline": ([*me, "--baseline", "bucket", str(data_txt)], None),
        "bucket rebuild": (bucket, None),
    }
    runs: dict[str, list[tuple[float, float, float, int, float]]] = {name: [] for name in jobs}
    load = os.getloadavg()[0]
    for _ in range(args.repeat):
        for name, (cmd, prepare) in jobs.items():
            if prepare is not None:
                prepare()
            runs[name].append(run_measured(cmd))
    results: dict[str, dict[str, float]] = {}
    for name, done in runs.items():
        walls = sorted(r[0] for r in done)
        results[name] = {"seconds": round(walls[0], 3), "median_seconds": round(statistics.median(walls), 3),
                         "cpu_seconds": round(min(r[4] for r in done), 3),
                         "peak_rss_mb": round(max(r[1] for r in done), 1),
                         "tree_peak_rss_mb": round(max(r[2] for r in done), 1)}
        res = results[name]
        print(f"{name:18s} best {res['seconds']:6.2f} s  median {res['median_seconds']:6.2f} s  "
              f"{res['cpu_seconds']:6.2f} s CPU  {res['peak_rss_mb']:6.0f} MB peak RSS  "
              f"{res['tree_peak_rss_mb']:6.0f} MB with workers  (exit {done[0][3]})", flush=True)
    print(f"\nload average before the runs: {load:.2f} (other processes share these cores); {args.repeat} round(s)"
          f"{'' if args.no_compile else ', osctl byte-compiled first'}; {args.records} records in {args.files} file(s)")
    for name, base_name in (("validate", "validate baseline"), ("bucket", "bucket baseline"),
                            ("bucket rebuild", "bucket baseline")):
        ours, base = results[name], results[base_name]
        target = 5 if name == "validate" else 10
        print(f"{name:14s} speed-up {base['seconds'] / ours['seconds']:5.1f}x best, "
              f"{base['median_seconds'] / ours['median_seconds']:5.1f}x median, "
              f"{base['cpu_seconds'] / ours['cpu_seconds']:5.1f}x CPU (target >= {target}x); "
              f"{ours['median_seconds']:.2f} s (target <= 10 s); {ours['tree_peak_rss_mb']:.0f} MB (target <= 1536 MB)")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
