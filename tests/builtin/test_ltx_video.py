"""The LTX-Video family: plugins, presets, released layouts, and sampling equal to diffusers' own ``LTXPipeline``.

Parity: a tiny random ``LTXPipeline`` (a timestep-conditioned decoder with per-channel latent statistics, as 0.9.1
on) is saved in the released layout; osctl builds its components from that folder through the plugins
(``ltx_video``, ``ltx_vae``, ``t5`` with the pipeline's subfolders) and samples with
:class:`osctl.sample.pipeline.VideoPipeline`; diffusers' pipeline loaded from the same folder samples the same
prompts from the same initial latents. T5 without a mask and the prompt mask in cross-attention, the packing of
latents into tokens, the rotary scale of the frame rate, the token-dependent shift of the flow sampler, guidance
and the latent normalisation must all agree for the latents and the video to match (fp32, <= 1e-4).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.family_helpers import LTX_SCHEDULER, family_registry, tiny_ltx_pipeline

PROMPT = "a red ball rolls over a blue floor"
NEGATIVE = "worst quality, blurry"


@pytest.fixture(scope="module")
def registry():
    return family_registry()


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory) -> Path:
    return tiny_ltx_pipeline(tmp_path_factory.mktemp("ltx") / "pipe")


def _components(registry, folder: Path, frame_rate: float = 25.0, **vae: float):
    model = registry.build("model", "ltx_video", {"path": str(folder), "frame_rate": frame_rate},
                           dtype=torch.float32).eval()
    ae = registry.build("autoencoder", "ltx_vae", {"path": str(folder), **vae}, dtype=torch.float32)
    text = registry.build("text_encoder", "t5", {"name_or_path": str(folder), "subfolder": "text_encoder",
                                                 "tokenizer_subfolder": "tokenizer", "attend_padding": True,
                                                 "max_length": 128}, dtype=torch.float32)
    return model, ae, text


def _geometry(registry, folder: Path):
    from osctl.geometry import latent_geometry

    ae = registry.make_config("autoencoder", "ltx_vae", {"path": str(folder)}, "autoencoder")
    model = registry.make_config("model", "ltx_video", {"path": str(folder)}, "model")
    return latent_geometry(ae.autoencoder_geometry(), model.model_geometry())


@pytest.mark.parametrize(("frame_rate", "decode_timestep"), [(25.0, 0.0), (24.0, 0.05)])
def test_sampling_equals_ltx_pipeline(registry, pipeline, frame_rate, decode_timestep):
    """Latents and video equal LTXPipeline's; at 24 fps the rotary scale differs, and a decode timestep changes the
    decoder (its noise scale is 0 here: the pipeline draws that noise from its own generator)."""
    from diffusers import LTXPipeline

    from osctl.sample.pipeline import VideoPipeline

    model, ae, text = _components(registry, pipeline, frame_rate, decode_timestep=decode_timestep,
                                  decode_noise_scale=0.0)
    scheduler = registry.build("sampler", "FlowMatchEulerDiscrete", {"prediction_type": "flow", "extra": LTX_SCHEDULER})
    pipe = LTXPipeline.from_pretrained(pipeline)
    size = dict(num_frames=9, height=64, width=96, num_inference_steps=5)
    latents = torch.randn((1, 128, 2, 2, 3), generator=torch.Generator().manual_seed(3))
    ours = VideoPipeline(model, ae, text, scheduler, geometry=_geometry(registry, pipeline))(
        PROMPT, NEGATIVE, guidance_scale=3.0, latents=latents.clone(), max_sequence_length=128, output_type="float",
        **size)
    common = dict(guidance_scale=3.0, latents=LTXPipeline._pack_latents(latents.clone()), frame_rate=frame_rate,
                  decode_timestep=decode_timestep, decode_noise_scale=0.0, **size)
    theirs = LTXPipeline._unpack_latents(pipe(PROMPT, NEGATIVE, output_type="latent", **common).frames, 2, 2, 3)
    assert (ours.latents - theirs).abs().max() <= 1e-4
    video = pipe(PROMPT, NEGATIVE, output_type="pt", **common).frames  # B x T x C x H x W in [0, 1]
    assert ((ours.videos.permute(0, 2, 1, 3, 4) / 2 + 0.5).clamp(0, 1) - video).abs().max() <= 1e-4


def test_the_schedule_is_ltx_pipelines(registry, pipeline):
    """sigmas linspace(1, 1/N, N), shifted by mu at the video's token count (16 x 24 x 8 = 3072 tokens here)."""
    import numpy as np
    from diffusers.pipelines.ltx.pipeline_ltx import calculate_shift

    from osctl.sample import scheduling

    model, _, _ = _components(registry, pipeline)
    scheduler = registry.build("sampler", "FlowMatchEulerDiscrete", {"prediction_type": "flow", "extra": LTX_SCHEDULER})
    options = model.sampling_schedule(scheduler, 8, (1, 128, 8, 16, 24))
    assert options["mu"] == pytest.approx(calculate_shift(3072, 1024, 4096, 0.95, 2.05))
    assert np.allclose(options["sigmas"], np.linspace(1.0, 1 / 8, 8))
    scheduling.set_timesteps(scheduler, 8, "cpu", options)
    shifted = np.exp(options["mu"]) / (np.exp(options["mu"]) + (1 / np.linspace(1.0, 1 / 8, 8) - 1))
    assert np.allclose(scheduler.sigmas[:-1].numpy(), shifted, atol=1e-6)


