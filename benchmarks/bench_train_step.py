"""Training-step overhead of osctl against a bare hand-written torch loop, measured side by side.

Both do the same work on the same batch with the same tiny model (fp32, 1 thread): frozen autoencoder and
text-encoder passes, noise, forward, loss, backward, gradient clipping and an AdamW step. osctl runs its
real loop (`osctl.train.loop.train`, EMA off so both do the same optimizer work); after every osctl step
its `on_step` hook runs one bare step on a copy of the model, so the two alternate under the same machine
load. The ratio of medians is printed (target <= 1.05); nothing asserts a timing.

``--family osp`` (default): the v1.3 transformer (about 1.6 M parameters) on 9 x 32 x 32 clips through the
pixel autoencoder, v-prediction. ``--family wan``: a small Wan transformer (4 blocks, 4 x 32 heads, about
0.6 M parameters) on 9 x 64 x 64 clips through a small random Wan VAE, flow matching with shift 3; the bare
loop calls the same diffusers ``WanTransformer3DModel`` directly, with Wan's text handling (zeros past the
prompt, 512 tokens) and the flow-matching loss written out in plain torch.

    .venv/bin/python benchmarks/bench_train_step.py [--steps 60] [--family wan]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "plugins"))

from osctl.plugin_manager import default_registry  # noqa: E402
from osctl.recipe.load import load_recipe  # noqa: E402
from osctl.recipe.validate import check_recipe  # noqa: E402
from osctl.train.loop import train  # noqa: E402
from osctl.train.run import TrainOptions, setup_training  # noqa: E402

RECIPE = """
model: {{name: opensora_v1_3, preset: tiny, num_layers: 6, num_attention_heads: 4, attention_head_dim: 24,
         in_channels: 12, out_channels: 12, sparse_blocks: [2, 3]}}
autoencoder: {{name: pixel, spatial_stride: 2, temporal_stride: 1}}
text_encoder: {{name: tiny_t5, d_model: 32, max_length: 32, cache_dir: {cache}}}
data: {{num_frames: 9, hw_stride: 8, max_height: 32, max_width: 32}}
diffusion: {{prediction_type: v_prediction, rescale_betas_zero_snr: true, snr_gamma: 5.0}}
train: {{output_dir: {out}, max_steps: {steps}, train_batch_size: 4, mixed_precision: fp32, use_ema: false,
        checkpointing_steps: 100000, log_interval: 100000, learning_rate: 1.0e-4}}
parallel: {{strategy: single}}
"""

WAN_RECIPE = """
model: {{name: wan, preset: tiny, num_layers: 4, num_attention_heads: 4, attention_head_dim: 32, ffn_dim: 256}}
autoencoder: {{name: wan_vae, preset: tiny}}
text_encoder: {{name: tiny_t5, d_model: 32, max_length: 32, cache_dir: {cache}}}
data: {{num_frames: 9, hw_stride: 16, max_height: 64, max_width: 64}}
diffusion: {{objective: flow_matching, flow_shift: 3.0, weighting_scheme: logit_normal}}
train: {{output_dir: {out}, max_steps: {steps}, train_batch_size: 4, mixed_precision: fp32, use_ema: false,
        checkpointing_steps: 100000, log_interval: 100000, learning_rate: 1.0e-4}}
