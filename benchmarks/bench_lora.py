"""LoRA vs full fine-tuning: trainable parameters, step time and peak memory, with osctl's estimate beside it.

CPU (default): the tiny v1.3 preset widened to 8 x 48 heads (about 10 M parameters) on 5 x 16 x 16 latents,
full fine-tune vs LoRA rank 32, each in its own process; peak = resident-set high-water mark above the
process's baseline (``MALLOC_MMAP_THRESHOLD_=65536``, see ``tests/integration/memory_probe.py``).

GPU (``--gpu``, when one is lent): the released v1.3 2B/122 architecture (2.7 B parameters, random weights:
memory and time do not depend on the values) at its training size 93 x 352 x 640 (latents 24 x 44 x 80),
batch 1, bf16 autocast, gradient checkpointing, LoRA rank 32 with a bf16 and an fp8 base, with and without
offloading half the blocks, against ``torch.cuda.max_memory_allocated``. Text states are random
(4096-d, 512 tokens): the frozen text encoder and autoencoder are not part of the step measured (the plan
counts them separately as frozen components).

Both call the model directly (noisy latents in, MSE to a random target out, AdamW on the trainable
parameters) through osctl's own LoRA, base-dtype and offload code.

    .venv/bin/python benchmarks/bench_lora.py [--steps 4] [--rank 32]
    .venv/bin/python benchmarks/bench_lora.py --gpu [--steps 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

REPO = Path(__file__).resolve().parents[1]
for path in (REPO, REPO / "plugins"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

CPU_MODEL = {"preset": "tiny", "num_attention_heads": 8, "attention_head_dim": 48, "in_channels": 8,
             "out_channels": 8, "caption_channels": 32}
GPU_MODEL = {"preset": "2B/122"}


def build(model_spec: dict[str, Any], device: str) -> Any:
    import torch

    from osctl_builtin.models.osp_v13.presets import preset_config
    from osctl_builtin.models.osp_v13.transformer import OpenSoraT2V_v1_3

    arch = preset_config(model_spec["preset"])
    arch.update({k: v for k, v in model_spec.items() if k != "preset"})
    arch["cross_attention_dim"] = arch["num_attention_heads"] * arch["attention_head_dim"]
    torch.manual_seed(0)
    with torch.device(device):
        return OpenSoraT2V_v1_3.from_config(arch)


def recipe_like(config: dict[str, Any]) -> Any:
    """The recipe fields osctl's estimate reads, for this configuration."""
    lora = SimpleNamespace(rank=config["rank"], alpha=float(config["rank"]), dropout=0.0, target_modules=None,
                           init="default") if config["rank"] else None
    train = SimpleNamespace(mixed_precision=config["precision"], lora=lora, base_dtype=config["base_dtype"],
                            gradient_checkpointing=config["checkpointing"], use_ema=False, offload_ema=False,
                            offload=None)
    return SimpleNamespace(train=train, parallel=SimpleNamespace(zero_stage=2))


