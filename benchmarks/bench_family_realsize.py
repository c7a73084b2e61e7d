"""Real-size training step of a diffusers family through osctl vs the bare diffusers module: Wan 2.1 1.3B.

Builds Wan 2.1 T2V 1.3B (random weights from osctl's preset: the released architecture, nothing downloaded) once,
and times, alternating, on one 81 x 480 x 832 clip's latents (Wan VAE 4 x 8 -> 16 x 21 x 60 x 104, 32,760
tokens) and 512 text tokens of 4096 dims:

- ``osctl``: the step as osctl's loop runs it: the ``wan`` model plugin's call (Wan's text handling, the
  timestep scale), bf16 autocast, the flow-matching loss, backward, clipping, fused AdamW;
- ``bare``: the same diffusers ``WanTransformer3DModel`` (the same module object) called directly, with the loss
  written out in torch and the same optimizer step.

Gradient checkpointing is the recipe's policy (``--checkpointing full|selective|off``). Each line prints step
time, model TFLOP/s and MFU (:mod:`osctl.train.flops`: FLOPs counted on the meta device, the device's dense bf16
peak) and peak memory; the ratio osctl / bare is the overhead osctl adds (target <= 1.05, as on CPU). Needs a
GPU for the real size; ``--tiny`` runs the same code with the tiny preset on any machine (a smoke test).

    python benchmarks/bench_family_realsize.py [--steps 5] [--checkpointing full] [--sample]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "plugins"))

from osctl.plugin_manager import default_registry  # noqa: E402
from osctl.train.checkpointing import apply_checkpointing  # noqa: E402
from osctl.train.flops import device_peak_tflops, mfu, model_step_flops  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build(preset: str, device: Any, overrides: dict[str, Any]) -> Any:
    """osctl's ``wan`` model of ``preset`` (random weights) on ``device``, float32 masters."""
    registry = default_registry()
    torch.manual_seed(0)
    meta = device == "meta"
    return registry.build("model", "wan", {"preset": preset, **overrides}, device=None if meta else device,
                          dtype=torch.float32, meta=meta)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="the tiny preset and shapes (script smoke test)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps of each loop (after one warm-up each)")
    parser.add_argument("--checkpointing", default="full", choices=["off", "full", "selective"])
    parser.add_argument("--sample", action="store_true", help="also time one CFG sampling step (batch 2)")
    parser.add_argument("--peak-tflops", type=float, default=None)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    preset = "tiny" if args.tiny else "wan2.1-t2v-1.3b"
    overrides: dict[str, Any] = {}
    latent = (16, 3, 8, 8) if args.tiny else (16, 21, 60, 104)
    text_len = 16 if args.tiny else 512
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    peak = args.peak_tflops or device_peak_tflops(name)
    print(f"device {name}, torch {torch.__version__}, preset {preset}, latents {latent}, {text_len} text tokens, "
          f"checkpointing {args.checkpointing}, peak {peak or 'unknown'} TFLOP/s")

    model = build(preset, device, overrides).train()
    apply_checkpointing(model, args.checkpointing)
    transformer = model.transformer  # the diffusers module both loops train
    text_dim = int(transformer.config.text_dim)
    gen = torch.Generator(device="cpu").manual_seed(0)
    latents = torch.randn((1, *latent), generator=gen).to(device)
    noise = torch.randn((1, *latent), generator=gen).to(device)
    text = torch.randn((1, text_len, text_dim), generator=gen).to(device)
    mask = torch.ones((1, text_len), device=device)
    sigma = torch.tensor([0.7], device=device)
    noisy = (1 - sigma.view(-1, 1, 1, 1, 1)) * latents + sigma.view(-1, 1, 1, 1, 1) * noise
    target = noise - latents
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5, fused=device.type == "cuda")
    autocast = {"device_type": device.type, "dtype": torch.bfloat16, "enabled": device.type == "cuda"}

    def osctl_step() -> None:
        with torch.autocast(**autocast):
            pred = model(noisy, sigma * 1000, text.unsqueeze(1), attention_mask=torch.ones_like(latents[:, 0]),
                         encoder_attention_mask=mask.unsqueeze(1), return_dict=False)[0]
        loss = ((pred.float() - target) ** 2).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def bare_step() -> None:
        with torch.autocast(**autocast):
            pred = transformer(hidden_states=noisy, timestep=sigma * 1000, encoder_hidden_states=text,
                               return_dict=False)[0]
        loss = ((pred.float() - target) ** 2).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    meta_model = build(preset, "meta", overrides)

    def inputs() -> tuple[tuple[Any, ...], dict[str, Any]]:
        m = torch.device("meta")
        return (torch.empty((1, *latent), device=m), torch.zeros(1, dtype=torch.long, device=m),
                torch.empty((1, 1, text_len, text_dim), device=m)), {
            "attention_mask": torch.ones((1, *latent[1:]), device=m),
            "encoder_attention_mask": torch.ones((1, 1, text_len), device=m), "return_dict": False}

    flops = model_step_flops(meta_model, inputs, backward=True)
    times: dict[str, list[float]] = {"osctl": [], "bare": []}
    for step in (osctl_step, bare_step):  # one warm-up each
        step()
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(args.steps):
        for label, step in (("osctl", osctl_step), ("bare", bare_step)):
            started = time.perf_counter()
            step()
            _sync(device)
            times[label].append(time.perf_counter() - started)
    memory = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    tokens = latent[1] * (latent[2] // 2) * (latent[3] // 2)
    for label, values in times.items():
        seconds = statistics.median(values)
        util = f"MFU {mfu(flops, seconds, peak):.1%}" if peak else "MFU n/a"
        print(f"{label:6s} step {seconds * 1e3:9.1f} ms  {flops / seconds / 1e12:7.1f} TFLOP/s  {util}  "
              f"{tokens / seconds:10,.0f} tokens/s")
    print(f"peak memory {memory:.1f} GiB (both loops, one model and optimizer)")
    print(f"ratio osctl / bare = {statistics.median(times['osctl']) / statistics.median(times['bare']):.3f}")
    if args.sample:
        model.eval()
        both = torch.cat([noisy, noisy])
        states = torch.cat([text, torch.zeros_like(text)]).unsqueeze(1)

        def sample_step() -> None:
            with torch.no_grad(), torch.autocast(**autocast):
                model(both, torch.cat([sigma, sigma]) * 1000, states,
                      attention_mask=torch.ones_like(both[:, 0]),
                      encoder_attention_mask=torch.ones((2, 1, text_len), device=device), return_dict=False)
        sample_step()
        _sync(device)
        started = time.perf_counter()
        for _ in range(args.steps):
            sample_step()
        _sync(device)
        print(f"sampling step (CFG, batch 2): {(time.perf_counter() - started) / args.steps * 1e3:.1f} ms")


if __name__ == "__main__":
    main()
