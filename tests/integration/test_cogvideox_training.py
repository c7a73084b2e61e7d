"""Training the CogVideoX family: the loss of a step against CogVideoX's own objective written out here, and the
round trip `osctl train` -> `osctl ckpt convert --to diffusers-pipeline` -> diffusers' pipeline == `osctl sample`.

The loss test recomputes the first step as CogVideoX's fine-tuning scripts (diffusers' ``train_cogvideox_*``,
THUDM CogVideo ``finetune/``) write it, with diffusers' modules and plain torch: the VAE's posterior sample
times ``scaling_factor``, T5 states computed without a mask, a uniform timestep, the noise table of the
pipeline's own ``CogVideoXDPMScheduler`` (SNR shifted, zero terminal SNR), the transformer's v prediction turned
into a clean-sample prediction (``sqrt(a) x_t - sqrt(1 - a) v``) and the ``1 / (1 - a)``-weighted MSE against
the clean latents. osctl trains the plain v MSE, which is that loss exactly (``x0_pred - x0 = -sqrt(1 - a)
(v_pred - v)``). The random streams are the run's documented ones (``osctl.train.state.TrainState``): the noise
generator seeded ``seed * 1000`` (posterior sample, then noise) and the timestep ``random.Random`` of the same seed.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from tests.family_helpers import ensure_family_plugins, family_registry, tiny_cogvideox_pipeline
from tests.train_helpers import SyntheticClips

REPO = Path(__file__).resolve().parents[2]
SEED = 7
RECIPE = """
extends: {base}
pipeline_path: {pipe}
model: {{gradient_checkpointing: false}}
text_encoder: {{max_length: 32}}
data: {{num_frames: 9, hw_stride: 16, max_height: 32, max_width: 32, force_resolution: true, min_frames: 9}}
train: {{output_dir: {out}, max_steps: 1, train_batch_size: 2, learning_rate: 1.0e-3, mixed_precision: fp32,
        checkpointing_steps: 100, log_interval: 1, seed: {seed}}}