def test_text_keeps_the_prompt_mask_and_the_unmasked_states(registry, pipeline):
    from diffusers import LTXPipeline

    from osctl.families.transformers import TextCondition

    model, _, text = _components(registry, pipeline)
    pipe = LTXPipeline.from_pretrained(pipeline)
    with torch.no_grad():
        expected, mask, _, _ = pipe.encode_prompt(PROMPT, do_classifier_free_guidance=False)
    tokens = text.tokenize([PROMPT])
    condition = model.prepare_text(text.encode(tokens["input_ids"], tokens["attention_mask"]),
                                   tokens["attention_mask"])
    assert isinstance(condition, TextCondition) and condition.states.shape == expected.shape == (1, 128, 32)
    assert (condition.states - expected).abs().max() <= 1e-4
    assert torch.equal(condition.mask.bool(), mask)


def test_released_presets_build_on_meta(registry):
    from osctl_builtin.autoencoders.ltx_vae.register import LTXVAEConfig
    from osctl_builtin.models.ltx_video.register import LTXVideoConfig

    model = registry.build("model", "ltx_video", {"preset": "ltx-video-2b"}, meta=True)
    assert abs(sum(p.numel() for p in model.parameters()) / 1e9 - 1.923) < 0.001
    geometry = LTXVideoConfig().model_geometry()
    assert (geometry.patch_t, geometry.patch_hw, geometry.in_channels) == (1, 1, 128)
    for preset, millions in (("ltx-video-0.9.0", 419.2), ("ltx-video-0.9.1", 935.0), ("ltx-video-0.9.5", 1246.9)):
        vae = registry.build("autoencoder", "ltx_vae", {"preset": preset}, meta=True)
        assert abs(sum(p.numel() for p in vae.parameters()) / 1e6 - millions) < 0.1
        g = LTXVAEConfig(preset=preset).autoencoder_geometry()
        assert (g.stride_t, g.stride_hw, g.latent_channels) == (8, 32, 128)


def test_vae_normalises_with_its_channel_statistics(registry, pipeline):
    from diffusers import LTXPipeline

    ae = registry.build("autoencoder", "ltx_vae", {"path": str(pipeline)})
    video = torch.rand(1, 3, 9, 64, 64) * 2 - 1
    with torch.no_grad():
        raw = ae.vae.encode(video).latent_dist.mode()
        z = ae.encode(video, sample=False)
    expected = LTXPipeline._normalize_latents(raw, ae.vae.latents_mean, ae.vae.latents_std, 1.0)
    assert z.shape == (1, 128, 2, 2, 2) and torch.allclose(z, expected, atol=1e-5)
    assert torch.allclose(ae.denormalise(z), raw, atol=1e-5)


def test_pipeline_path_fills_every_component(registry, pipeline, tmp_path):
    from osctl.recipe.load import load_recipe
    from osctl.recipe.validate import check_recipe

    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"extends: {Path(__file__).parents[2] / 'recipes' / 'base' / 'ltx-video.yaml'}\n"
                      f"pipeline_path: {pipeline}\ndata: {{num_frames: 9, hw_stride: 32}}\n")
    checked = check_recipe(load_recipe(recipe), registry)
    model, ae, text = (checked.components[k] for k in ("model", "autoencoder", "text_encoder"))
    assert model.path == str(pipeline) and ae.folder() == pipeline / "vae" and text.attend_padding
    assert model.missing_weights() == [] and ae.missing_weights() == [] and text.missing_weights() == []
    assert model.diffusers_pipeline() == {"_class_name": "LTXPipeline"}
    assert checked.geometry.describe() == ("autoencoder 8x32x32 (128 latent channels), patch 1x1x1: 8k+1 frames, "
                                           "sizes in multiples of 32")


def test_a_folder_of_another_family_names_the_class_it_holds(pipeline, tmp_path):
    from osctl_builtin.autoencoders.ltx_vae.register import LTXVAEConfig
    from osctl_builtin.models.ltx_video.register import LTXVideoConfig

    other = tmp_path / "cog"
    other.mkdir()
    (other / "model_index.json").write_text(json.dumps({"_class_name": "CogVideoXPipeline",
                                                        "transformer": ["diffusers", "CogVideoXTransformer3DModel"]}))
    with pytest.raises(Exception, match="CogVideoXPipeline \\(transformer CogVideoXTransformer3DModel\\), not a LTX"):
        LTXVideoConfig(path=str(other))
    with pytest.raises(Exception, match="CogVideoXPipeline"):
        LTXVAEConfig(path=str(other))
    with pytest.raises(Exception, match="describes a AutoencoderKLLTXVideo, not a LTX-Video LTXVideoTransformer3DModel"):
        LTXVideoConfig(path=str(pipeline / "vae"))
