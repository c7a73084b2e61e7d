"""Training the LTX-Video family: the loss of a step against LTX-Video's objective written out here.

The test recomputes the first step as Lightricks' LTX-Video-Trainer writes it, with diffusers' modules and plain
torch: the VAE's posterior sample normalised with the VAE's per-channel statistics, T5 states computed without a
mask (the mask goes to the transformer), the "shifted logit-normal" noise level ``sigmoid(N(mu, 1))`` whose mean
``mu`` is the line through (1024 tokens, 0.95) and (4096 tokens, 2.05) at the clip's token count, the
interpolation towards the noise, the velocity target and the mean squared error. osctl maps each drawn level to
its training noise level (index ``floor(1000 u)``, level ``(index + 1) / 1000``), as every osctl flow objective
does; the test does the same. The random streams are the run's documented ones (``osctl.train.state.TrainState``):
the noise generator seeded ``seed * 1000`` (posterior sample, then noise) and the timestep ``random.Random`` of the
same seed.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from tests.family_helpers import family_registry, tiny_ltx_pipeline
from tests.train_helpers import SyntheticClips

REPO = Path(__file__).resolve().parents[2]
SEED = 7
RECIPE = """
extends: {base}
pipeline_path: {pipe}
model: {{gradient_checkpointing: false, frame_rate: 24}}
text_encoder: {{max_length: 32}}
data: {{num_frames: 9, hw_stride: 32, max_height: 64, max_width: 64, force_resolution: true, min_frames: 9}}
train: {{output_dir: {out}, max_steps: 1, train_batch_size: 2, learning_rate: 1.0e-3, mixed_precision: fp32,
        checkpointing_steps: 100, log_interval: 1, seed: {seed}}}
parallel: {{strategy: single}}
sample: {{num_frames: 9, height: 64, width: 64, num_sampling_steps: 4, dtype: fp32}}
"""


def _expected_loss(pipe: Path, batch: dict) -> float:
    from diffusers import AutoencoderKLLTXVideo, LTXPipeline, LTXVideoTransformer3DModel
    from transformers import T5EncoderModel

    noise_gen = torch.Generator().manual_seed(SEED * 1000)
    timestep_rng = random.Random(SEED * 1000)
    vae = AutoencoderKLLTXVideo.from_pretrained(pipe / "vae")
    encoder = T5EncoderModel.from_pretrained(pipe / "text_encoder")
    transformer = LTXVideoTransformer3DModel.from_pretrained(pipe / "transformer")
    with torch.no_grad():
        posterior = vae.encode(batch["pixel_values"]).latent_dist
        z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=noise_gen)
        latents = LTXPipeline._normalize_latents(z, vae.latents_mean, vae.latents_std, vae.config.scaling_factor)
        text = encoder(batch["input_ids"]).last_hidden_state
    tokens = 2 * 2 * 2  # 9 frames of 64 x 64 -> 2 x 2 x 2 latent positions, patch 1 x 1 x 1
    mu = 0.95 + (2.05 - 0.95) / (4096 - 1024) * (tokens - 1024)
    generator = torch.Generator().manual_seed(timestep_rng.getrandbits(63))
    u = torch.sigmoid(torch.normal(mu, 1.0, (2,), generator=generator))
    sigma = ((u * 1000).long().clamp(0, 999) + 1).float() / 1000
    noise = torch.randn(latents.shape, generator=noise_gen)
    s = sigma.view(2, 1, 1, 1, 1)
    noisy = (1 - s) * latents + s * noise
    with torch.no_grad():
        out = transformer(hidden_states=LTXPipeline._pack_latents(noisy), encoder_hidden_states=text,
                          timestep=sigma * 1000, encoder_attention_mask=batch["attention_mask"], num_frames=2,
                          height=2, width=2, rope_interpolation_scale=(8 / 24, 32, 32), return_dict=False)[0]
    prediction = LTXPipeline._unpack_latents(out, 2, 2, 2)
    return float(((prediction - (noise - latents)) ** 2).mean())


def test_one_step_loss_equals_ltx_video_objective(tmp_path):
    from osctl.recipe.load import load_recipe
    from osctl.recipe.validate import check_recipe
    from osctl.train.run import TrainOptions, run_training

    pipe = tiny_ltx_pipeline(tmp_path / "pipe")
    recipe = tmp_path / "ltx.yaml"
    recipe.write_text(RECIPE.format(base=REPO / "recipes" / "base" / "ltx-video.yaml", pipe=pipe, out=tmp_path / "out",
                                    seed=SEED))
    registry = family_registry()
    checked = check_recipe(load_recipe(recipe), registry)
    text = registry.build("text_encoder", "t5", checked.components["text_encoder"])
    result = run_training(checked, registry, TrainOptions(data_source=SyntheticClips(text.tokenize, frames=9, size=64)))
    batch = next(iter(SyntheticClips(text.tokenize, frames=9, size=64)))
    assert result.losses[0] == pytest.approx(_expected_loss(pipe, batch), rel=1e-5)


def test_the_timestep_mean_follows_the_token_count():
    """LTX-Video-Trainer's shift: 0.95 at 1024 tokens, 2.05 at 4096, on the line between (and beyond)."""
    from osctl.geometry import LatentGeometry
    from osctl.recipe.schema import DiffusionSection
    from osctl.train.objective import build_objective

    geometry = LatentGeometry(stride_t=8, stride_hw=32, latent_channels=128, patch_t=1, patch_hw=1)
    objective = build_objective(DiffusionSection(objective="flow_matching", token_shift=(1024, 4096, 0.95, 2.05)),
                                geometry)
    assert objective.logit_mean_for((4, 16, 16)) == pytest.approx(0.95)    # 1024 tokens
    assert objective.logit_mean_for((16, 16, 16)) == pytest.approx(2.05)   # 4096 tokens
    assert objective.logit_mean_for((15, 16, 24)) == pytest.approx(0.95 + 1.1 * (5760 - 1024) / 3072)  # 121x512x768
    patched = build_objective(DiffusionSection(objective="flow_matching", token_shift=(1024, 4096, 0.95, 2.05)),
                              LatentGeometry(stride_t=4, stride_hw=8, latent_channels=16, patch_t=1, patch_hw=2))
    assert patched.logit_mean_for((4, 32, 32)) == pytest.approx(0.95)      # 4 x 16 x 16 tokens after a 2x2 patch
    plain = build_objective(DiffusionSection(objective="flow_matching", logit_mean=0.3), geometry)
    assert plain.logit_mean_for((15, 16, 24)) == 0.3
    high = objective.sample_timesteps(4000, random.Random(0), latent_shape=(16, 16, 16)).float().mean()
    low = objective.sample_timesteps(4000, random.Random(0), latent_shape=(4, 16, 16)).float().mean()
    assert high > low + 50  # longer clips train at more noise
