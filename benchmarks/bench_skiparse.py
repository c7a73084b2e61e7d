"""Time one OSP v1.3 transformer block with Skiparse (k=4) against the same block with dense attention.

Two 2-block models share their weights: one dense, one with Skiparse on block 0 (single skip) and
block 1 (group skip). One forward of each model records the exact block inputs (tokens, text,
modulation, per-forward context); the blocks are then called on those inputs in interleaved
repetitions and the medians are compared. The default size (8 x 64 x 64 latents -> 8192 tokens,
width 192) makes self-attention the dominant cost, where Skiparse's ~1/k attention cost shows; the
target is a Skiparse/dense ratio <= 0.5.

    .venv/bin/python benchmarks/bench_skiparse.py [--frames 8 --size 64 --heads 4 --head-dim 48 --reps 7]
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import torch

from osctl_builtin.models.osp_v13.presets import preset_config
from osctl_builtin.models.osp_v13.transformer import OpenSoraT2V_v1_3


def block_inputs(model: OpenSoraT2V_v1_3, inputs: dict[str, torch.Tensor]) -> list[tuple[Any, ...]]:
    """The positional arguments each block of ``model`` receives in one forward pass."""
    captured: list[tuple[Any, ...]] = []
    hooks = [b.register_forward_pre_hook(lambda _m, args: captured.append(args)) for b in model.transformer_blocks]
    with torch.no_grad():
        model(**inputs, return_dict=False)
    for hook in hooks:
        hook.remove()
    return captured


def main() -> None:
    """Parse options, build the twin models and print per-block medians and the ratios."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=8, help="latent frames T")
    parser.add_argument("--size", type=int, default=64, help="latent height = width (tokens = T * (size/2)^2)")
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--head-dim", type=int, default=48)
    parser.add_argument("--text", type=int, default=64, help="text tokens")
    parser.add_argument("--k", type=int, default=4, help="Skiparse ratio")
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1, help="1 is steadiest on a shared 2-core machine")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    cfg = preset_config("tiny")
    cfg.update(num_layers=2, num_attention_heads=args.heads, attention_head_dim=args.head_dim,
               cross_attention_dim=args.heads * args.head_dim)
    torch.manual_seed(0)
    dense = OpenSoraT2V_v1_3(**{**cfg, "sparse1d": False, "sparse_n": 1, "sparse_blocks": None}).eval()
    sparse = OpenSoraT2V_v1_3(**{**cfg, "sparse1d": True, "sparse_n": args.k, "sparse_blocks": [0, 1]}).eval()
    sparse.load_state_dict(dense.state_dict())

    gen = torch.Generator().manual_seed(0)
    inputs = {
        "hidden_states": torch.randn(1, 8, args.frames, args.size, args.size, generator=gen),
        "timestep": torch.tensor([500.0]),
        "encoder_hidden_states": torch.randn(1, 1, args.text, 32, generator=gen),
        "attention_mask": torch.ones(1, args.frames, args.size, args.size),
        "encoder_attention_mask": torch.ones(1, 1, args.text),
    }
    tokens = args.frames * (args.size // 2) ** 2
    dense_args, sparse_args = block_inputs(dense, inputs), block_inputs(sparse, inputs)
    runs = {
        "dense": (dense.transformer_blocks[0], dense_args[0]),
        f"skiparse single k={args.k}": (sparse.transformer_blocks[0], sparse_args[0]),
        f"skiparse group k={args.k}": (sparse.transformer_blocks[1], sparse_args[1]),
    }
    times: dict[str, list[float]] = {name: [] for name in runs}
    with torch.no_grad():
        for block, block_args in runs.values():  # warm-up
            block(*block_args)
        for _ in range(args.reps):  # interleaved repetitions
            for name, (block, block_args) in runs.items():
                start = time.perf_counter()
                block(*block_args)
                times[name].append(time.perf_counter() - start)

    print(f"one block forward, {tokens} video tokens, width {args.heads * args.head_dim}, text {args.text}, "
          f"{args.threads} threads, median of {args.reps}")
    base = statistics.median(times["dense"])
    for name, values in times.items():
        med = statistics.median(values)
        print(f"  {name:<22} {med * 1e3:9.1f} ms   ratio to dense {med / base:5.2f}")


if __name__ == "__main__":
    main()
