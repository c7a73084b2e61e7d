"""The CogVideoX family: plugins, presets, released layouts, and sampling equal to diffusers' own ``CogVideoXPipeline``.

Parity: a tiny random ``CogVideoXPipeline`` is saved in the released layout; osctl builds its components from that
folder through the plugins (``cogvideox``, ``cogvideox_vae``, ``t5`` with the pipeline's subfolders) and samples
with :class:`osctl.sample.pipeline.VideoPipeline`; diffusers' pipeline loaded from the same folder samples the same
prompts from the same initial latents and the same seeded step noise. T5 without a mask (226 tokens), the rotary
tables (1.0's crop, 1.5's slice), the sampler (DDIM for the 2B layout, the stochastic DPM-Solver for 5B and 1.5)
and classifier-free guidance must all agree for the latents to match (fp32, max difference <= 1e-4).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.family_helpers import family_registry, tiny_cogvideox_pipeline

PROMPT = "a red ball rolls over a blue floor"
NEGATIVE = "blurry, static"
SAMPLER_OPTIONS = {"prediction_type": "v_prediction", "rescale_betas_zero_snr": True, "beta_schedule": "scaled_linear",
                   "beta_start": 0.00085, "beta_end": 0.012}


@pytest.fixture(scope="module")
def registry():
    return family_registry()


@pytest.fixture(scope="module")
def pipelines(tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("cogvideox")
    return {name: tiny_cogvideox_pipeline(tmp / name, preset=name) for name in ("tiny", "tiny-rope", "tiny-1.5")}


def _components(registry, folder: Path):
    model = registry.build("model", "cogvideox", {"path": str(folder)}, dtype=torch.float32).eval()
    ae = registry.build("autoencoder", "cogvideox_vae", {"path": str(folder)}, dtype=torch.float32)
    text = registry.build("text_encoder", "t5", {**_text_options(folder), "max_length": 226}, dtype=torch.float32)
    return model, ae, text


def _text_options(folder: Path) -> dict:
    return {"name_or_path": str(folder), "subfolder": "text_encoder", "tokenizer_subfolder": "tokenizer",
            "attend_padding": True}


def _geometry(registry, folder: Path):
    from osctl.geometry import latent_geometry

    ae = registry.make_config("autoencoder", "cogvideox_vae", {"path": str(folder)}, "autoencoder")
    model = registry.make_config("model", "cogvideox", {"path": str(folder)}, "model")
    return latent_geometry(ae.autoencoder_geometry(), model.model_geometry())


# -- sampling parity ------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("preset", "sampler", "frames"), [
    ("tiny", "CogVideoX", 9),           # CogVideoX-2b: sine-cosine positions, DDIM
    ("tiny-rope", "CogVideoXDPM", 9),   # CogVideoX-5b: rotary positions (a crop of the base grid), DPM-Solver
    ("tiny-1.5", "CogVideoXDPM", 13),   # CogVideoX1.5-5B: 2x2x2 patch, rotary slice, SNR shift 1.0
])
def test_sampling_equals_cogvideox_pipeline(registry, pipelines, preset, sampler, frames):
    from diffusers import CogVideoXPipeline

    from osctl.sample.pipeline import VideoPipeline

    folder = pipelines[preset]
    model, ae, text = _components(registry, folder)
    pipe = CogVideoXPipeline.from_pretrained(folder)
    shift = pipe.scheduler.config.snr_shift_scale
    scheduler = registry.build("sampler", sampler, {**SAMPLER_OPTIONS, "snr_shift_scale": shift})
    assert type(getattr(scheduler, "scheduler", scheduler)).__name__ == type(pipe.scheduler).__name__
    size = dict(num_frames=frames, height=32, width=48, num_inference_steps=5)
    latents = torch.randn((1, 16, (frames - 1) // 4 + 1, 4, 6), generator=torch.Generator().manual_seed(3))
    ours = VideoPipeline(model, ae, text, scheduler, geometry=_geometry(registry, folder))(
        PROMPT, NEGATIVE, guidance_scale=6.0, latents=latents.clone(), max_sequence_length=226, output_type="float",
        generator=torch.Generator().manual_seed(5), **size)
    theirs = pipe(PROMPT, NEGATIVE, guidance_scale=6.0, latents=latents.transpose(1, 2).clone(), output_type="latent",
                  generator=torch.Generator().manual_seed(5), **size).frames  # B x T x C x H x W
    assert (ours.latents - theirs.transpose(1, 2)).abs().max() <= 1e-4
    video = pipe.decode_latents(theirs)  # B x C x T x H x W
    assert (ours.videos - video).abs().max() <= 1e-4


def test_text_states_are_cogvideox_pipeline_prompt_embeddings(registry, pipelines):
    """226 tokens, the padding encoded without a mask (its states are part of the condition)."""
    from diffusers import CogVideoXPipeline

    model, _, text = _components(registry, pipelines["tiny"])
    pipe = CogVideoXPipeline.from_pretrained(pipelines["tiny"])
    with torch.no_grad():
        expected, _ = pipe.encode_prompt(PROMPT, do_classifier_free_guidance=False)
    tokens = text.tokenize([PROMPT])
    states = model.prepare_text(text.encode(tokens["input_ids"], tokens["attention_mask"]), tokens["attention_mask"])
    assert states.shape == expected.shape == (1, 226, 32)
    assert (states - expected).abs().max() <= 1e-4
    masked = registry.build("text_encoder", "t5", {**_text_options(pipelines["tiny"]), "attend_padding": False,
                                                   "max_length": 226})
    assert (masked.encode(tokens["input_ids"], tokens["attention_mask"]) - expected).abs().max() > 1e-3
    with pytest.raises(ValueError, match=r"set text_encoder\.max_length: 226"):
        model.prepare_text(states[:, :40], None)


def test_an_odd_number_of_latent_frames_repeats_the_first_for_the_15_patch(registry, pipelines):
    """CogVideoX 1.5 patches two latent frames per token: 3 latent frames run as [f0, f0, f1, f2] and the output
    of the padding frame is dropped (CogVideo's fine-tuning pads so)."""
    from osctl_builtin.models.cogvideox.model import rotary_embedding

    model = registry.build("model", "cogvideox", {"path": str(pipelines["tiny-1.5"])}).eval()
    x = torch.randn(1, 16, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    text = torch.randn(1, 1, 7, 32, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([400])
    with torch.no_grad():
        out = model(x, t, text)[0]
        padded = torch.cat([x[:, :, :1], x], dim=2).transpose(1, 2)
        rope = rotary_embedding(model.transformer.config, 4, 4, 4, torch.device("cpu"))
        full = model.transformer(hidden_states=padded, encoder_hidden_states=text[:, 0], timestep=t,
                                 image_rotary_emb=rope, return_dict=False)[0]
    assert out.shape == x.shape
    assert torch.allclose(out, full[:, 1:].transpose(1, 2), atol=1e-6)


# -- presets, geometry, samplers ------------------------------------------------------------------------------

@pytest.mark.parametrize(("preset", "billions", "patch_t"), [
    ("cogvideox-2b", 1.694, 1), ("cogvideox-5b", 5.570, 1), ("cogvideox1.5-5b", 5.571, 2)])
def test_released_presets_build_on_meta(registry, preset, billions, patch_t):
    from osctl_builtin.models.cogvideox.register import CogVideoXConfig

    model = registry.build("model", "cogvideox", {"preset": preset}, meta=True)
    count = sum(p.numel() for p in model.parameters())
    assert abs(count / 1e9 - billions) < 0.001, count
    assert all(p.device.type == "meta" for p in model.parameters())
    geometry = CogVideoXConfig(preset=preset).model_geometry()
    assert (geometry.patch_t, geometry.patch_hw, geometry.in_channels) == (patch_t, 2, 16)


def test_vae_geometry_and_scaling(registry):
    from osctl_builtin.autoencoders.cogvideox_vae.register import CogVideoXVAEConfig

    geometry = CogVideoXVAEConfig().autoencoder_geometry()
    assert (geometry.stride_t, geometry.stride_hw, geometry.latent_channels) == (4, 8, 16)
    vae = registry.build("autoencoder", "cogvideox_vae", {"preset": "cogvideox"}, meta=True)
    assert abs(sum(p.numel() for p in vae.parameters()) / 1e6 - 215.6) < 0.1
    ae = registry.build("autoencoder", "cogvideox_vae", {"preset": "tiny"})
    video = torch.rand(1, 3, 9, 32, 32) * 2 - 1
    with torch.no_grad():
        z = ae.encode(video, sample=False)
        raw = ae.vae.encode(video).latent_dist.mode()
        assert z.shape == (1, 16, 3, 4, 4) and torch.allclose(z, raw * 1.15258426, atol=1e-6)
        assert ae.decode(z).shape == (1, 3, 9, 32, 32)


def test_cogvideox_samplers_are_the_released_schedulers(registry):
    """``CogVideoX`` is the 2B's CogVideoXDDIMScheduler and ``CogVideoXDPM`` the 5B's, with the released table:
    no clipping of the predicted sample (diffusers' CogVideoX default clips to [-1, 1])."""
    ddim = registry.build("sampler", "CogVideoX", {**SAMPLER_OPTIONS, "snr_shift_scale": 3.0})
    dpm = registry.build("sampler", "CogVideoXDPM", {**SAMPLER_OPTIONS, "snr_shift_scale": 1.0})
    assert type(ddim).__name__ == "CogVideoXDDIMScheduler" and type(dpm.scheduler).__name__ == "CogVideoXDPMScheduler"
    for scheduler, shift in ((ddim, 3.0), (dpm, 1.0)):
        config = scheduler.config
        assert (config.clip_sample, config.timestep_spacing, config.snr_shift_scale) == (False, "trailing", shift)
        assert (config.prediction_type, config.rescale_betas_zero_snr, config.beta_schedule) == (
            "v_prediction", True, "scaled_linear")
    assert dpm.init_noise_sigma == 1.0 and callable(dpm.save_pretrained)


# -- released layouts -------------------------------------------------------------------------------------------

def test_pipeline_path_fills_every_component(registry, pipelines, tmp_path):
    from osctl.recipe.load import load_recipe
    from osctl.recipe.validate import check_recipe

    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"extends: {Path(__file__).parents[2] / 'recipes' / 'base' / 'cogvideox.yaml'}\n"
                      f"pipeline_path: {pipelines['tiny-1.5']}\ndata: {{num_frames: 13, hw_stride: 16}}\n"
                      "diffusion: {snr_shift_scale: 1.0}\n")
    checked = check_recipe(load_recipe(recipe), registry)
    model, ae, text = (checked.components[k] for k in ("model", "autoencoder", "text_encoder"))
    assert model.path == str(pipelines["tiny-1.5"]) and model.transformer_names() == ("transformer",)
    assert ae.folder() == pipelines["tiny-1.5"] / "vae" and text.attend_padding and text.max_length == 226
    assert text.encoder_source() == str(pipelines["tiny-1.5"] / "text_encoder")
    assert model.missing_weights() == [] and ae.missing_weights() == [] and text.missing_weights() == []
    assert model.diffusers_pipeline() == {"_class_name": "CogVideoXPipeline"}
    assert checked.geometry.describe() == ("autoencoder 4x8x8 (16 latent channels), patch 2x2x2: 4k+1 frames, sizes "
                                           "in multiples of 16")


def test_a_folder_of_another_family_names_the_class_it_holds(pipelines, tmp_path):
    from osctl_builtin.autoencoders.cogvideox_vae.register import CogVideoXVAEConfig
    from osctl_builtin.models.cogvideox.register import CogVideoXConfig

    other = tmp_path / "wan"
    (other / "transformer").mkdir(parents=True)
    (other / "model_index.json").write_text(json.dumps({"_class_name": "WanPipeline",
                                                        "transformer": ["diffusers", "WanTransformer3DModel"]}))
    with pytest.raises(Exception, match="WanPipeline \\(transformer WanTransformer3DModel\\), not a CogVideoX"):
        CogVideoXConfig(path=str(other))
    with pytest.raises(Exception, match="WanPipeline"):
        CogVideoXVAEConfig(path=str(other))
    with pytest.raises(Exception, match="describes a AutoencoderKLCogVideoX, not a CogVideoX CogVideoXTransformer3DModel"):
        CogVideoXConfig(path=str(pipelines["tiny"] / "vae"))


def test_missing_pipelines_are_reported_not_downloaded(registry, monkeypatch, tmp_path):
    from osctl.errors import ConfigError
    from osctl_builtin.models.cogvideox.register import CogVideoXConfig
    from osctl_builtin.text_encoders.t5 import T5Config

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    config = CogVideoXConfig(path="THUDM/CogVideoX1.5-5B", preset="cogvideox1.5-5b")
    (missing,) = config.missing_weights()
    assert "not available offline" in missing.detail and "hf download THUDM/CogVideoX1.5-5B" in missing.fetch
    assert config.model_geometry().patch_t == 2  # a plan uses the preset
    with pytest.raises(ConfigError, match="not available offline"):
        registry.build("model", "cogvideox", config)
    text = T5Config(**T5Config.pipeline_options("THUDM/CogVideoX-5b"))
    assert text.hidden_size() == 4096
    planned = registry.build("text_encoder", "t5", text, meta=True)
    assert type(planned.model).__name__ == "T5EncoderModel"
    assert abs(sum(p.numel() for p in planned.parameters()) / 1e9 - 4.762) < 0.001
