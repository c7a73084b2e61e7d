"""Tiny Wan pipelines for the Wan family tests: random weights saved in diffusers' released layout.

``ensure_wan_plugins`` makes the ``wan`` and ``wan_vae`` plugins visible to the registry until osctl is
reinstalled with their entry points (``pyproject.toml``); ``tiny_pipeline`` writes a ``WanPipeline`` folder
(``model_index.json``, ``transformer/`` [+ ``transformer_2/``], ``vae/``, ``text_encoder/``, ``tokenizer/``,
``scheduler/``) that ``DiffusionPipeline.from_pretrained`` loads and osctl's ``pipeline_path`` reads.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import torch

WAN_ENTRY_POINTS = {"osctl.models.wan": "osctl_builtin.models.wan.register",
                    "osctl.autoencoders.wan_vae": "osctl_builtin.autoencoders.wan_vae.register"}


def wan_plugins_installed() -> bool:
    from osctl.plugin_manager import find_plugins

    return {p.name for p in find_plugins()} >= set(WAN_ENTRY_POINTS)


def ensure_wan_plugins(monkeypatch: pytest.MonkeyPatch, root: Path) -> Path | None:
    """Install the Wan plugins as a fake distribution under ``root`` unless osctl already has their entry points;
    returns the folder to put on a subprocess's ``PYTHONPATH`` (None when nothing was needed)."""
    from osctl.plugin_manager import reset_caches
    from tests.plugin_helpers import install_fake_distribution

    if wan_plugins_installed():
        reset_caches()
        return None
    install_fake_distribution(monkeypatch, root, "osctl-wan-dev", WAN_ENTRY_POINTS)
    reset_caches()
    return root


def subprocess_env(site: Path | None) -> dict[str, str]:
    """The environment of a subprocess that must see the worktree, the plugins and the fake distribution."""
    repo = Path(__file__).resolve().parent.parent
    paths = [str(site)] if site is not None else []
    paths += [str(repo), str(repo / "plugins"), os.environ.get("PYTHONPATH", "")]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p), "OMP_NUM_THREADS": "1"}


def wan_registry() -> Any:
    """A registry holding the built-in plugins and the Wan plugins, installed or not."""
    from osctl.plugin_manager import build_registry, find_plugins, new_plugin_manager
    from osctl_builtin.autoencoders.wan_vae import register as vae_register
    from osctl_builtin.models.wan import register as model_register

    installed = {p.name for p in find_plugins()}
    extra = [(name, module) for name, module in (("osctl.models.wan", model_register),
                                                 ("osctl.autoencoders.wan_vae", vae_register))
             if name not in installed]
    return build_registry(new_plugin_manager(extra))


def tiny_text_encoder(d_model: int = 32, seed: int = 0) -> tuple[Any, Any]:
    """A tiny random UMT5 encoder (Wan's encoder class: a relative position bias in every layer) and a ByT5
    tokenizer (no vocabulary file needed), deterministic for a seed."""
    import transformers

    from osctl_builtin.text_encoders.t5 import (
        fill_parameters_deterministically,
        mt5_config_fields,
        tiny_t5_settings,
    )

    fields = mt5_config_fields(tiny_t5_settings(seed=seed, d_model=d_model))
    config = transformers.UMT5Config(**fields, is_encoder_decoder=False, use_cache=False, pad_token_id=0,
                                     eos_token_id=1, decoder_start_token_id=0)
    encoder = transformers.UMT5EncoderModel(config)
    fill_parameters_deterministically(encoder, seed)
    return encoder.eval(), transformers.ByT5Tokenizer()


def tiny_pipeline(folder: Path, *, preset: str = "tiny", seed: int = 0, flow_shift: float = 3.0,
                  vae_preset: str | None = None, scheduler: str = "unipc") -> Path:
    """Write a tiny random ``WanPipeline`` (a model preset of ``osctl_builtin.models.wan.presets``) to ``folder``."""
    from diffusers import (
        FlowMatchEulerDiscreteScheduler,
        UniPCMultistepScheduler,
        WanPipeline,
        WanTransformer3DModel,
    )

    from osctl_builtin.autoencoders.wan_vae.register import PRESETS as VAE_PRESETS
    from osctl_builtin.autoencoders.wan_vae.wrapper import WanVAEAutoencoder
    from osctl_builtin.models.wan.presets import preset as model_preset

    spec = model_preset(preset)
    torch.manual_seed(seed)
    transformers = [WanTransformer3DModel(**spec["architecture"]) for _ in range(spec["transformers"])]
    for module in transformers:  # diffusers initialises some tables to zero: make every weight matter
        with torch.no_grad():
            for param in module.parameters():
                param.add_(0.05 * torch.randn_like(param))
    vae_name = vae_preset or ("tiny-wan2.2" if spec["architecture"]["in_channels"] == 48 else "tiny")
    vae = WanVAEAutoencoder.from_config(VAE_PRESETS[vae_name], seed=seed).vae
    encoder, tokenizer = tiny_text_encoder(spec["architecture"]["text_dim"], seed)
    if scheduler == "unipc":
        sched = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=flow_shift)
    else:
        sched = FlowMatchEulerDiscreteScheduler(shift=flow_shift)
    pipe = WanPipeline(tokenizer=tokenizer, text_encoder=encoder, vae=vae, scheduler=sched,
                       transformer=transformers[0], transformer_2=transformers[1] if len(transformers) > 1 else None,
                       boundary_ratio=spec["boundary_ratio"], expand_timesteps=spec["expand_timesteps"])
    pipe.save_pretrained(folder)
    return folder
