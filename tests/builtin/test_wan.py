"""The Wan family: plugins, presets, released layouts, and sampling equal to diffusers' own ``WanPipeline``.

Parity: a tiny random ``WanPipeline`` is saved in the released layout; osctl builds its components from that
folder through the plugins (``wan``, ``wan_vae``, ``t5`` with the pipeline's subfolders) and samples with
:class:`osctl.sample.pipeline.VideoPipeline`; diffusers' pipeline loaded from the same folder samples the same
prompts from the same initial latents. Text handling (prompt cleaning, 512 tokens with zeros past the prompt),
the sampler, classifier-free guidance and Wan 2.2's expert routing with one guidance scale per expert must all
agree for the latents to match (fp32, max difference <= 1e-4).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from osctl.errors import ConfigError
from tests.wan_helpers import tiny_pipeline, wan_registry

PROMPT = "a red  ball &amp; a  blue cube"  # cleaned by both sides: whitespace collapsed, HTML unescaped
NEGATIVE = "blurry, static"


@pytest.fixture(scope="module")
def registry():
    return wan_registry()


@pytest.fixture(scope="module")
def pipelines(tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("wan")
    return {name: tiny_pipeline(tmp / name, preset=name) for name in ("tiny", "tiny-a14b", "tiny-ti2v")}


def _components(registry, folder: Path):
    model = registry.build("model", "wan", {"path": str(folder)}, dtype=torch.float32).eval()
    ae = registry.build("autoencoder", "wan_vae", {"path": str(folder)}, dtype=torch.float32)
    text = registry.build("text_encoder", "t5", {"name_or_path": str(folder), "subfolder": "text_encoder",
                                                 "tokenizer_subfolder": "tokenizer", "prompt_clean": "wan"},
                          dtype=torch.float32)
    return model, ae, text


def _geometry(registry, folder: Path):
    """The latent geometry the recipe check would join for the wan / wan_vae pair of ``folder``."""
    from osctl.geometry import latent_geometry

    ae = registry.make_config("autoencoder", "wan_vae", {"path": str(folder)}, "autoencoder").autoencoder_geometry()
    return latent_geometry(ae, registry.make_config("model", "wan", {"path": str(folder)}, "model").model_geometry())


# -- sampling parity ------------------------------------------------------------------------------------

@pytest.mark.parametrize("sampler", ["UniPCMultistep", "FlowMatchEulerDiscrete"])
@pytest.mark.parametrize("preset", ["tiny", "tiny-a14b", "tiny-ti2v"])
def test_sampling_equals_wan_pipeline(registry, pipelines, preset, sampler):
    from diffusers import FlowMatchEulerDiscreteScheduler, WanPipeline

    from osctl.sample.pipeline import VideoPipeline

    folder = pipelines[preset]
    model, ae, text = _components(registry, folder)
    scheduler = registry.build("sampler", sampler, {"flow_shift": 3.0, "prediction_type": "flow"})
    pipe = WanPipeline.from_pretrained(folder)
    if sampler == "FlowMatchEulerDiscrete":
        pipe.scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    two = pipe.config.boundary_ratio is not None
    size = dict(num_frames=9, height=32, width=32, num_inference_steps=6)
    shape = (1, ae.latent_channels, 3, 32 // ae.spatial_stride, 32 // ae.spatial_stride)
    latents = torch.randn(shape, generator=torch.Generator().manual_seed(3))
    geometry = _geometry(registry, folder)
    ours = VideoPipeline(model, ae, text, scheduler, geometry=geometry)(PROMPT, NEGATIVE, guidance_scale=5.0,
                                                     guidance_scale_2=3.0 if two else None, latents=latents.clone(),
                                                     max_sequence_length=512, output_type="float", **size)
    theirs = pipe(PROMPT, NEGATIVE, guidance_scale=5.0, guidance_scale_2=3.0 if two else None,
                  latents=latents.clone(), output_type="latent", **size).frames
    assert (ours.latents - theirs).abs().max() <= 1e-4
    video = pipe(PROMPT, NEGATIVE, guidance_scale=5.0, guidance_scale_2=3.0 if two else None,
                 latents=latents.clone(), output_type="pt", **size).frames  # B x T x C x H x W in [0, 1]
    assert ((ours.videos.permute(0, 2, 1, 3, 4) / 2 + 0.5).clamp(0, 1) - video).abs().max() <= 1e-4
    if two:  # both experts took steps: the boundary is crossed, and the second guidance scale matters
        steps = pipe.scheduler.timesteps
        boundary = pipe.config.boundary_ratio * 1000
        assert (steps >= boundary).any() and (steps < boundary).any()
        other = VideoPipeline(model, ae, text, registry.build("sampler", sampler, {"flow_shift": 3.0,
                                                                                  "prediction_type": "flow"}),
                              geometry=geometry)
        changed = other(PROMPT, NEGATIVE, guidance_scale=5.0, guidance_scale_2=5.0, latents=latents.clone(),
                        max_sequence_length=512, output_type="latent", **size)
        assert (changed.latents - theirs).abs().max() > 1e-3


def test_text_states_are_wan_pipeline_prompt_embeddings(registry, pipelines):
    """Zeros past the prompt and up to 512 tokens, from an encoder that pads to any length."""
    from diffusers import WanPipeline

    model, _, text = _components(registry, pipelines["tiny"])
    pipe = WanPipeline.from_pretrained(pipelines["tiny"])
    expected, _ = pipe.encode_prompt(PROMPT, do_classifier_free_guidance=False, max_sequence_length=512)
    tokens = text.tokenize([PROMPT], max_length=40)  # shorter than Wan's 512: the model pads the rest
    states = text.encode(tokens["input_ids"], tokens["attention_mask"])
    assert type(text.model).__name__ == "UMT5EncoderModel"
    prepared = model.prepare_text(states, tokens["attention_mask"])
    assert prepared.shape == expected.shape == (1, 512, 32)
    assert (prepared - expected).abs().max() <= 1e-5  # the encoder sees 40 vs 512 padded tokens


def test_wan_prompt_clean_matches_diffusers():
    from diffusers.pipelines.wan.pipeline_wan import prompt_clean

    from osctl_builtin.text_encoders.t5 import wan_prompt_clean

    for text in (PROMPT, "  tabs\tand\nnewlines  ", "&amp;lt;b&amp;gt; caf\u00c3\u00a9"):
        assert wan_prompt_clean(text) == prompt_clean(text)


# -- experts ----------------------------------------------------------------------------------------------

def test_experts_route_timesteps_and_train_their_range(registry):
    from osctl_builtin.models.wan.register import WanConfig

    both = registry.build("model", "wan", {"preset": "tiny-a14b"})
    assert both.transformer_names == ("transformer", "transformer_2") and both.boundary_timestep == 875.0
    assert both.expert_index(torch.tensor([999.0, 875.0, 874.9, 0.0])).tolist() == [0, 0, 1, 1]
    assert both.training_timestep_window() is None
    high = registry.build("model", "wan", {"preset": "tiny-a14b", "experts": ["high_noise"]})
    assert high.training_timestep_window() == (875.0, float("inf"))
    assert not any(p.requires_grad for p in high.transformer_2.parameters())
    assert all(p.requires_grad for p in high.transformer.parameters())
    low = registry.build("model", "wan", {"preset": "tiny-a14b", "experts": ["low_noise"], "boundary_ratio": 0.5})
    assert low.training_timestep_window() == (float("-inf"), 500.0)
    with pytest.raises(Exception, match="single transformer"):
        WanConfig(preset="tiny", experts=["high_noise"])
    with pytest.raises(Exception, match="list each expert once"):
        WanConfig(preset="tiny-a14b", experts=["high_noise", "high_noise"])


def test_a_batch_spanning_the_boundary_gives_each_sample_its_expert(registry):
    model = registry.build("model", "wan", {"preset": "tiny-a14b"}).eval()
    x = torch.randn(2, 16, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    text = torch.randn(2, 1, 7, 32, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([900.0, 300.0])
    with torch.no_grad():
        mixed = model(x, t, text)[0]
        first = model.call_transformer(model.transformer, x[:1], t[:1], model.prepare_text(text[:1, 0], None))
        second = model.call_transformer(model.transformer_2, x[1:], t[1:], model.prepare_text(text[1:, 0], None))
    assert torch.allclose(mixed, torch.cat([first, second]), atol=1e-6)


def test_both_experts_trained_get_gradients_even_when_no_sample_falls_to_one(registry):
    """Every trained expert runs on every micro-step (data-parallel ranks must use the same modules)."""
    model = registry.build("model", "wan", {"preset": "tiny-a14b"}).train()
    x = torch.randn(1, 16, 3, 4, 4)
    out = model(x, torch.tensor([950.0]), torch.randn(1, 1, 5, 32))[0]
    out.square().mean().backward()
    assert all(p.grad is not None for p in model.transformer_2.parameters())
    assert all(float(p.grad.abs().sum()) == 0.0 for p in model.transformer_2.parameters())
    assert any(float(p.grad.abs().sum()) > 0 for p in model.transformer.parameters())


# -- presets, geometry, plans -------------------------------------------------------------------------------

@pytest.mark.parametrize(("preset", "billions", "channels"), [
    ("wan2.1-t2v-1.3b", 1.419, 16), ("wan2.1-t2v-14b", 14.288, 16), ("wan2.2-t2v-a14b", 28.577, 16),
    ("wan2.2-ti2v-5b", 5.000, 48)])
def test_released_presets_build_on_meta(registry, preset, billions, channels):
    from osctl_builtin.models.wan.register import WanConfig

    model = registry.build("model", "wan", {"preset": preset}, meta=True)
    count = sum(p.numel() for p in model.parameters())
    assert abs(count / 1e9 - billions) < 0.001
    assert all(p.device.type == "meta" for p in model.parameters())
    geometry = WanConfig(preset=preset).model_geometry()
    assert (geometry.patch_t, geometry.patch_hw, geometry.in_channels, geometry.out_channels) == (1, 2, channels,
                                                                                                   channels)


def test_vae_geometry_and_normalisation(registry):
    from osctl.geometry import latent_geometry
    from osctl_builtin.autoencoders.wan_vae.register import WanVAEConfig
    from osctl_builtin.models.wan.register import WanConfig

    g21 = WanVAEConfig().autoencoder_geometry()
    g22 = WanVAEConfig(preset="wan2.2").autoencoder_geometry()
    assert (g21.stride_t, g21.stride_hw, g21.latent_channels) == (4, 8, 16)
    assert (g22.stride_t, g22.stride_hw, g22.latent_channels) == (4, 16, 48)
    assert latent_geometry(g22, WanConfig(preset="wan2.2-ti2v-5b").model_geometry()).hw_unit == 32
    with pytest.raises(ConfigError, match="48 channels"):
        latent_geometry(g22, WanConfig(preset="wan2.1-t2v-1.3b").model_geometry())
    ae = registry.build("autoencoder", "wan_vae", {"preset": "tiny-wan2.2"})
    video = torch.rand(1, 3, 9, 32, 32) * 2 - 1
    raw = ae.vae.encode(video).latent_dist.mode()
    mean = torch.tensor(ae.vae.config.latents_mean).view(1, 48, 1, 1, 1)
    std = torch.tensor(ae.vae.config.latents_std).view(1, 48, 1, 1, 1)
    z = ae.encode(video, sample=False)
    assert z.shape == (1, 48, 3, 2, 2)
    assert torch.allclose(z, (raw - mean) / std, atol=1e-5)
    assert ae.decode(z).shape == (1, 3, 9, 32, 32)


# -- released layouts -------------------------------------------------------------------------------------------

def test_pipeline_path_fills_every_component(registry, pipelines, tmp_path):
    from osctl.recipe.load import load_recipe
    from osctl.recipe.validate import check_recipe

    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"pipeline_path: {pipelines['tiny-a14b']}\nmodel: {{name: wan, experts: [low_noise]}}\n"
                      "autoencoder: {name: wan_vae}\ntext_encoder: {name: t5, max_length: 64}\n"
                      "diffusion: {objective: flow_matching}\nsample: {sample_method: UniPCMultistep}\n")
    checked = check_recipe(load_recipe(recipe), registry)
    model, ae, text = (checked.components[k] for k in ("model", "autoencoder", "text_encoder"))
    assert model.path == str(pipelines["tiny-a14b"]) and model.transformer_names() == ("transformer", "transformer_2")
    assert model.boundary() == 0.875 and model.trained_transformers() == ("transformer_2",)
    assert ae.folder() == pipelines["tiny-a14b"] / "vae"
    assert text.encoder_source() == str(pipelines["tiny-a14b"] / "text_encoder") and text.max_length == 64
    assert model.missing_weights() == [] and ae.missing_weights() == [] and text.missing_weights() == []
    assert model.diffusers_pipeline() == {"_class_name": "WanPipeline", "boundary_ratio": 0.875,
                                          "expand_timesteps": False}


def test_a_folder_of_another_family_names_the_class_it_holds(pipelines, tmp_path):
    from osctl_builtin.autoencoders.wan_vae.register import WanVAEConfig
    from osctl_builtin.models.wan.register import WanConfig

    other = tmp_path / "cog"
    (other / "transformer").mkdir(parents=True)
    (other / "model_index.json").write_text(json.dumps({"_class_name": "CogVideoXPipeline",
                                                        "transformer": ["diffusers", "CogVideoXTransformer3DModel"]}))
    with pytest.raises(Exception, match="CogVideoXPipeline \\(transformer CogVideoXTransformer3DModel\\), not a Wan"):
        WanConfig(path=str(other))
    with pytest.raises(Exception, match="CogVideoXPipeline"):
        WanVAEConfig(path=str(other))
    with pytest.raises(Exception, match="describes a AutoencoderKLWan, not a Wan WanTransformer3DModel"):
        WanConfig(path=str(pipelines["tiny"] / "vae"))


def test_missing_pipelines_are_reported_not_downloaded(registry, monkeypatch, tmp_path):
    from osctl_builtin.models.wan.register import WanConfig
    from osctl_builtin.text_encoders.t5 import T5Config

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    config = WanConfig(path="Wan-AI/Wan2.1-T2V-1.3B-Diffusers")
    (missing,) = config.missing_weights()
    assert "not available offline" in missing.detail and "hf download Wan-AI/Wan2.1-T2V-1.3B-Diffusers" in missing.fetch
    assert config.plan_architecture()["num_layers"] == 30  # a plan uses the preset
    with pytest.raises(ConfigError, match="not available offline"):
        registry.build("model", "wan", config)
    text = T5Config(**T5Config.pipeline_options("Wan-AI/Wan2.1-T2V-1.3B-Diffusers"))
    assert "not available offline" in text.missing_weights()[0].detail
    assert text.hidden_size() == 4096
    planned = registry.build("text_encoder", "t5", text, meta=True)
    assert type(planned.model).__name__ == "UMT5EncoderModel"
    (local,) = WanConfig(path=str(tmp_path / "nowhere")).missing_weights()
    assert "does not exist" in local.detail


@pytest.mark.parametrize("preset", ["tiny", "tiny-a14b"])
def test_saved_weights_load_back_part_by_part(registry, preset, tmp_path):
    """A checkpoint's model/ (one transformer: the folder itself; two: transformer/ and transformer_2/) loads
    back into a fresh model (resume, train.pretrained) and with diffusers' from_pretrained."""
    from diffusers import WanTransformer3DModel

    from osctl.train.export import save_model
    from osctl.train.weights import load_into

    torch.manual_seed(0)
    trained = registry.build("model", "wan", {"preset": preset})
    save_model(tmp_path / "model", trained, trained.state_dict())
    names = [name for name, _ in trained.transformers()]
    folders = [tmp_path / "model"] if len(names) == 1 else [tmp_path / "model" / name for name in names]
    for name, folder in zip(names, folders, strict=True):
        loaded = WanTransformer3DModel.from_pretrained(folder)
        assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(),
                                                     getattr(trained, name).state_dict().values(), strict=True))
    torch.manual_seed(1)
    fresh = registry.build("model", "wan", {"preset": preset})
    report = load_into(fresh, tmp_path / "model")
    assert report.loaded == report.total and not (report.missing or report.unexpected or report.mismatched)
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), trained.state_dict().values(),
                                                 strict=True))


def test_a_plan_before_download_assumes_the_vae_of_the_released_pipeline(monkeypatch, tmp_path):
    from osctl_builtin.autoencoders.wan_vae.register import WanVAEConfig

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    ti2v = WanVAEConfig(**WanVAEConfig.pipeline_options("Wan-AI/Wan2.2-TI2V-5B-Diffusers")).autoencoder_geometry()
    t2v = WanVAEConfig(**WanVAEConfig.pipeline_options("Wan-AI/Wan2.2-T2V-A14B-Diffusers")).autoencoder_geometry()
    assert (ti2v.stride_hw, ti2v.latent_channels) == (16, 48) and (t2v.stride_hw, t2v.latent_channels) == (8, 16)
