"""Peak host memory and wall time to a loaded model: the plain build + ``load_into`` vs lean loading, in one run.

The model is the Open-Sora-Plan v1.3 preset (2B/122 widths) cut to ``--layers`` blocks, its random weights
saved once as a safetensors file (``train.pretrained``) or a diffusers folder (``--source path``:
``model.path``). Each way of loading then runs ``--reps`` times, alternating, each in a fresh process
that imports everything first, then resets the kernel's peak counter (``/proc/self/clear_refs``) and times:

- ``old``: what ``osctl train`` did before: ``build_model(device="cpu", dtype=float32)`` (random init of every
  parameter, or diffusers' ``from_pretrained`` for ``model.path``), ``load_into`` (train.pretrained), then
  ``.to(device)`` as the strategy does;
- ``new``: :func:`osctl.train.lean_load.build_loaded_model` on ``--device``: parameters on the meta device,
  filled from the mapped file a chunk at a time on the device.

It prints, per way, the peak resident set above what was resident before loading (``VmHWM``), the wall time,
and on CUDA the device's peak allocation; then the ratios old / new measured in this run. On the CPU the
model itself is host memory either way (new: model + one chunk, and no random init); on a GPU (``--device
cuda``) the new way holds about one chunk on the host.

    .venv/bin/python benchmarks/bench_load.py [--layers 3] [--source pretrained|path] [--device cpu|cuda] \\
        [--file-dtype fp32|bf16] [--reps 2] [--dir /tmp]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

REPO = Path(__file__).resolve().parents[1]
MODEL = "opensora_v1_3"

CHILD = r"""
import json, sys, time
from pathlib import Path
from types import SimpleNamespace
import torch

def status(key):
    return int(next(line for line in open("/proc/self/status") if line.startswith(key)).split()[1]) * 1024

way, source, kind, device, options = sys.argv[1], Path(sys.argv[2]), sys.argv[3], sys.argv[4], json.loads(sys.argv[5])
from osctl.build import build_model
from osctl.plugin_manager import default_registry
from osctl.train.lean_load import build_loaded_model
from osctl.train.weights import load_into

import osctl_builtin.models.osp_v13.transformer  # noqa: F401  (diffusers and the model code: not the load's time)

registry = default_registry()
if kind == "path":
    options = {**options, "path": str(source)}
config = registry.make_config("model", "opensora_v1_3", options, where="model")
checked = SimpleNamespace(loaded=SimpleNamespace(recipe=SimpleNamespace(model=SimpleNamespace(name="opensora_v1_3"))),
                          components={"model": config})
weights = source if kind == "pretrained" else None
if device == "cuda":
    torch.zeros(1, device="cuda")  # the CUDA context is not the model's memory
    torch.cuda.reset_peak_memory_stats()
torch.manual_seed(0)
with open("/proc/self/clear_refs", "w") as handle:
    handle.write("5")
before = status("VmRSS")
started = time.perf_counter()
if way == "old":
    model = build_model(checked, registry, device="cpu", dtype=torch.float32)
    if weights is not None:
        load_into(model, weights)
    model = model.to(device)
    lean = False
else:
    loaded = build_loaded_model(checked, registry, weights=weights, device=device, dtype=torch.float32)
    model, lean = loaded.model, loaded.lean
if device == "cuda":
    torch.cuda.synchronize()
seconds = time.perf_counter() - started
bytes_ = sum(p.numel() * p.element_size() for p in model.parameters())
print(json.dumps({"way": way, "lean": lean, "seconds": seconds, "host_peak": status("VmHWM") - before,
                  "host_peak_total": status("VmHWM"), "model_bytes": bytes_,
                  "device_peak": torch.cuda.max_memory_allocated() if device == "cuda" else 0}))
"""


def write_weights(folder: Path, options: dict[str, object], kind: str, file_dtype: str) -> Path:
    """A random model of ``options`` saved as one safetensors file or a diffusers folder; returns its path."""
    import torch
    from safetensors.torch import save_file

    from osctl.plugin_manager import default_registry

    torch.manual_seed(1)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[file_dtype]
    model = default_registry().build("model", MODEL, options, dtype=dtype)
    if kind == "path":
        model.save_pretrained(folder / "model")
        return folder / "model"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, folder / "weights.safetensors")
    return folder / "weights.safetensors"


def measure(way: str, source: Path, kind: str, device: str, options: dict[str, object]) -> dict[str, object]:
    """One load in a fresh process (the file is in the page cache: both ways read it from memory)."""
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
           "MALLOC_MMAP_THRESHOLD_": "65536",  # freed tensor buffers go back to the system: the RSS follows them
           "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "plugins"), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", CHILD, way, str(source), kind, device, json.dumps(options)],
                         capture_output=True, text=True, env=env, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=3, help="blocks of the 2B/122 preset (about 0.33 GB each)")
    parser.add_argument("--source", choices=["pretrained", "path"], default="pretrained")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--file-dtype", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()))
    args = parser.parse_args()
    if not Path("/proc/self/clear_refs").exists():
        sys.exit("needs Linux's /proc/self/clear_refs to reset the peak-memory counter")
    sys.path[:0] = [str(REPO), str(REPO / "plugins")]
    options = {"preset": "2B/122", "num_layers": args.layers}
    folder = Path(tempfile.mkdtemp(prefix="bench-load-", dir=args.dir))
    try:
        source = write_weights(folder, options, args.source, args.file_dtype)
        size = sum(f.stat().st_size for f in ([source] if source.is_file() else source.glob("*.safetensors")))
        results: dict[str, list[dict[str, object]]] = {"old": [], "new": []}
        for _ in range(args.reps):
            for way in ("old", "new"):
                results[way].append(measure(way, source, args.source, args.device, options))
        print(f"model: {MODEL} 2B/122 widths, {args.layers} blocks; weights {size / 2**30:.2f} GiB ({args.file_dtype}, "
              f"{args.source}); device {args.device}; {args.reps} runs each, fresh process each")
        summary = {}
        for way, runs in results.items():
            peak = statistics.median(float(r["host_peak"]) for r in runs)  # type: ignore[arg-type]
            seconds = statistics.median(float(r["seconds"]) for r in runs)  # type: ignore[arg-type]
            device_peak = statistics.median(float(r["device_peak"]) for r in runs)  # type: ignore[arg-type]
            summary[way] = SimpleNamespace(peak=peak, seconds=seconds, device_peak=device_peak)
            model_gib = float(runs[0]["model_bytes"]) / 2**30  # type: ignore[arg-type]
            print(f"{way}: host peak above start {peak / 2**30:.2f} GiB (model {model_gib:.2f} GiB), "
                  f"{seconds:.2f} s to a loaded model, lean {runs[0]['lean']}"
                  + (f", device peak {device_peak / 2**30:.2f} GiB" if args.device == "cuda" else ""))
        old, new = summary["old"], summary["new"]
        print(f"ratio old / new: host peak {old.peak / max(new.peak, 1):.2f}x, wall time "
              f"{old.seconds / max(new.seconds, 1e-9):.2f}x")
        print(json.dumps({way: [r for r in runs] for way, runs in results.items()}))
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
