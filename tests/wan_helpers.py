"""Tiny Wan pipelines for the Wan family tests: random weights saved in diffusers' released layout.

``ensure_wan_plugins`` and ``wan_registry`` are :mod:`tests.family_helpers`' (every family plugin, installed or
not); ``tiny_pipeline`` writes a ``WanPipeline`` folder
(``model_index.json``, ``transformer/`` [+ ``transformer_2/``], ``vae/``, ``text_encoder/``, ``tokenizer/``,
``scheduler/``) that ``DiffusionPipeline.from_pretrained`` loads and osctl's ``pipeline_path`` reads.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from tests.family_helpers import (
    ensure_family_plugins,
    family_registry,
    perturb,
    subprocess_env,
    tiny_t5_encoder,
)

__all__ = ["ensure_wan_plugins", "subprocess_env", "tiny_pipeline", "tiny_text_encoder", "wan_registry"]

#: the Wan tests need the family plugins (tests.family_helpers); kept under their first names
ensure_wan_plugins = ensure_family_plugins
wan_registry = family_registry


def tiny_text_encoder(d_model: int = 32, seed: int = 0) -> tuple[Any, Any]:
    """A tiny random UMT5 encoder (Wan's encoder class) and a ByT5 tokenizer, deterministic for a seed."""
    return tiny_t5_encoder("UMT5", d_model, seed)


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
    transformers = [perturb(WanTransformer3DModel(**spec["architecture"])) for _ in range(spec["transformers"])]
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