parallel: {{strategy: single}}
sample: {{num_frames: 9, height: 32, width: 32, num_sampling_steps: 4, dtype: fp32}}
"""


def _recipe(tmp_path: Path, pipe: Path, body: str = RECIPE, **extra: str) -> Path:
    recipe = tmp_path / "cogvideox.yaml"
    recipe.write_text(body.format(base=REPO / "recipes" / "base" / "cogvideox.yaml", pipe=pipe, out=tmp_path / "out",
                                  seed=SEED, **extra))
    return recipe


def _expected_loss(pipe: Path, batch: dict) -> float:
    from diffusers import AutoencoderKLCogVideoX, CogVideoXDPMScheduler, CogVideoXTransformer3DModel
    from diffusers.models.embeddings import get_3d_rotary_pos_embed
    from diffusers.pipelines.cogvideo.pipeline_cogvideox import get_resize_crop_region_for_grid
    from transformers import T5EncoderModel

    noise_gen = torch.Generator().manual_seed(SEED * 1000)
    timestep_rng = random.Random(SEED * 1000)
    vae = AutoencoderKLCogVideoX.from_pretrained(pipe / "vae")
    encoder = T5EncoderModel.from_pretrained(pipe / "text_encoder")
    transformer = CogVideoXTransformer3DModel.from_pretrained(pipe / "transformer")
    scheduler = CogVideoXDPMScheduler.from_pretrained(pipe / "scheduler")
    with torch.no_grad():
        posterior = vae.encode(batch["pixel_values"]).latent_dist
        z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=noise_gen)
        latents = (z * vae.config.scaling_factor).transpose(1, 2)  # B x T x C x H x W, CogVideoX's layout
        text = encoder(batch["input_ids"]).last_hidden_state  # no mask
    timesteps = torch.tensor([timestep_rng.randrange(1000) for _ in range(2)])
    noise = torch.randn(z.shape, generator=noise_gen).transpose(1, 2)
    alphas = scheduler.alphas_cumprod[timesteps].float().view(2, 1, 1, 1, 1)
    noisy = alphas.sqrt() * latents + (1 - alphas).sqrt() * noise
    config = transformer.config
    grid = (4 // config.patch_size, 4 // config.patch_size)
    crops = get_resize_crop_region_for_grid(grid, config.sample_width // 2, config.sample_height // 2)
    rope = get_3d_rotary_pos_embed(config.attention_head_dim, crops, grid, temporal_size=3)
    with torch.no_grad():
        v = transformer(hidden_states=noisy, encoder_hidden_states=text, timestep=timesteps, image_rotary_emb=rope,
                        return_dict=False)[0]
    clean = alphas.sqrt() * noisy - (1 - alphas).sqrt() * v
    weights = 1 / (1 - alphas)
    return float((weights * (clean - latents) ** 2).reshape(2, -1).mean(dim=1).mean())


def test_one_step_loss_equals_cogvideox_objective(tmp_path):
    from osctl.recipe.load import load_recipe
    from osctl.recipe.validate import check_recipe
    from osctl.train.run import TrainOptions, run_training

    pipe = tiny_cogvideox_pipeline(tmp_path / "pipe", preset="tiny-rope")
    registry = family_registry()
    checked = check_recipe(load_recipe(_recipe(tmp_path, pipe)), registry)
    text = registry.build("text_encoder", "t5", checked.components["text_encoder"])
    result = run_training(checked, registry, TrainOptions(data_source=SyntheticClips(text.tokenize, frames=9, size=32)))
    batch = next(iter(SyntheticClips(text.tokenize, frames=9, size=32)))
    assert result.losses[0] == pytest.approx(_expected_loss(pipe, batch), rel=1e-5)


def test_train_convert_load_in_diffusers_and_sample_like_osctl(tmp_path, monkeypatch):
    """CogVideoX 1.5 (2x2x2 patch): `osctl train` -> `ckpt convert --to diffusers-pipeline` -> DiffusionPipeline ==
    `osctl sample --checkpoint` (same seed, the stochastic DPM sampler included; latents <= 1e-4)."""
    from diffusers import DiffusionPipeline
    from safetensors.torch import load_file

    from osctl.cli import app
    from osctl.recipe.load import load_recipe
    from osctl.recipe.validate import check_recipe
    from osctl.train.run import TrainOptions, run_training

    ensure_family_plugins(monkeypatch, tmp_path / "site")
    pipe = tiny_cogvideox_pipeline(tmp_path / "pipe", preset="tiny-1.5")
    recipe = _recipe(tmp_path, pipe, RECIPE.replace("max_steps: 1", "max_steps: 2").replace(
        "data: {{", "diffusion: {{snr_shift_scale: 1.0}}\ndata: {{"))
    registry = family_registry()
    checked = check_recipe(load_recipe(recipe, ["sample.save_latents=true", "sample.num_frames=13",
                                                "sample.width=48", "text_encoder.max_length=226"]), registry)
    text = registry.build("text_encoder", "t5", checked.components["text_encoder"])
    run_training(checked, registry, TrainOptions(data_source=SyntheticClips(text.tokenize, frames=9, size=32)))
    checkpoint = tmp_path / "out" / "checkpoint-2"
    runner = CliRunner()
    exported = tmp_path / "exported"
    converted = runner.invoke(app, ["ckpt", "convert", str(checkpoint), "--to", "diffusers-pipeline", "-o",
                                    str(exported), "--json"])
    assert converted.exit_code == 0, converted.output
    report = json.loads(converted.stdout)
    assert report["verified"]["tensors"] == report["tensors"] > 0
    index = json.loads((exported / "model_index.json").read_text())
    assert index["_class_name"] == "CogVideoXPipeline" and index["scheduler"] == ["diffusers", "CogVideoXDPMScheduler"]
    assert "transformer_2" not in index  # Wan's second-expert slot is not CogVideoX's

    samples = tmp_path / "samples"
    sampled = runner.invoke(app, ["sample", "--checkpoint", str(checkpoint), "-p", "a red circle moves", "-o",
                                  str(samples), "--seed", "11"])
    assert sampled.exit_code == 0, sampled.output
    sidecar = json.loads(next(samples.glob("0000-00-*.json")).read_text())
    ours = load_file(samples / sidecar["latents_file"])["latents"]
    pipeline = DiffusionPipeline.from_pretrained(exported)
    assert type(pipeline).__name__ == "CogVideoXPipeline"
    theirs = pipeline(sidecar["prompt"], sidecar["negative_prompt"], num_frames=13, height=32, width=48,
                      num_inference_steps=4, guidance_scale=6.0, output_type="latent",
                      generator=torch.Generator().manual_seed(sidecar["seed"])).frames[0]
    assert ours.shape == theirs.transpose(0, 1).shape == (16, 4, 4, 6)
    assert (ours - theirs.transpose(0, 1)).abs().max() <= 1e-4
