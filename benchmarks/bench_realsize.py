"""Real-size speed of the released v1.3 transformer (2B/122): MFU, step time, tokens/s and peak memory.

Builds the 2.77 B-parameter model (Skiparse as released; ``dense`` is the same sizes with dense attention) and
measures, each in the same run:

- ``transformer``: forward and forward+backward of the transformer alone on one 93 x 480 x 640 clip's latents
  (WF-VAE 4 x 8 -> 24 x 60 x 80, 28,800 tokens) and 512 text tokens, Skiparse vs dense, under every
  ``--checkpointing`` policy asked for (off / full / selective, :mod:`osctl.train.checkpointing`);
- ``train``: a whole training step on synthetic latents (forward, flow-free MSE loss, backward, gradient
  clipping, fused AdamW, osctl's EMA update);
- ``sample``: one denoising step at 93 x 352 x 640 (24 x 44 x 80 latents) with classifier-free guidance (the
  conditional and unconditional halves in one batch of 2), no gradients;
- ``--compile``: the Skiparse forward+backward again with every block compiled (:func:`osctl.train.compile.
  compile_blocks`), against eager in the same run;
- ``--profile``: the share of device time a forward+backward spends in rearrangements (permute/transpose
  copies, contiguous, cat, pad, index) - what Skiparse's token regrouping costs.

MFU = the step's model FLOPs (counted by :mod:`osctl.train.flops` on the meta device: the actual attention pattern,
Skiparse included, no recomputation) / time / the device's dense bf16 peak (printed with the peak assumed;
``--peak-tflops`` for a device not in osctl's table). Needs a GPU for the real size (bf16); ``--tiny`` runs the
same code on the tiny preset on any machine (a smoke test of the script, not a measurement).

    python benchmarks/bench_realsize.py [--configs transformer,train,sample] [--checkpointing full,selective]
        [--compile] [--attention auto] [--profile] [--reps 3]

Measured (H200, torch 2.11, bf16, full checkpointing): forward 546 ms vs 862 ms dense (0.63), forward+backward
2246 ms vs 3766 ms (0.60), 13.8 GiB peak; see benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from osctl.train.checkpointing import apply_checkpointing
from osctl.train.flops import device_peak_tflops, mfu, model_step_flops
from osctl.utils.attention import attention_backend
from osctl_builtin.models.osp_v13.presets import preset_config
from osctl_builtin.models.osp_v13.transformer import OpenSoraT2V_v1_3

DENSE = {"sparse1d": False, "sparse_blocks": None}
#: aten ops that only move data (Skiparse's regrouping, head splits, padding)
REARRANGE_OPS = ("aten::copy_", "aten::clone", "aten::contiguous", "aten::cat", "aten::constant_pad_nd",
                 "aten::pad", "aten::index", "aten::gather", "aten::_unsafe_view", "aten::permute")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(fn: Callable[[], None], reps: int, device: torch.device) -> float:
    """Median wall time of ``fn`` over ``reps`` calls after one warm-up call."""
    fn()
    _sync(device)
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


class Bench:
    """The sizes, device and peak every measurement shares, and the line it prints."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        self.cfg = preset_config("tiny" if args.tiny else "2B/122")
        self.train_shape = (3, 8, 8) if args.tiny else (args.frames, args.height, args.width)
        self.sample_shape = (3, 8, 8) if args.tiny else (args.frames, 44, 80)
        self.text = 8 if args.tiny else args.text
        name = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else "cpu"
        self.peak = args.peak_tflops or device_peak_tflops(name)
        peak = f"{self.peak:g} TFLOP/s dense bf16 assumed" if self.peak else "peak unknown (--peak-tflops): no MFU"
        cuda = f", CUDA {torch.version.cuda}" if self.device.type == "cuda" else ""
        print(f"device {name}, torch {torch.__version__}{cuda}, {self.dtype}, {peak}")

    def tokens(self, shape: tuple[int, int, int]) -> int:
        p = self.cfg["patch_size"]
        return shape[0] * (shape[1] // p) * (shape[2] // p)

    def model(self, extra: dict[str, Any], device: Any = None, dtype: torch.dtype | None = None) -> OpenSoraT2V_v1_3:
        torch.manual_seed(0)
        with torch.device(device or self.device):
            return torch.nn.Module.to(OpenSoraT2V_v1_3(**{**self.cfg, **extra}), dtype or self.dtype)

    def inputs(self, shape: tuple[int, int, int], batch: int = 1, device: Any = None) -> Callable[[], Any]:
        device = device or self.device
        cfg, dtype, text = self.cfg, self.dtype, self.text

        def make() -> tuple[tuple[Any, ...], dict[str, Any]]:
            make_tensor = torch.empty if device == "meta" else torch.randn
            x = make_tensor(batch, cfg["in_channels"], *shape, device=device, dtype=dtype)
            states = make_tensor(batch, 1, text, cfg["caption_channels"], device=device, dtype=dtype)
            mask = torch.ones(batch, 1, text, device=device, dtype=torch.long)
            return (x, torch.full((batch,), 500, device=device), states), {"encoder_attention_mask": mask,
                                                                          "return_dict": False}
        return make

    def flops(self, extra: dict[str, Any], shape: tuple[int, int, int], *, batch: int = 1, backward: bool) -> int:
        """Model FLOPs of one call (meta device: no memory, no compute)."""
        return model_step_flops(self.model(extra, "meta"), self.inputs(shape, batch, "meta"), backward=backward)

    def report(self, label: str, seconds: float, flops: int, tokens: int) -> str:
        peak = torch.cuda.max_memory_allocated(self.device) / 2**30 if self.device.type == "cuda" else float("nan")
        util = f"MFU {mfu(flops, seconds, self.peak):6.1%}" if self.peak else "MFU n/a"
        line = (f"{label:40s} {seconds * 1e3:8.1f} ms  {flops / seconds / 1e12:7.1f} TFLOP/s  {util}  "
                f"{tokens / seconds:10,.0f} tokens/s  peak {peak:5.1f} GiB")
        print(line)
        return line

    def reset_peak(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)


def forward_backward(model: torch.nn.Module, make: Callable[[], Any]) -> Callable[[], None]:
    args, kwargs = make()

    def run() -> None:
        out = model(*args, **kwargs)[0]
        out.float().pow(2).mean().backward()
        model.zero_grad(set_to_none=True)
    return run


def bench_transformer(bench: Bench) -> dict[str, float]:
    """Skiparse vs dense, forward and forward+backward, per checkpointing policy."""
    args, shape = bench.args, bench.train_shape
    tokens = bench.tokens(shape)
    times: dict[str, float] = {}
    for label, extra in (("skiparse", {}), ("dense", DENSE)):
        fwd_flops = bench.flops(extra, shape, backward=False)
        step_flops = bench.flops(extra, shape, backward=True)
        model = bench.model(extra)
        make = bench.inputs(shape)
        for policy in args.checkpointing:
            apply_checkpointing(model, policy)
            bench.reset_peak()
            if policy == args.checkpointing[0]:
                fwd_args, fwd_kwargs = make()

                def forward(m: torch.nn.Module = model, a: Any = fwd_args, k: Any = fwd_kwargs) -> None:
                    with torch.no_grad():
                        m(*a, **k)
                seconds = median_seconds(forward, args.reps, bench.device)
                bench.report(f"{label} forward", seconds, fwd_flops, tokens)
                times[f"{label} forward"] = seconds
            bench.reset_peak()
            seconds = median_seconds(forward_backward(model, make), max(1, args.reps - 1), bench.device)
            bench.report(f"{label} forward+backward ({policy})", seconds, step_flops, tokens)
            times[f"{label} {policy}"] = seconds
        del model
    for policy in args.checkpointing:
        print(f"ratio skiparse/dense forward+backward ({policy}): "
              f"{times[f'skiparse {policy}'] / times[f'dense {policy}']:.2f}")
    return times


def bench_compile(bench: Bench) -> None:
    """The Skiparse forward+backward with every block compiled vs eager, same model and inputs."""
    from osctl.recipe.schema import CompileSettings
    from osctl.train.compile import CompileWatch, compile_blocks

    args, shape = bench.args, bench.train_shape
    policy = args.checkpointing[0]
    flops = bench.flops({}, shape, backward=True)
    model = bench.model({})
    apply_checkpointing(model, policy)
    make = bench.inputs(shape)
    bench.reset_peak()
    eager = median_seconds(forward_backward(model, make), args.reps, bench.device)
    bench.report(f"eager forward+backward ({policy})", eager, flops, bench.tokens(shape))
    watch = CompileWatch().start()
    started = time.perf_counter()
    compile_blocks(model, CompileSettings(mode=args.compile_mode), shapes=1)
    forward_backward(model, make)()
    _sync(bench.device)
    print(f"compiling: {time.perf_counter() - started:.1f} s, {watch.compiles} compilations")
    bench.reset_peak()
    before = watch.compiles
    compiled = median_seconds(forward_backward(model, make), args.reps, bench.device)
    bench.report(f"compiled forward+backward ({policy})", compiled, flops, bench.tokens(shape))
    print(f"ratio compiled/eager: {compiled / eager:.2f} (compilations while timing: {watch.compiles - before})")
    watch.stop()


def bench_train_step(bench: Bench) -> None:
    """A whole training step: forward, loss, backward, clipping, fused AdamW, EMA."""
    from osctl.train.ema import EMA

    args, shape = bench.args, bench.train_shape
    policy = args.checkpointing[0]
    model = bench.model({}, dtype=torch.float32)  # fp32 master weights, bf16 compute (autocast), as training runs
    apply_checkpointing(model, policy)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5, fused=bench.device.type == "cuda")
    ema = EMA(params, decay=0.9999)
    make = bench.inputs(shape)
    inputs, kwargs = make()

    def step() -> None:
        with torch.autocast(bench.device.type, dtype=torch.bfloat16, enabled=bench.device.type == "cuda"):
            out = model(*inputs, **kwargs)[0]
        out.float().pow(2).mean().backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        ema.update(params)

    flops = bench.flops({}, shape, backward=True)
    bench.reset_peak()
    seconds = median_seconds(step, max(1, args.reps - 1), bench.device)
    bench.report(f"training step ({policy}, AdamW, EMA)", seconds, flops, bench.tokens(shape))


