"""What the tests of the model families from diffusers share: their plugins, tiny text encoders, tiny pipelines.

``ensure_family_plugins`` makes the family plugins (``wan``, ``cogvideox``, ``ltx_video``, ``hunyuan_video`` and
their autoencoders) visible to the registry until osctl is reinstalled with their entry points
(``pyproject.toml``): the ones not installed are put in a fake distribution. ``family_registry`` is a registry
holding them, installed or not. The ``tiny_*_pipeline`` functions write a family's pipeline with random weights
in the released diffusers layout (``model_index.json`` and one folder per component) that
``DiffusionPipeline.from_pretrained`` loads and osctl's ``pipeline_path`` reads.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any

import pytest
import torch

#: entry-point name -> module of every family plugin (as pyproject.toml declares them)
FAMILY_ENTRY_POINTS = {
    "osctl.models.wan": "osctl_builtin.models.wan.register",
    "osctl.autoencoders.wan_vae": "osctl_builtin.autoencoders.wan_vae.register",
    "osctl.models.cogvideox": "osctl_builtin.models.cogvideox.register",
    "osctl.autoencoders.cogvideox_vae": "osctl_builtin.autoencoders.cogvideox_vae.register",
    "osctl.models.ltx_video": "osctl_builtin.models.ltx_video.register",
    "osctl.autoencoders.ltx_vae": "osctl_builtin.autoencoders.ltx_vae.register",
    "osctl.models.hunyuan_video": "osctl_builtin.models.hunyuan_video.register",
    "osctl.autoencoders.hunyuan_vae": "osctl_builtin.autoencoders.hunyuan_vae.register",
}


def missing_family_plugins() -> dict[str, str]:
    """The family entry points the installed osctl does not declare yet."""
    from osctl.plugin_manager import find_plugins

    installed = {p.name for p in find_plugins()}
    return {name: module for name, module in FAMILY_ENTRY_POINTS.items() if name not in installed}


def ensure_family_plugins(monkeypatch: pytest.MonkeyPatch, root: Path) -> Path | None:
    """Install the family plugins osctl lacks as a fake distribution under ``root``; returns the folder to put on a
    subprocess's ``PYTHONPATH`` (None when nothing was needed)."""
    from osctl.plugin_manager import reset_caches
    from tests.plugin_helpers import install_fake_distribution

    missing = missing_family_plugins()
    if not missing:
        reset_caches()
        return None
    install_fake_distribution(monkeypatch, root, "osctl-families-dev", missing)
    reset_caches()
    return root


def subprocess_env(site: Path | None) -> dict[str, str]:
    """The environment of a subprocess that must see the worktree, the plugins and the fake distribution."""
    repo = Path(__file__).resolve().parent.parent
    paths = [str(site)] if site is not None else []
    paths += [str(repo), str(repo / "plugins"), os.environ.get("PYTHONPATH", "")]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p), "OMP_NUM_THREADS": "1"}


def family_registry() -> Any:
    """A registry holding the built-in plugins and every family plugin, installed or not."""
    from osctl.plugin_manager import build_registry, new_plugin_manager

    extra = [(name, importlib.import_module(module)) for name, module in missing_family_plugins().items()]
    return build_registry(new_plugin_manager(extra))


