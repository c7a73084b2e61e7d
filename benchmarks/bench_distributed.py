"""Distributed training step times on CPU: 2-rank DDP against the same rank without gradient sync,
and ZeRO-2, ZeRO-3 and sequence parallelism against DDP, all measured in one run.

The script starts itself under torchrun (2 processes, one thread each). Every rank builds the tiny
test recipe (about 0.2 M parameters, 5 x 16 x 16 clips, fp32) through ``osctl.train.run.setup_training``
and times whole optimizer steps (micro-step with forward and backward, clipping, optimizer step):

* ``ddp`` vs ``ddp no-sync``: one DDP model, stepping synchronised and with ``no_sync`` (no
  all-reduce), same batch and threads; the ratio is the synchronisation overhead (target <= 1.15);
* ``zero2``, ``zero3`` (DeepSpeed) and ``sp2`` (DDP with ``sp_size`` 2, so each rank holds half of
  every sample's frames), relative to ``ddp``.

All configurations are built first and stepped round robin (one step of each per round), so every
one sees the same machine load. Medians over ``--steps`` rounds after ``--warmup``; rank 0 prints them, with the DDP ratio of the
fastest steps as well (other processes' load stalls one rank at a time, which a synchronised step
waits for and a no-sync step does not). Timings on a shared 2-core machine vary by 10-20 %;
nothing here asserts a timing.

    .venv/bin/python benchmarks/bench_distributed.py [--steps 30 --warmup 5 --batch 2 --json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script by torchrun: use this checkout's osctl
    sys.path.insert(0, str(REPO))

CONFIGS: dict[str, list[str]] = {
    "ddp": ["parallel.strategy=ddp"],
    "zero2": ["parallel.strategy=deepspeed", "parallel.zero_stage=2"],
    "zero3": ["parallel.strategy=deepspeed", "parallel.zero_stage=3"],
    "sp2": ["parallel.strategy=ddp", "parallel.sp_size=2"],
}


def build(name: str, root: Path, args: argparse.Namespace, steps: int) -> Any:
    """Training parts of one configuration (every rank calls it at the same time)."""
    from osctl.plugin_manager import default_registry
    from osctl.recipe.load import load_recipe
    from osctl.recipe.validate import check_recipe
    from osctl.testing import SyntheticClips, write_tiny_recipe
    from osctl.train.run import TrainOptions, setup_training

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    folder = root / name / f"rank{rank}"
    folder.mkdir(parents=True, exist_ok=True)
    batch = args.batch
    sets = [*CONFIGS[name], f"train.max_steps={steps}", f"train.train_batch_size={batch}",
            f"parallel.train_sp_batch_size={batch}", "train.use_ema=false", f"data.num_frames={args.frames}",
            f"data.max_height={args.size}", f"data.max_width={args.size}"]
    registry = default_registry()
    checked = check_recipe(load_recipe(write_tiny_recipe(folder, folder / "out", root / "cache"), sets), registry)
    sp = checked.loaded.recipe.parallel.sp_size
    encoder = registry.build("text_encoder", "tiny_t5", checked.components["text_encoder"])
    source = SyntheticClips(lambda caps: encoder.tokenize(caps), num_clips=64, batch_size=batch, frames=args.frames,
                            size=args.size, dp_rank=rank // sp, dp_size=world // sp)
    return setup_training(checked, registry, TrainOptions(data_source=source))


def step(parts: Any, batches: Any, sync: bool) -> float:
    """Seconds of one optimizer step (one micro-step, clipping, optimizer step)."""
    from osctl.train.loop import micro_step

    batch = next(batches)
    started = time.perf_counter()
    micro_step(parts, batch, sync=sync, scale=1.0)
    parts.strategy.clip_grad_norm(parts.recipe.train.max_grad_norm)
    parts.strategy.optimizer_step()
    return time.perf_counter() - started


def worker(args: argparse.Namespace) -> None:
    """One rank: time every configuration; rank 0 prints (and writes) the medians and ratios."""
    from osctl.parallel.dist import barrier, shutdown

    torch.set_num_threads(1)
    root = Path(args.root)
    total = args.warmup + args.steps
    parts = {name: build(name, root, args, 2 * total) for name in CONFIGS}
    batches = {name: iter(p.data) for name, p in parts.items()}
    # round robin, one step of each kind per round: every kind sees the same machine load
    kinds = [("ddp", "ddp", True), ("ddp no-sync", "ddp", False), *((n, n, True) for n in CONFIGS if n != "ddp")]
    times: dict[str, list[float]] = {label: [] for label, _, _ in kinds}
    for i in range(total):
        for label, name, sync in kinds:
            barrier()
            elapsed = step(parts[name], batches[name], sync)
            if i >= args.warmup:
                times[label].append(elapsed)
    medians = {label: statistics.median(values) for label, values in times.items()}
    if int(os.environ["RANK"]) == 0:
        report = {
            "median_step_ms": {k: round(v * 1000, 2) for k, v in medians.items()},
            "ratios": {
                "ddp / ddp no-sync (target <= 1.15)": round(medians["ddp"] / medians["ddp no-sync"], 3),
                # fastest steps: the overhead without other processes' load (which stalls one rank at a time)
                "ddp / ddp no-sync, fastest steps": round(min(times["ddp"]) / min(times["ddp no-sync"]), 3),
                "zero2 / ddp": round(medians["zero2"] / medians["ddp"], 3),
                "zero3 / ddp": round(medians["zero3"] / medians["ddp"], 3),
                "sp2 / ddp (half the samples per step)": round(medians["sp2"] / medians["ddp"], 3),
            },
            "setup": {"ranks": 2, "threads_per_rank": 1, "batch_per_rank": args.batch, "steps": args.steps,
                      "warmup": args.warmup, "model": "tiny preset (~0.2 M parameters), fp32",
                      "clip": f"{args.frames} x {args.size} x {args.size} -> {args.frames * (args.size // 8) ** 2} tokens"},
        }
        print(json.dumps(report, indent=2), flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    shutdown(0)


def main() -> None:
    """Parse options; outside torchrun, start 2 ranks of this script and wait for them."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=30, help="timed steps per configuration")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--batch", type=int, default=2, help="samples per rank (per SP group for sp2)")
    parser.add_argument("--frames", type=int, default=9, help="frames per clip (4k+1; latent frames = frames)")
    parser.add_argument("--size", type=int, default=64, help="clip height = width (latent tokens (size/8)^2 per frame)")
    parser.add_argument("--json", default=None, help="also write the report here")
    parser.add_argument("--root", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if "RANK" in os.environ:
        worker(args)
        return
    with tempfile.TemporaryDirectory(prefix="osctl-bench-dist-") as root:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": os.environ.get("DS_ACCELERATOR", "cpu"),
               "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                   str(Path(__file__).resolve()), "--root", root, *sys.argv[1:]]
        raise SystemExit(subprocess.run(command, env=env, cwd=REPO).returncode)


if __name__ == "__main__":
    main()