def bench_sample_step(bench: Bench) -> None:
    """One denoising step with CFG (batch 2) at the sampling size."""
    args, shape = bench.args, bench.sample_shape
    model = bench.model({}).eval()
    flops = bench.flops({}, shape, batch=2, backward=False)
    args_, kwargs = bench.inputs(shape, batch=2)()

    def step() -> None:
        with torch.no_grad():
            model(*args_, **kwargs)
    bench.reset_peak()
    seconds = median_seconds(step, args.reps, bench.device)
    bench.report(f"sampling step {shape[0]}x{shape[1]}x{shape[2]} (CFG)", seconds, flops, 2 * bench.tokens(shape))


def bench_profile(bench: Bench) -> None:
    """Share of a forward+backward's device time in data-movement ops."""
    from torch.profiler import ProfilerActivity, profile

    model = bench.model({})
    apply_checkpointing(model, bench.args.checkpointing[0])
    run = forward_backward(model, bench.inputs(bench.train_shape))
    run()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if bench.device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        run()
        _sync(bench.device)
    device_time = "self_device_time_total" if bench.device.type == "cuda" else "self_cpu_time_total"
    events = prof.key_averages()
    total = sum(getattr(e, device_time) for e in events)
    moved = {e.key: getattr(e, device_time) for e in events if e.key in REARRANGE_OPS}
    share = sum(moved.values()) / total if total else 0.0
    top = ", ".join(f"{k} {v / total:.1%}" for k, v in sorted(moved.items(), key=lambda kv: -kv[1])[:4])
    print(f"rearrangements: {share:.1%} of {'device' if bench.device.type == 'cuda' else 'CPU'} time ({top})")