def tiny_t5_encoder(kind: str = "UMT5", d_model: int = 32, seed: int = 0) -> tuple[Any, Any]:
    """A tiny random encoder of class ``<kind>EncoderModel`` (``UMT5``: Wan's, a relative position bias in every
    layer; ``T5``: CogVideoX's and LTX-Video's) and a ByT5 tokenizer (no vocabulary file needed), deterministic
    for a seed."""
    import transformers

    from osctl_builtin.text_encoders.t5 import (
        fill_parameters_deterministically,
        mt5_config_fields,
        tiny_t5_settings,
    )

    fields = mt5_config_fields(tiny_t5_settings(seed=seed, d_model=d_model))
    config = getattr(transformers, f"{kind}Config")(**fields, is_encoder_decoder=False, use_cache=False,
                                                     pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    encoder = getattr(transformers, f"{kind}EncoderModel")(config)
    fill_parameters_deterministically(encoder, seed)
    return encoder.eval(), transformers.ByT5Tokenizer()


def perturb(module: torch.nn.Module, scale: float = 0.05) -> torch.nn.Module:
    """Add ``scale`` x Gaussian noise to every weight (diffusers initialises some tables to zero: make every weight
    matter to the output); draws from torch's global generator."""
    with torch.no_grad():
        for param in module.parameters():
            param.add_(scale * torch.randn_like(param))
    return module


def tiny_cogvideox_pipeline(folder: Path, *, preset: str = "tiny-rope", seed: int = 0) -> Path:
    """Write a tiny random ``CogVideoXPipeline`` (a model preset of ``osctl_builtin.models.cogvideox.presets``) with
    the preset's released sampler to ``folder``."""
    from diffusers import (
        CogVideoXDDIMScheduler,
        CogVideoXDPMScheduler,
        CogVideoXPipeline,
        CogVideoXTransformer3DModel,
    )

    from osctl_builtin.autoencoders.cogvideox_vae.register import PRESETS as VAE_PRESETS
    from osctl_builtin.autoencoders.cogvideox_vae.wrapper import CogVideoXVAEAutoencoder
    from osctl_builtin.models.cogvideox.presets import preset as model_preset

    spec = model_preset(preset)
    torch.manual_seed(seed)
    transformer = perturb(CogVideoXTransformer3DModel(**spec["architecture"]))
    vae_config = {**VAE_PRESETS["tiny"], "scaling_factor": 0.7 if spec["snr_shift_scale"] == 1.0 else 1.15258426}
    vae = CogVideoXVAEAutoencoder.from_config(vae_config, seed=seed).vae
    encoder, tokenizer = tiny_t5_encoder("T5", spec["architecture"]["text_embed_dim"], seed)
    table = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                 prediction_type="v_prediction", rescale_betas_zero_snr=True, set_alpha_to_one=True,
                 snr_shift_scale=spec["snr_shift_scale"], timestep_spacing="trailing")
    scheduler = (CogVideoXDPMScheduler if spec["sampler"] == "CogVideoXDPM" else CogVideoXDDIMScheduler)(**table)
    CogVideoXPipeline(tokenizer=tokenizer, text_encoder=encoder, vae=vae, transformer=transformer,
                      scheduler=scheduler).save_pretrained(folder)
    return folder


#: the scheduler of the released LTX-Video pipelines: flow matching, shifted by the video's token count
LTX_SCHEDULER = {"use_dynamic_shifting": True, "base_shift": 0.95, "max_shift": 2.05, "base_image_seq_len": 1024,
                 "max_image_seq_len": 4096}


def tiny_ltx_pipeline(folder: Path, *, seed: int = 0) -> Path:
    """Write a tiny random ``LTXPipeline`` (model preset ``tiny``, VAE preset ``tiny`` with a timestep-conditioned
    decoder and per-channel statistics) with the released scheduler settings to ``folder``."""
    from diffusers import FlowMatchEulerDiscreteScheduler, LTXPipeline, LTXVideoTransformer3DModel

    from osctl_builtin.autoencoders.ltx_vae.register import PRESETS as VAE_PRESETS
    from osctl_builtin.autoencoders.ltx_vae.wrapper import LTXVAEAutoencoder
    from osctl_builtin.models.ltx_video.presets import preset as model_preset

    torch.manual_seed(seed)
    transformer = perturb(LTXVideoTransformer3DModel(**model_preset("tiny")["architecture"]))
    vae = LTXVAEAutoencoder.from_config(VAE_PRESETS["tiny"], seed=seed).vae
    with torch.no_grad():  # released VAEs carry per-channel statistics: make them matter
        vae.latents_mean.copy_(0.1 * torch.randn(vae.latents_mean.shape))
        vae.latents_std.copy_(1.0 + 0.2 * torch.rand(vae.latents_std.shape))
    encoder, tokenizer = tiny_t5_encoder("T5", 32, seed)
    LTXPipeline(scheduler=FlowMatchEulerDiscreteScheduler(**LTX_SCHEDULER), vae=vae, text_encoder=encoder,
                tokenizer=tokenizer, transformer=transformer).save_pretrained(folder)
    return folder


