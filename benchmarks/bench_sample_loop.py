"""Sampling-loop overhead of osctl's pipeline against a bare loop over the same model and scheduler.

Both run the same tiny model (about 1.6 M parameters, 9 x 32 x 32 video through the pixel autoencoder,
fp32, 1 thread), the same EulerAncestralDiscrete scheduler, 30 steps, classifier-free guidance in one
batched forward, from the same initial latents. osctl's `VideoPipeline.__call__` (output_type
"latent") and the bare loop alternate, repetition by repetition; the ratio of medians is printed
(target <= 1.05); nothing asserts a timing.

    .venv/bin/python benchmarks/bench_sample_loop.py [--repeats 15]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from osctl.geometry import latent_geometry  # noqa: E402
from osctl.plugin_manager import default_registry  # noqa: E402
from osctl.sample.pipeline import VideoPipeline  # noqa: E402

MODEL = {"preset": "tiny", "num_layers": 6, "num_attention_heads": 4, "attention_head_dim": 24, "in_channels": 12,
         "out_channels": 12, "sparse_blocks": [2, 3]}
AUTOENCODER = {"spatial_stride": 2, "temporal_stride": 1}
SAMPLER = {"prediction_type": "v_prediction", "rescale_betas_zero_snr": True}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()
    torch.set_num_threads(1)
    registry = default_registry()
    torch.manual_seed(0)
    model = registry.build("model", "opensora_v1_3", MODEL).eval()
    ae = registry.build("autoencoder", "pixel", AUTOENCODER)
    geometry = latent_geometry(
        registry.make_config("autoencoder", "pixel", AUTOENCODER, where="autoencoder").autoencoder_geometry(),
        registry.make_config("model", "opensora_v1_3", MODEL, where="model").model_geometry())
    te = registry.build("text_encoder", "tiny_t5", {"d_model": 32, "max_length": 32,
                                                    "cache_dir": tempfile.mkdtemp(prefix="osctl-bench-")})
    prompt, negative = "a red circle moving left on a black background", ""
    shape = (1, 12, 9, 16, 16)
    init = torch.randn(shape, generator=torch.Generator().manual_seed(1))

    def run_osctl() -> float:
        pipe = VideoPipeline(model, ae, te, registry.build("sampler", "EulerAncestralDiscrete", SAMPLER),
                             geometry=geometry)
        started = time.perf_counter()
        pipe(prompt, negative, num_frames=9, height=32, width=32, num_inference_steps=args.steps, guidance_scale=7.5,
             generator=torch.Generator().manual_seed(2), latents=init, output_type="latent")
        return time.perf_counter() - started

    @torch.no_grad()
    def run_bare() -> float:
        scheduler = registry.build("sampler", "EulerAncestralDiscrete", SAMPLER)
        started = time.perf_counter()
        tokens = te.tokenize([negative, prompt])
        states = te.encode(tokens["input_ids"], tokens["attention_mask"]).unsqueeze(1)
        mask = tokens["attention_mask"].unsqueeze(1)
        scheduler.set_timesteps(args.steps)
        x = init * scheduler.init_noise_sigma
        ones = torch.ones((2, *shape[2:]))
        generator = torch.Generator().manual_seed(2)
        for t in scheduler.timesteps:
            inp = scheduler.scale_model_input(torch.cat([x, x]), t)
            out = model(inp, t.expand(2), states, attention_mask=ones, encoder_attention_mask=mask,
                        return_dict=False)[0]
            u, c = out.chunk(2)
            x = scheduler.step(u + 7.5 * (c - u), t, x, generator=generator).prev_sample
        return time.perf_counter() - started

    run_osctl(), run_bare()  # warm-up
    osctl_times, bare_times = [], []
    for _ in range(args.repeats):
        osctl_times.append(run_osctl())
        bare_times.append(run_bare())
    o, b = statistics.median(osctl_times), statistics.median(bare_times)
    print(f"osctl pipeline {o * 1e3:.0f} ms, bare loop {b * 1e3:.0f} ms per {args.steps}-step sample "
          f"(median of {args.repeats})")
    print(f"ratio osctl / bare = {o / b:.3f}  (target <= 1.05)")


if __name__ == "__main__":
    main()
