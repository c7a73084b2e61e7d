"""Training the HunyuanVideo family: the loss of a step against its flow-matching objective written out here, and
`ckpt convert --to diffusers-pipeline` of the trained model with both text encoders.

The loss test recomputes the first step with diffusers' modules and ``HunyuanVideoPipeline.encode_prompt`` (the
template, Llama's third-last states of all 256 prompt tokens, CLIP's pooled vector): the VAE's posterior sample
times ``scaling_factor``, the logit-normal draw mapped through the flow table shifted by 7.0 (musubi-tuner's
``--timestep_sampling shift --discrete_flow_shift 7.0``), the interpolation towards the noise, the embedded
guidance at 1.0 as the trainers train, the velocity target and the mean squared error. The random streams are
the run's documented ones (``osctl.train.state.TrainState``).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from tests.family_helpers import (
    ensure_family_plugins,
    family_registry,
    hunyuan_crop_start,
    tiny_hunyuan_pipeline,
)
from tests.train_helpers import SyntheticClips

SEED = 7
SHIFT = 7.0
RECIPE = """
pipeline_path: {pipe}
model: {{name: hunyuan_video}}
autoencoder: {{name: hunyuan_vae}}
text_encoder: {{name: hunyuan_text, crop_start: {crop}}}
data: {{num_frames: 9, hw_stride: 16, max_height: 32, max_width: 32}}
diffusion: {{objective: flow_matching, flow_shift: {shift}, weighting_scheme: logit_normal}}
train: {{output_dir: {out}, max_steps: 1, train_batch_size: 2, learning_rate: 1.0e-3, mixed_precision: fp32,
        checkpointing_steps: 100, log_interval: 1, seed: {seed}, use_ema: false}}
parallel: {{strategy: single}}
sample: {{num_frames: 9, height: 32, width: 32, num_sampling_steps: 4, sample_method: FlowMatchEulerDiscrete,
         sampler_options: {{flow_shift: 7.0}}, guidance_scale: 1.0, max_sequence_length: 256, dtype: fp32}}
"""


def _expected_loss(pipe: Path, batch: dict, captions: list[str], crop: int) -> float:
    from diffusers import HunyuanVideoPipeline

    from osctl_builtin.text_encoders.hunyuan import TEMPLATE

    noise_gen = torch.Generator().manual_seed(SEED * 1000)
    timestep_rng = random.Random(SEED * 1000)
    pipeline = HunyuanVideoPipeline.from_pretrained(pipe)
    with torch.no_grad():
        posterior = pipeline.vae.encode(batch["pixel_values"]).latent_dist
        z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=noise_gen)
        latents = z * pipeline.vae.config.scaling_factor
        states, pooled, mask = pipeline.encode_prompt(captions, prompt_template={"template": TEMPLATE,
                                                                                 "crop_start": crop})
    s = torch.arange(1, 1001, dtype=torch.float32) / 1000
    table = SHIFT * s / (1 + (SHIFT - 1) * s)
    generator = torch.Generator().manual_seed(timestep_rng.getrandbits(63))
    index = (torch.sigmoid(torch.normal(0.0, 1.0, (2,), generator=generator)) * 1000).long().clamp(0, 999)
    sigma = table[index].view(2, 1, 1, 1, 1)
    noise = torch.randn(latents.shape, generator=noise_gen)
    noisy = (1 - sigma) * latents + sigma * noise
    with torch.no_grad():
        prediction = pipeline.transformer(hidden_states=noisy, timestep=table[index] * 1000,
                                          encoder_hidden_states=states, encoder_attention_mask=mask,
                                          pooled_projections=pooled, guidance=torch.full((2,), 1000.0),
                                          return_dict=False)[0]
    return float(((prediction - (noise - latents)) ** 2).mean())


def test_one_step_loss_equals_the_flow_matching_objective_and_the_pipeline_exports(tmp_path, monkeypatch):
    from diffusers import DiffusionPipeline

    from osctl.cli import app
    from osctl.recipe.load import load_recipe
    from osctl.recipe.validate import check_recipe
    from osctl.train.run import TrainOptions, run_training

    ensure_family_plugins(monkeypatch, tmp_path / "site")
    pipe = tiny_hunyuan_pipeline(tmp_path / "pipe")
    crop = hunyuan_crop_start(pipe)
    recipe = tmp_path / "hunyuan.yaml"
    recipe.write_text(RECIPE.format(pipe=pipe, crop=crop, shift=SHIFT, out=tmp_path / "out", seed=SEED))
    registry = family_registry()
    checked = check_recipe(load_recipe(recipe), registry)
    text = registry.build("text_encoder", "hunyuan_text", checked.components["text_encoder"])
    clips = SyntheticClips(text.tokenize, frames=9, size=32)
    result = run_training(checked, registry, TrainOptions(data_source=clips))
    batch = next(iter(SyntheticClips(text.tokenize, frames=9, size=32)))
    captions = [clips.captions[int(i)] for i in clips._order(0)[:2]]
    assert result.losses[0] == pytest.approx(_expected_loss(pipe, batch, captions, crop), rel=1e-5)

    out = tmp_path / "exported"
    converted = CliRunner().invoke(app, ["ckpt", "convert", str(tmp_path / "out" / "checkpoint-1"), "--to",
                                         "diffusers-pipeline", "-o", str(out), "--json"])
    assert converted.exit_code == 0, converted.output
    files = {f["path"].split("/")[0] for f in json.loads(converted.stdout)["files"]}
    assert {"transformer", "vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "scheduler"} <= files
    index = json.loads((out / "model_index.json").read_text())
    assert index["_class_name"] == "HunyuanVideoPipeline" and index["text_encoder_2"][1] == "CLIPTextModel"
    loaded = DiffusionPipeline.from_pretrained(out)
    assert type(loaded).__name__ == "HunyuanVideoPipeline" and loaded.scheduler.config.shift == 7.0