def word_tokenizer(words: list[str], *, bos: str, eos: str, pad: str, specials: tuple[str, ...] = (),
                   eos_after: bool = False) -> Any:
    """A fast word-level tokenizer over ``words`` (lower-cased, split on whitespace and punctuation; others are
    ``<unk>``) that starts every text with ``bos`` (and ends it with ``eos`` when ``eos_after``): a stand-in for
    the Llama and CLIP tokenizers of the tiny HunyuanVideo pipeline, built without a vocabulary file."""
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    vocab: dict[str, int] = {}
    for token in (pad, "<unk>", bos, eos, *specials, *words):
        vocab.setdefault(token, len(vocab))
    core = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    core.normalizer = normalizers.Lowercase()
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    single = f"{bos} $A {eos}" if eos_after else f"{bos} $A"
    core.post_processor = processors.TemplateProcessing(
        single=single, special_tokens=[(bos, vocab[bos])] + ([(eos, vocab[eos])] if eos_after else []))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, bos_token=bos, eos_token=eos, pad_token=pad,
                                        unk_token="<unk>", model_max_length=1 << 20)
    tokenizer.add_special_tokens({"additional_special_tokens": list(specials)})
    return tokenizer


#: the words of the tiny HunyuanVideo tokenizers: the template's and the test prompts'
HUNYUAN_WORDS = ["describe", "the", "video", "by", "detailing", "following", "aspects", ":", "1", ".", "main", "content", "and", "theme", "of", "2", "color", ",", "shape", "size", "texture", "quantity", "text", "spatial", "relationships", "objects", "3", "actions", "events", "behaviors", "temporal", "physical", "movement", "changes", "4", "background", "environment", "light", "style", "atmosphere", "5", "camera", "angles", "movements", "transitions", "used", "in", "system", "user", "a", "red", "ball", "rolls", "over", "blue", "floor", "blurry", "static", "circle", "moves", "clip", "number", "0", "6", "7", "8", "9", "to", "right"]


def tiny_hunyuan_pipeline(folder: Path, *, seed: int = 0) -> Path:
    """Write a tiny random ``HunyuanVideoPipeline`` (model preset ``tiny``, VAE preset ``tiny``, a 3-layer
    ``LlamaModel`` and a 2-layer ``CLIPTextModel`` with word-level tokenizers, the released flow sampler with
    shift 7.0) to ``folder``."""
    import transformers
    from diffusers import (
        FlowMatchEulerDiscreteScheduler,
        HunyuanVideoPipeline,
        HunyuanVideoTransformer3DModel,
    )

    from osctl_builtin.autoencoders.hunyuan_vae.register import PRESETS as VAE_PRESETS
    from osctl_builtin.autoencoders.hunyuan_vae.wrapper import HunyuanVAEAutoencoder
    from osctl_builtin.models.hunyuan_video.presets import preset as model_preset

    torch.manual_seed(seed)
    architecture = model_preset("tiny")["architecture"]
    transformer = perturb(HunyuanVideoTransformer3DModel(**architecture))
    vae = HunyuanVAEAutoencoder.from_config(VAE_PRESETS["tiny"], seed=seed).vae
    words = sorted(set(HUNYUAN_WORDS))
    tokenizer = word_tokenizer(words, bos="<|begin_of_text|>", eos="<|end_of_text|>", pad="<pad>",
                               specials=("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"))
    tokenizer_2 = word_tokenizer(words, bos="<|startoftext|>", eos="<|endoftext|>", pad="<pad>", eos_after=True)
    llama = transformers.LlamaModel(transformers.LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=architecture["text_embed_dim"], intermediate_size=64,
        num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id))
    clip = transformers.CLIPTextModel(transformers.CLIPTextConfig(
        vocab_size=len(tokenizer_2), hidden_size=architecture["pooled_projection_dim"], intermediate_size=32,
        num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=77, projection_dim=16,
        pad_token_id=tokenizer_2.pad_token_id, bos_token_id=tokenizer_2.bos_token_id,
        eos_token_id=tokenizer_2.eos_token_id))
    HunyuanVideoPipeline(text_encoder=perturb(llama).eval(), tokenizer=tokenizer, transformer=transformer, vae=vae,
                         scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0), text_encoder_2=perturb(clip).eval(),
                         tokenizer_2=tokenizer_2).save_pretrained(folder)
    return folder


def hunyuan_crop_start(folder: Path) -> int:
    """The chat template's prefix in tokens of the tiny pipeline's Llama tokenizer (``hunyuan_text.crop_start``), as
    ``HunyuanVideoPipeline`` counts it when it is given no ``crop_start``."""
    from transformers import AutoTokenizer

    from osctl_builtin.text_encoders.hunyuan import TEMPLATE

    return len(AutoTokenizer.from_pretrained(folder / "tokenizer")(TEMPLATE)["input_ids"]) - 2
