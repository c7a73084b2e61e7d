"""The HunyuanVideo family: plugins, presets, its two text encoders, and sampling equal to ``HunyuanVideoPipeline``.

Parity: a tiny random ``HunyuanVideoPipeline`` (a 3-layer LlamaModel and a 2-layer CLIPTextModel with word-level
tokenizers) is saved in the released layout; osctl builds its components from that folder through the plugins
(``hunyuan_video``, ``hunyuan_vae``, ``hunyuan_text``) and samples with :class:`osctl.sample.pipeline.VideoPipeline`;
diffusers' pipeline loaded from the same folder samples the same prompt from the same initial latents. The chat
template and its cropped prefix, Llama's third-last hidden states, CLIP's pooled vector, the embedded guidance
(no classifier-free pass) and the pipeline's sigmas with the sampler's shift 7.0 must all agree (fp32, <= 1e-4).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.family_helpers import family_registry, hunyuan_crop_start, tiny_hunyuan_pipeline

PROMPT = "a red ball rolls over the blue floor"


@pytest.fixture(scope="module")
def registry():
    return family_registry()


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory) -> Path:
    return tiny_hunyuan_pipeline(tmp_path_factory.mktemp("hunyuan") / "pipe")


def _components(registry, folder: Path, **model: float):
    built = registry.build("model", "hunyuan_video", {"path": str(folder), **model}, dtype=torch.float32).eval()
    ae = registry.build("autoencoder", "hunyuan_vae", {"path": str(folder)}, dtype=torch.float32)
    text = registry.build("text_encoder", "hunyuan_text", {"name_or_path": str(folder),
                                                           "crop_start": hunyuan_crop_start(folder)}, dtype=torch.float32)
    return built, ae, text


def _template(text) -> dict:
    return {"template": text.config.template, "crop_start": text.config.crop_start}


@pytest.mark.parametrize("guidance", [6.0, 3.5])
def test_sampling_equals_hunyuan_video_pipeline(registry, pipeline, guidance):
    from diffusers import HunyuanVideoPipeline

    from osctl.geometry import latent_geometry
    from osctl.sample.pipeline import VideoPipeline

    model, ae, text = _components(registry, pipeline, guidance=guidance)
    scheduler = registry.build("sampler", "FlowMatchEulerDiscrete", {"prediction_type": "flow", "flow_shift": 7.0})
    geometry = latent_geometry(
        registry.make_config("autoencoder", "hunyuan_vae", {"path": str(pipeline)}, "autoencoder").autoencoder_geometry(),
        registry.make_config("model", "hunyuan_video", {"path": str(pipeline)}, "model").model_geometry())
    pipe = HunyuanVideoPipeline.from_pretrained(pipeline)
    size = dict(num_frames=9, height=32, width=48, num_inference_steps=5)
    latents = torch.randn((1, 16, 3, 4, 6), generator=torch.Generator().manual_seed(3))
    ours = VideoPipeline(model, ae, text, scheduler, geometry=geometry)(
        PROMPT, "", guidance_scale=1.0, latents=latents.clone(), max_sequence_length=256, output_type="float", **size)
    common = dict(guidance_scale=guidance, latents=latents.clone(), prompt_template=_template(text), **size)
    theirs = pipe(PROMPT, output_type="latent", **common).frames
    assert (ours.latents - theirs).abs().max() <= 1e-4
    video = pipe(PROMPT, output_type="pt", **common).frames  # B x T x C x H x W in [0, 1]
    assert ((ours.videos.permute(0, 2, 1, 3, 4) / 2 + 0.5).clamp(0, 1) - video).abs().max() <= 1e-4


def test_the_packed_text_holds_both_encoders_as_the_pipeline_encodes_them(registry, pipeline):
    """Row 0: CLIP's pooled vector; then Llama's third-last states of the prompt past the template, with their
    mask; the model drops the trailing padding the transformer would mask out anyway."""
    from diffusers import HunyuanVideoPipeline

    model, _, text = _components(registry, pipeline)
    pipe = HunyuanVideoPipeline.from_pretrained(pipeline)
    with torch.no_grad():
        states, pooled, mask = pipe.encode_prompt(PROMPT, prompt_template=_template(text))
    tokens = text.tokenize([PROMPT, "a blue circle"])
    crop = text.config.crop_start
    assert tokens["input_ids"].shape == tokens["attention_mask"].shape == (2, crop + 256 + 77)
    packed = text.encode(tokens["input_ids"], tokens["attention_mask"])
    assert packed.shape == (2, crop + 256 + 77, 32)
    condition = model.prepare_text(packed, tokens["attention_mask"])
    length = int(mask[0].sum())
    assert condition.states.shape[1] == length == int(tokens["attention_mask"][0, 1:].sum())
    assert (condition.states[:1] - states[:, :length]).abs().max() <= 1e-5
    assert torch.equal(condition.mask[:1].bool(), mask[:, :length].bool())
    assert (condition.pooled[:1] - pooled).abs().max() <= 1e-5
    assert condition.mask[1].sum() < length  # the shorter prompt keeps its own mask


def test_training_embeds_the_training_guidance_and_sampling_the_pipelines(registry, pipeline):
    model, _, _ = _components(registry, pipeline, guidance=6.0)
    x = torch.randn(1, 16, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    text = torch.randn(1, 1, 20, 32, generator=torch.Generator().manual_seed(1))
    mask = torch.ones(1, 1, 20, dtype=torch.long)
    t = torch.tensor([500.0])
    condition = model.prepare_text(text[:, 0], mask[:, 0])

    def direct(guidance: float) -> torch.Tensor:
        return model.transformer(hidden_states=x, timestep=t, encoder_hidden_states=condition.states,
                                 encoder_attention_mask=condition.mask, pooled_projections=condition.pooled,
                                 guidance=torch.tensor([guidance * 1000.0]), return_dict=False)[0]

    with torch.no_grad():
        sampling = model(x, t, text, encoder_attention_mask=mask)[0]
        model.train()
        training = model(x, t, text, encoder_attention_mask=mask)[0]
        model.eval()
        assert torch.allclose(sampling, direct(6.0), atol=1e-6) and torch.allclose(training, direct(1.0), atol=1e-6)
    assert not torch.allclose(sampling, training, atol=1e-4)


def test_sequence_parallel_attention_covers_both_block_kinds_and_is_diffusers_without_a_group(registry):
    """The Ulysses processor goes on every dual- and single-stream block (the token refiner keeps its own) and comes
    off again; installed without a group it is diffusers' processor (the 2-process equality is
    tests/integration/test_family_sequence_parallel.py)."""
    from diffusers.models.transformers.transformer_hunyuan_video import HunyuanVideoAttnProcessor2_0

    from osctl_builtin.models.hunyuan_video.model import UlyssesHunyuanVideoAttnProcessor

    model = registry.build("model", "hunyuan_video", {"preset": "tiny"}).eval()
    transformer = model.transformer
    blocks = (*transformer.transformer_blocks, *transformer.single_transformer_blocks)
    refiner = {name: type(module.processor) for name, module in transformer.context_embedder.named_modules()
               if hasattr(module, "processor")}
    x = torch.randn(1, 16, 3, 4, 6, generator=torch.Generator().manual_seed(0))
    text = torch.randn(1, 1, 12, 32, generator=torch.Generator().manual_seed(1))
    mask = torch.tensor([[[1] * 8 + [0] * 4]])
    t = torch.tensor([500.0])
    with torch.no_grad():
        plain = model(x, t, text, encoder_attention_mask=mask)[0]
        model.sequence_parallel_attention(transformer, True)
        assert all(type(block.attn.processor) is UlyssesHunyuanVideoAttnProcessor for block in blocks)
        assert torch.equal(model(x, t, text, encoder_attention_mask=mask)[0], plain)
    assert refiner and {name: type(module.processor) for name, module in transformer.context_embedder.named_modules()
                        if hasattr(module, "processor")} == refiner
    model.sequence_parallel_attention(transformer, False)
    assert all(type(block.attn.processor) is HunyuanVideoAttnProcessor2_0 for block in blocks)


def test_released_presets_build_on_meta(registry, monkeypatch, tmp_path):
    from osctl_builtin.autoencoders.hunyuan_vae.register import HunyuanVAEConfig
    from osctl_builtin.models.hunyuan_video.register import HunyuanVideoConfig
    from osctl_builtin.text_encoders.hunyuan import HunyuanTextConfig

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    model = registry.build("model", "hunyuan_video", {"preset": "hunyuan-video"}, meta=True)
    assert abs(sum(p.numel() for p in model.parameters()) / 1e9 - 12.821) < 0.001
    geometry = HunyuanVideoConfig().model_geometry()
    assert (geometry.patch_t, geometry.patch_hw, geometry.in_channels) == (1, 2, 16)
    vae = registry.build("autoencoder", "hunyuan_vae", {"preset": "hunyuan-video"}, meta=True)
    assert abs(sum(p.numel() for p in vae.parameters()) / 1e6 - 246.5) < 0.1
    g = HunyuanVAEConfig().autoencoder_geometry()
    assert (g.stride_t, g.stride_hw, g.latent_channels) == (4, 8, 16)
    config = HunyuanTextConfig()
    (missing,) = config.missing_weights()
    assert "hf download hunyuanvideo-community/HunyuanVideo" in missing.fetch
    text = registry.build("text_encoder", "hunyuan_text", config, meta=True)
    assert type(text.model).__name__ == "LlamaModel" and type(text.model_2).__name__ == "CLIPTextModel"
    assert abs(sum(p.numel() for p in text.parameters()) / 1e9 - 7.628) < 0.001 and text.hidden_size == 4096


def test_pipeline_path_fills_every_component(registry, pipeline, tmp_path):
    from osctl.recipe.load import load_recipe
    from osctl.recipe.validate import check_recipe

    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"pipeline_path: {pipeline}\nmodel: {{name: hunyuan_video}}\nautoencoder: {{name: hunyuan_vae}}\n"
                      "text_encoder: {name: hunyuan_text}\ndata: {num_frames: 9, hw_stride: 16}\n"
                      "diffusion: {objective: flow_matching, flow_shift: 7.0}\n"
                      "sample: {sample_method: FlowMatchEulerDiscrete}\n")
    checked = check_recipe(load_recipe(recipe), registry)
    model, ae, text = (checked.components[k] for k in ("model", "autoencoder", "text_encoder"))
    assert model.path == str(pipeline) and ae.folder() == pipeline / "vae" and text.root() == pipeline
    assert set(text.diffusers_components()) == {"text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2"}
    assert model.missing_weights() == [] and ae.missing_weights() == [] and text.missing_weights() == []
    other = tmp_path / "ltx"
    other.mkdir()
    (other / "model_index.json").write_text(json.dumps({"_class_name": "LTXPipeline",
                                                        "transformer": ["diffusers", "LTXVideoTransformer3DModel"]}))
    with pytest.raises(Exception, match="LTXPipeline \\(transformer LTXVideoTransformer3DModel\\), not a HunyuanVideo"):
        registry.make_config("model", "hunyuan_video", {"path": str(other)}, "model")
