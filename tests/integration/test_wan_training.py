"""Training the Wan family: the loss of a step against the objective written out here, and the round trip
`osctl train` -> `osctl ckpt convert --to diffusers-pipeline` -> diffusers' pipeline == `osctl sample`.

The loss test recomputes the first step from its parts with diffusers' modules and plain torch: the VAE's
posterior sample with Wan's latent normalisation, the text states (zeros past the prompt, 512 tokens), the
logit-normal timestep draw mapped through the shifted flow-matching table, the interpolation towards the
noise, the velocity target and the mean squared error. The random streams are the run's documented ones
(``osctl.train.state.TrainState``): the noise generator seeded ``seed * 1000`` (posterior sample, then
noise) and the timestep ``random.Random`` of the same seed.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.train_helpers import SyntheticClips
from tests.wan_helpers import ensure_wan_plugins, subprocess_env, tiny_pipeline, wan_registry

REPO = Path(__file__).resolve().parents[2]
SEED = 7
SHIFT = 3.0
RECIPE = """
pipeline_path: {pipe}
model: {{name: wan{model}}}
autoencoder: {{name: wan_vae}}
text_encoder: {{name: t5, max_length: 32, prompt_clean: wan}}
data: {{num_frames: 9, hw_stride: 16, max_height: 32, max_width: 32}}
diffusion: {{objective: flow_matching, flow_shift: {shift}, weighting_scheme: logit_normal}}
train: {{output_dir: {out}, max_steps: 1, train_batch_size: 2, learning_rate: 1.0e-3, mixed_precision: fp32,
        checkpointing_steps: 100, log_interval: 1, seed: {seed}}}
parallel: {{strategy: single}}
sample: {{num_frames: 9, height: 32, width: 32, num_sampling_steps: 4, sample_method: UniPCMultistep,
         sampler_options: {{flow_shift: 3.0}}, dtype: fp32}}
"""


def _one_step_loss(tmp_path: Path, preset: str, model_options: str) -> tuple[float, Path, dict]:
    from osctl.recipe.load import load_recipe
    from osctl.recipe.validate import check_recipe
    from osctl.train.run import TrainOptions, run_training

    pipe = tiny_pipeline(tmp_path / "pipe", preset=preset)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE.format(pipe=pipe, model=model_options, out=tmp_path / "out", shift=SHIFT, seed=SEED))
    registry = wan_registry()
    checked = check_recipe(load_recipe(recipe), registry)
    text = registry.build("text_encoder", "t5", checked.components["text_encoder"])
    clips = SyntheticClips(text.tokenize, frames=9, size=32)
    result = run_training(checked, registry, TrainOptions(data_source=clips))
    batch = next(iter(SyntheticClips(text.tokenize, frames=9, size=32)))
    return result.losses[0], pipe, batch


def _shifted_sigmas() -> torch.Tensor:
    """Noise level of timestep index i = 0..999 (ascending): s = (i + 1) / 1000 shifted."""
    s = torch.arange(1, 1001, dtype=torch.float32) / 1000
    return SHIFT * s / (1 + (SHIFT - 1) * s)


def _expected_loss(pipe: Path, batch: dict, *, expert: str = "transformer",
                   window: tuple[float, float] | None = None) -> float:
    from diffusers import AutoencoderKLWan, WanTransformer3DModel
    from transformers import UMT5EncoderModel

    noise_gen = torch.Generator().manual_seed(SEED * 1000)
    timestep_rng = random.Random(SEED * 1000)
    vae = AutoencoderKLWan.from_pretrained(pipe / "vae")
    encoder = UMT5EncoderModel.from_pretrained(pipe / "text_encoder")
    transformer = WanTransformer3DModel.from_pretrained(pipe / expert)
    with torch.no_grad():
        posterior = vae.encode(batch["pixel_values"]).latent_dist
        z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=noise_gen)
        mean = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1, 1)
        std = torch.tensor(vae.config.latents_std).view(1, -1, 1, 1, 1)
        latents = (z - mean) / std
        states = encoder(batch["input_ids"], batch["attention_mask"]).last_hidden_state
        states = states * batch["attention_mask"][..., None]
        text = torch.cat([states, states.new_zeros(2, 512 - states.shape[1], states.shape[2])], dim=1)
    table = _shifted_sigmas()
    generator = torch.Generator().manual_seed(timestep_rng.getrandbits(63))
    if window is None:
        index = (torch.sigmoid(torch.normal(0.0, 1.0, (2,), generator=generator)) * 1000).long().clamp(0, 999)
    else:  # the density truncated to the expert's timesteps: rounds of 256 draws, in order
        kept: list[int] = []
        while len(kept) < 2:
            draws = (torch.sigmoid(torch.normal(0.0, 1.0, (256,), generator=generator)) * 1000).long().clamp(0, 999)
            kept += [int(i) for i in draws if window[0] <= float(table[i] * 1000) < window[1]]
        index = torch.tensor(kept[:2])
    sigma = table[index].view(2, 1, 1, 1, 1)
    noise = torch.randn(latents.shape, generator=noise_gen)
    noisy = (1 - sigma) * latents + sigma * noise
    with torch.no_grad():
        prediction = transformer(hidden_states=noisy, timestep=table[index] * 1000, encoder_hidden_states=text,
                                 return_dict=False)[0]
    return float(((prediction - (noise - latents)) ** 2).mean())


def test_one_step_loss_equals_the_flow_matching_objective(tmp_path):
    loss, pipe, batch = _one_step_loss(tmp_path, "tiny", "")
    expected = _expected_loss(pipe, batch)
    assert loss == pytest.approx(expected, rel=1e-5)


def test_one_expert_trains_on_its_own_timesteps(tmp_path):
    """Wan 2.2: training the low-noise expert draws only timesteps below the boundary and runs transformer_2."""
    loss, pipe, batch = _one_step_loss(tmp_path, "tiny-a14b", ", experts: [low_noise]")
    expected = _expected_loss(pipe, batch, expert="transformer_2", window=(float("-inf"), 875.0))
    assert loss == pytest.approx(expected, rel=1e-5)
    saved = tmp_path / "out" / "checkpoint-1" / "model"
    assert (saved / "transformer" / "config.json").is_file() and (saved / "transformer_2" / "config.json").is_file()
    from safetensors.torch import load_file

    before = load_file(pipe / "transformer" / "diffusion_pytorch_model.safetensors")
    after = load_file(saved / "transformer" / "diffusion_pytorch_model.safetensors")
    assert all(torch.equal(before[k], after[k]) for k in before)  # the frozen expert is saved unchanged
    moved = load_file(saved / "transformer_2" / "diffusion_pytorch_model.safetensors")
    original = load_file(pipe / "transformer_2" / "diffusion_pytorch_model.safetensors")
    assert any(not torch.equal(moved[k], original[k]) for k in moved)


ROUND_TRIP_RECIPE = """
pipeline_path: {pipe}
model: {{name: wan}}
autoencoder: {{name: wan_vae}}
text_encoder: {{name: t5, max_length: 32, prompt_clean: wan}}
data:
  data: {data}
  num_frames: 9
  train_fps: 4
  min_frames: 5
  drop_short_ratio: 0.0
  max_hxw: 1024
  hw_stride: 16
  group_data: true
  min_bucket_batches: 0
  num_workers: 0
  captions: {{cfg: 0.0, clean: false}}