def main() -> None:
    """Parse options and run each measurement asked for."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny preset and shapes (script smoke test)")
    parser.add_argument("--configs", default="transformer,train,sample",
                        help="comma-separated: transformer, train, sample")
    parser.add_argument("--checkpointing", default="full,selective",
                        help="comma-separated policies (off, full, selective); the first is used by the other configs")
    parser.add_argument("--compile", action="store_true", help="also time the blocks compiled vs eager")
    parser.add_argument("--compile-mode", default="default", choices=["default", "max-autotune-no-cudagraphs"])
    parser.add_argument("--attention", default="auto", choices=["auto", "flash", "cudnn", "efficient", "math"],
                        help="SDPA kernel forced for every measurement")
    parser.add_argument("--profile", action="store_true", help="share of time in rearrangement ops")
    parser.add_argument("--peak-tflops", type=float, default=None, help="the device's dense bf16 peak")
    parser.add_argument("--frames", type=int, default=24, help="latent frames")
    parser.add_argument("--height", type=int, default=60, help="latent height")
    parser.add_argument("--width", type=int, default=80, help="latent width")
    parser.add_argument("--text", type=int, default=512, help="text tokens")
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    args.checkpointing = [p.strip() for p in args.checkpointing.split(",") if p.strip()]
    configs = {c.strip() for c in args.configs.split(",") if c.strip()}
    bench = Bench(args)
    print(f"attention kernel: {args.attention}")
    with attention_backend(args.attention):
        if "transformer" in configs:
            bench_transformer(bench)
        if args.compile:
            bench_compile(bench)
        if "train" in configs:
            bench_train_step(bench)
        if "sample" in configs:
            bench_sample_step(bench)
        if args.profile:
            bench_profile(bench)


if __name__ == "__main__":
    main()