parallel: {{strategy: single}}
sample: {{sample_method: UniPCMultistep}}
"""


class SameBatch:
    """A batch source that yields one fixed batch forever (both loops then see identical inputs)."""

    def __init__(self, batch: dict[str, torch.Tensor]) -> None:
        self.batch = batch

    def __iter__(self):
        while True:
            yield self.batch

    def state_dict(self) -> dict[str, int]:
        return {}

    def load_state_dict(self, state: dict[str, int]) -> None:
        pass


def registry_with_families() -> Any:
    """The installed plugins, plus the built-in Wan plugins when osctl was installed before they existed."""
    from osctl.plugin_manager import build_registry, find_plugins, new_plugin_manager
    from osctl_builtin.autoencoders.wan_vae import register as wan_vae
    from osctl_builtin.models.wan import register as wan

    installed = {p.name for p in find_plugins()}
    extra = [(n, m) for n, m in (("osctl.models.wan", wan), ("osctl.autoencoders.wan_vae", wan_vae))
             if n not in installed]
    return build_registry(new_plugin_manager(extra)) if extra else default_registry()


def wan_bare_step(parts: Any, batch: dict[str, torch.Tensor]) -> Any:
    """A bare training step over a copy of the diffusers ``WanTransformer3DModel`` osctl trains."""
    model = copy.deepcopy(parts.strategy.module.transformer)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, eps=1e-15, weight_decay=1e-2)
    ae, text_encoder = parts.autoencoder, parts.text_encoder
    shift = 3.0
    levels = torch.arange(1, 1001, dtype=torch.float32) / 1000
    sigmas = shift * levels / (1 + (shift - 1) * levels)
    noise_gen = torch.Generator().manual_seed(1)
    mask = batch["attention_mask"]

    def step() -> float:
        started = time.perf_counter()
        with torch.no_grad():
            latents = ae.encode(batch["pixel_values"], sample=True, generator=noise_gen).float()
            text = text_encoder.encode(batch["input_ids"], mask) * mask[..., None]
            text = torch.cat([text, text.new_zeros(text.shape[0], 512 - text.shape[1], text.shape[2])], dim=1)
        index = (torch.sigmoid(torch.randn(latents.shape[0], generator=noise_gen)) * 1000).long().clamp(0, 999)
        sigma = sigmas[index].view(-1, 1, 1, 1, 1)
        noise = torch.randn(latents.shape, generator=noise_gen)
        noisy = (1 - sigma) * latents + sigma * noise
        pred = model(hidden_states=noisy, timestep=sigmas[index] * 1000, encoder_hidden_states=text,
                     return_dict=False)[0]
        loss = ((pred.float() - (noise - latents)) ** 2).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return time.perf_counter() - started

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--family", choices=("osp", "wan"), default="osp")
    args = parser.parse_args()
    torch.set_num_threads(1)
    tmp = Path(tempfile.mkdtemp(prefix="osctl-bench-train-"))
    recipe = tmp / "r.yaml"
    template, size = (WAN_RECIPE, 64) if args.family == "wan" else (RECIPE, 32)
    recipe.write_text(template.format(cache=tmp / "cache", out=tmp / "out", steps=args.steps + args.warmup))
    registry = registry_with_families()
    checked = check_recipe(load_recipe(recipe), registry)
    te = registry.build("text_encoder", "tiny_t5", checked.components["text_encoder"])
    tokens = te.tokenize(["a red circle moving left"] * 4)
    g = torch.Generator().manual_seed(0)
    batch = {"pixel_values": torch.rand(4, 3, 9, size, size, generator=g) * 2 - 1, **tokens}
    parts = setup_training(checked, registry, TrainOptions(data_source=SameBatch(batch)))
    bare_step = wan_bare_step(parts, batch) if args.family == "wan" else osp_bare_step(parts, batch)
    run(parts, bare_step, args.warmup)


def osp_bare_step(parts: Any, batch: dict[str, torch.Tensor]) -> Any:
    """A bare training step over a copy of the v1.3 transformer, with osctl's frozen components and objective."""
    model = copy.deepcopy(parts.strategy.module)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, eps=1e-15, weight_decay=1e-2)
    ae, text_encoder, objective = parts.autoencoder, parts.text_encoder, parts.objective
    noise_gen = torch.Generator().manual_seed(1)
    rng = __import__("random").Random(1)

    def bare_step() -> float:
        started = time.perf_counter()
        with torch.no_grad():
            latents = ae.encode(batch["pixel_values"], sample=True, generator=noise_gen).float()
            text = text_encoder.encode(batch["input_ids"], batch["attention_mask"])
        t = objective.sample_timesteps(latents.shape[0], rng)
        noised = objective.add_noise(latents, objective.sample_noise(latents, noise_gen), t)
        mask = torch.ones((latents.shape[0], *latents.shape[2:]))
        pred = model(noised.noisy, noised.timesteps, text.unsqueeze(1), attention_mask=mask,
                     encoder_attention_mask=batch["attention_mask"].unsqueeze(1), return_dict=False)[0]
        loss = objective.loss(pred, noised, None)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return time.perf_counter() - started

    return bare_step


def run(parts: Any, bare_step: Any, warmup: int) -> None:
    """osctl's loop with one bare step after each of its steps; prints the medians and their ratio."""
    osctl_times: list[float] = []
    bare_times: list[float] = []
    last = [time.perf_counter()]

    def on_step(step: int, record: dict) -> None:
        now = time.perf_counter()
        osctl_times.append(now - last[0])
        bare_times.append(bare_step())
        last[0] = time.perf_counter()

    parts.on_step = on_step
    last[0] = time.perf_counter()
    train(parts)
    o = statistics.median(osctl_times[warmup:])
    b = statistics.median(bare_times[warmup:])
    print(f"osctl step {o * 1e3:.1f} ms, bare loop step {b * 1e3:.1f} ms (median of {len(osctl_times) - warmup})")
    print(f"ratio osctl / bare = {o / b:.3f}  (target <= 1.05)")


if __name__ == "__main__":
    main()