diffusion: {{objective: flow_matching, flow_shift: 3.0}}
train: {{output_dir: {out}, max_steps: 3, train_batch_size: 1, learning_rate: 1.0e-3, mixed_precision: fp32,
        checkpointing_steps: 100, log_interval: 1, ema_decay: 0.5, seed: 3}}
parallel: {{strategy: single}}
sample:
  num_frames: 9
  height: 32
  width: 48
  num_sampling_steps: 6
  sample_method: UniPCMultistep
  sampler_options: {{flow_shift: 3.0}}
  guidance_scale: 5.0
  guidance_scale_2: 3.0
  negative_prompt: "blurry, static"
  save_latents: true
  dtype: fp32
"""


@pytest.mark.slow
def test_train_convert_load_in_diffusers_and_sample_like_osctl(tmp_path, monkeypatch):
    """Wan 2.2 with two experts: `osctl train` -> `ckpt convert --to diffusers-pipeline` -> DiffusionPipeline ==
    `osctl sample --checkpoint` (same seed, latents <= 1e-4)."""
    from diffusers import DiffusionPipeline
    from safetensors.torch import load_file

    site = ensure_wan_plugins(monkeypatch, tmp_path / "site")
    env = subprocess_env(site)

    def osctl(*args: str) -> subprocess.CompletedProcess:
        proc = subprocess.run([sys.executable, "-m", "osctl", *args], cwd=REPO, env=env, capture_output=True,
                              text=True, timeout=600)
        assert proc.returncode == 0, f"osctl {' '.join(args)}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
        return proc

    pipe = tiny_pipeline(tmp_path / "pipe", preset="tiny-a14b")
    data, out = tmp_path / "data", tmp_path / "out"
    osctl("data", "synth", "shapes", str(data), "--videos", "4", "--images", "0", "--seed", "1")
    recipe = tmp_path / "wan.yaml"
    recipe.write_text(ROUND_TRIP_RECIPE.format(pipe=pipe, data=data / "data.txt", out=out))
    osctl("train", "--recipe", str(recipe))
    checkpoint = out / "checkpoint-3"
    assert (checkpoint / "model_ema" / "transformer_2" / "config.json").is_file()

    exported = tmp_path / "exported"
    report = json.loads(osctl("ckpt", "convert", str(checkpoint), "--to", "diffusers-pipeline", "--ema",
                              "-o", str(exported), "--json").stdout)
    assert report["verified"]["tensors"] == report["tensors"] > 0
    index = json.loads((exported / "model_index.json").read_text())
    assert index["_class_name"] == "WanPipeline" and index["boundary_ratio"] == 0.875
    assert index["transformer_2"] == ["diffusers", "WanTransformer3DModel"]

    samples = tmp_path / "samples"
    osctl("sample", "--checkpoint", str(checkpoint), "-p", "a red circle moves to the right", "-o", str(samples),
          "--seed", "11")
    sidecar = json.loads(next(samples.glob("0000-00-*.json")).read_text())
    ours = load_file(samples / sidecar["latents_file"])["latents"]

    pipeline = DiffusionPipeline.from_pretrained(exported)
    assert type(pipeline).__name__ == "WanPipeline"
    theirs = pipeline(sidecar["prompt"], sidecar["negative_prompt"], num_frames=9, height=32, width=48,
                      num_inference_steps=6, guidance_scale=5.0, guidance_scale_2=3.0, output_type="latent",
                      generator=torch.Generator().manual_seed(sidecar["seed"])).frames[0]
    assert ours.shape == theirs.shape == (16, 3, 4, 6)
    assert (ours - theirs).abs().max() <= 1e-4
