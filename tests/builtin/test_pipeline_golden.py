"""The sampling pipeline reproduces the reference's 4-step runs (same latents in -> same video out)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from osctl.plugin_manager import default_registry
from osctl.sample.pipeline import VideoPipeline
from osctl.text import NEGATIVE_PROMPT, POSITIVE_TEMPLATE
from tests.geometry_helpers import V13


@pytest.fixture(scope="module")
def components(golden):
    registry = default_registry()
    model = registry.build("model", "opensora_v1_3", {"path": str(golden / "dit" / "a1_sparse1d_n4" / "model")}).eval()
    vae = registry.build("autoencoder", "wfvae", {"path": str(golden / "vae" / "vae")})
    text_encoder = registry.build("text_encoder", "t5", {"name_or_path": str(golden / "pipeline" / "mt5_tiny"),
                                                         "max_length": 96})
    return registry, model, vae, text_encoder


@pytest.mark.slow
@pytest.mark.parametrize("name", ["EulerDiscrete", "DDIM", "EulerAncestralDiscrete"])
def test_pipeline_matches_reference(golden, components, name):
    registry, model, vae, text_encoder = components
    manifest = json.loads((golden / "pipeline" / "manifest.json").read_text())
    assert POSITIVE_TEMPLATE.format(manifest["prompt"]) == manifest["pipeline_prompt_argument"]
    assert manifest["negative_prompt"] == NEGATIVE_PROMPT
    common = load_file(golden / "pipeline" / "common.safetensors")
    run = load_file(golden / "pipeline" / f"run_{name}.safetensors")
    scheduler = registry.build("sampler", name, {"prediction_type": "v_prediction", "rescale_betas_zero_snr": True})
    pipeline = VideoPipeline(model, vae, text_encoder, scheduler, geometry=V13)
    generator = torch.Generator().manual_seed(42) if name == "EulerAncestralDiscrete" else None
    result = pipeline(manifest["pipeline_prompt_argument"], manifest["negative_prompt"], num_frames=9, height=64,
                      width=64, num_inference_steps=4, guidance_scale=7.5, generator=generator,
                      latents=common["initial_latents"], max_sequence_length=96)
    torch.testing.assert_close(result.latents, run["final_latents"], atol=2e-4, rtol=0)
    expected = run["videos_uint8"]
    assert result.videos.shape == expected.shape
    diff = (result.videos.int() - expected.int()).abs()
    assert diff.max() <= 1
    assert (diff > 0).float().mean() < 0.01
