"""Real-size throughput of the released v1.3 transformer (2B/122): Skiparse against dense attention.

Builds the 2.77 B-parameter model twice (Skiparse as released, and the same sizes with dense attention
everywhere), feeds one 93 x 480 x 640 clip's latents (WFVAE 4 x 8 -> 24 x 60 x 80, 28,800 tokens) and
512 text tokens, and times a forward pass and a forward + backward pass (gradient checkpointing on)
of each, one model after the other, in the same run. Prints milliseconds, tokens/s, the linear-layer TFLOP/s and the
Skiparse/dense ratios. Needs a GPU for the real size (bf16); ``--tiny`` runs the same code on the
tiny preset on any machine (a smoke test of the script, not a measurement).

    python benchmarks/bench_realsize.py [--reps 3] [--frames 24 --height 60 --width 80 --text 512]

Measured (H200, torch 2.11, bf16): forward 546 ms vs 862 ms (0.63), forward + backward 2246 ms vs
3766 ms (0.60), 13.8 GiB peak; see benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from osctl_builtin.models.osp_v13.presets import preset_config
from osctl_builtin.models.osp_v13.transformer import OpenSoraT2V_v1_3


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


def main() -> None:
    """Parse options, build both models in turn and print timings and ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny preset and shapes (script smoke test)")
    parser.add_argument("--frames", type=int, default=24, help="latent frames")
    parser.add_argument("--height", type=int, default=60, help="latent height")
    parser.add_argument("--width", type=int, default=80, help="latent width")
    parser.add_argument("--text", type=int, default=512, help="text tokens")
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    cfg = preset_config("tiny" if args.tiny else "2B/122")
    shape = (3, 8, 8, 8) if args.tiny else (args.frames, args.height, args.width, args.text)
    frames, height, width, text_len = shape
    tokens = frames * (height // cfg["patch_size"]) * (width // cfg["patch_size"])
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device {name}, torch {torch.__version__}, {dtype}, {tokens} video tokens, {text_len} text tokens")

    results: dict[str, tuple[float, float]] = {}
    for label, extra in (("skiparse", {}), ("dense", {"sparse1d": False, "sparse_blocks": None})):
        torch.manual_seed(0)
        with torch.device(device):
            model = OpenSoraT2V_v1_3(**{**cfg, **extra}).to(dtype)
        model.enable_gradient_checkpointing()
        params = sum(p.numel() for p in model.parameters())
        x = torch.randn(1, cfg["in_channels"], frames, height, width, device=device, dtype=dtype)
        text = torch.randn(1, 1, text_len, cfg["caption_channels"], device=device, dtype=dtype)
        text_mask = torch.ones(1, 1, text_len, device=device, dtype=torch.long)
        step = torch.tensor([500], device=device)

        def forward(model: OpenSoraT2V_v1_3 = model, x: torch.Tensor = x, text: torch.Tensor = text,
                    text_mask: torch.Tensor = text_mask, step: torch.Tensor = step) -> None:
            with torch.no_grad():
                model(x, step, text, encoder_attention_mask=text_mask, return_dict=False)

        def forward_backward(model: OpenSoraT2V_v1_3 = model, x: torch.Tensor = x, text: torch.Tensor = text,
                             text_mask: torch.Tensor = text_mask, step: torch.Tensor = step) -> None:
            out = model(x, step, text, encoder_attention_mask=text_mask, return_dict=False)[0]
            out.float().pow(2).mean().backward()
            model.zero_grad(set_to_none=True)

        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        fwd = median_seconds(forward, args.reps, device)
        both = median_seconds(forward_backward, max(1, args.reps - 1), device)
        peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
        linear_tflops = 2 * params * tokens / fwd / 1e12
        print(f"{label:9s} {params / 1e9:.3f} B params  forward {fwd * 1e3:7.0f} ms ({tokens / fwd:,.0f} tokens/s, "
              f"linear layers {linear_tflops:.0f} TFLOP/s)  forward+backward {both * 1e3:7.0f} ms  peak {peak:.1f} GiB")
        results[label] = (fwd, both)
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    print(f"ratio skiparse/dense: forward {results['skiparse'][0] / results['dense'][0]:.2f}, "
          f"forward+backward {results['skiparse'][1] / results['dense'][1]:.2f}")


if __name__ == "__main__":
    main()