def run(config: dict[str, Any]) -> dict[str, Any]:
    """One configuration in this process: build, adapt, time ``steps`` optimizer steps, measure the peak."""
    import torch

    from osctl.train.frozen_base import store_frozen_base
    from osctl.train.lora import add_adapter, spec_from_settings
    from osctl.train.memory import estimate_step_memory
    from osctl.train.offload import offload_blocks

    device = config["device"]
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    if device == "cpu":  # load every kernel and library once, so the baseline holds them
        import gc

        warm = build({"preset": "tiny", "in_channels": 8, "out_channels": 8, "caption_channels": 32}, device)
        add_adapter(warm, spec_from_settings(SimpleNamespace(rank=2, alpha=2.0, dropout=0.0, target_modules=None,
                                                             init="random"), warm))  # imports peft now
        warm(torch.randn(1, 8, 2, 4, 4, requires_grad=True), torch.tensor([1]), torch.randn(1, 1, 4, 32),
             attention_mask=torch.ones(1, 2, 4, 4), encoder_attention_mask=torch.ones(1, 1, 4),
             return_dict=False)[0].sum().backward()
        del warm
        gc.collect()
    baseline = _rss() if device == "cpu" else 0
    model = build(config["model"], device)
    recipe = recipe_like(config)
    if config["checkpointing"]:
        model.enable_gradient_checkpointing()
    if recipe.train.lora is not None:
        add_adapter(model, spec_from_settings(recipe.train.lora, model))
        store_frozen_base(model, config["base_dtype"], strategy="single")
    if config["offload"]:
        offload_blocks(model, config["offload"], device=torch.device(device))
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-4)
    b, (t, h, w) = config["batch"], config["latent"]
    channels, text_dim = model.config.in_channels, model.config.caption_channels
    g = torch.Generator(device=device).manual_seed(0)
    latents = torch.randn(b, channels, t, h, w, device=device, generator=g)
    text = torch.randn(b, 1, config["text_tokens"], text_dim, device=device, generator=g)
    mask, text_mask = torch.ones(b, t, h, w, device=device), torch.ones(b, 1, config["text_tokens"], device=device)
    autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=config["precision"] == "bf16")
    times = []
    for step in range(config["steps"]):
        if step == 1:  # the first step builds the optimizer state: measure the peak from the second on
            if device == "cuda":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            else:
                Path("/proc/self/clear_refs").write_text("5")
        started = time.perf_counter()
        with autocast:
            out = model(latents, torch.full((b,), 500, device=device), text, attention_mask=mask,
                        encoder_attention_mask=text_mask, return_dict=False)[0]
        torch.nn.functional.mse_loss(out.float(), latents).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    peak = torch.cuda.max_memory_allocated() if device == "cuda" else _rss("VmHWM") - baseline
    meta = build(config["model"], "meta")
    if config["checkpointing"]:
        meta.enable_gradient_checkpointing()
    if recipe.train.lora is not None:
        add_adapter(meta, spec_from_settings(recipe.train.lora, meta))
    estimate = estimate_step_memory(
        meta, bucket=(0, 0, 0), latent=(t, h, w), tokens=t * h * w // 4, batch=b, channels=channels,
        text_tokens=config["text_tokens"], text_dim=text_dim, recipe=recipe, strategy="single", world_size=1,
        offload_blocks=config["offload"], device_type=device)
    estimate.batch_tensors = (4 + 1) * latents.numel() * 4  # this loop: latents, prediction, its grad, loss terms
    return {"name": config["name"], "trainable_parameters": sum(p.numel() for p in trainable),
            "total_parameters": sum(p.numel() for p in model.parameters()) if not config["offload"] else None,
            "step_seconds": statistics.median(times[1:]) if len(times) > 1 else times[0],
            "peak_bytes": peak, "estimated_bytes": estimate.total, "estimate_ratio": round(estimate.total / peak, 3)}


def _rss(field: str = "VmRSS") -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(field)


def configs(args: argparse.Namespace) -> list[dict[str, Any]]:
    if args.gpu:
        common = {"device": "cuda", "model": GPU_MODEL, "latent": (24, 44, 80), "batch": 1, "text_tokens": 512,
                  "precision": "bf16", "checkpointing": True, "steps": args.steps}
        return [{**common, "name": name, "rank": args.rank, "base_dtype": dtype, "offload": offload}
                for name, dtype, offload in (("lora-bf16", "bf16", 0), ("lora-fp8", "fp8_e4m3", 0),
                                             ("lora-bf16-offload16", "bf16", 16), ("lora-fp8-offload16", "fp8_e4m3", 16))]
    common = {"device": "cpu", "model": CPU_MODEL, "latent": (5, 16, 16), "batch": 2, "text_tokens": 16,
              "precision": "fp32", "checkpointing": False, "steps": args.steps, "base_dtype": "fp32", "offload": 0}
    return [{**common, "name": "full", "rank": 0}, {**common, "name": f"lora-r{args.rank}", "rank": args.rank}]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpu", action="store_true", help="the released 2.7 B architecture on a CUDA device")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--rank", type=int, default=32)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run(json.loads(args.child))))
        return
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
           "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "plugins")])}
    results = []
    for config in configs(args):
        proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(config)], env=env, capture_output=True,
                              text=True, check=False)
        if proc.returncode:
            results.append({"name": config["name"], "error": proc.stderr.strip().splitlines()[-1:]})
            continue
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        results.append(result)
        print(f"{result['name']:>22}: {result['trainable_parameters'] / 1e6:8.2f} M trainable  "
              f"{result['step_seconds']:7.3f} s/step  peak {result['peak_bytes'] / 2**20:9.1f} MiB  "
              f"(estimate {result['estimated_bytes'] / 2**20:9.1f} MiB, x{result['estimate_ratio']})", flush=True)
    print(json.dumps({"device": "cuda" if args.gpu else "cpu", "results": results}))


if __name__ == "__main__":
    main()
