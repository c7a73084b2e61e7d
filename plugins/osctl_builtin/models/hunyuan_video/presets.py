"""Named configurations of the HunyuanVideo transformer, torch-free (recipe checks and plans read them).

The released values are the ``transformer/config.json`` of the diffusers repository on the hub
(hunyuanvideo-community/HunyuanVideo, diffusers' defaults); the sampling facts are ``HunyuanVideoPipeline``'s and
the original repository's: 129 frames at 24 fps, 720x1280 (and 544x960), flow matching with shift 7.0, sigmas
``linspace(1, 0, N + 1)[:-1]``, 50 steps, the guidance scale 6.0 embedded in the model (guidance-distilled: no
classifier-free guidance pass), LLaVA-Llama-3 text of 256 tokens after the template plus CLIP-L's pooled vector.

- ``hunyuan-video``: 20 dual-stream and 40 single-stream blocks, 24 heads x 128 (about 12.8 B parameters);
- ``tiny``: one block of each with the same structure for CPU tests, 32-d text, 16-d pooled text.
"""

from __future__ import annotations

from copy import deepcopy
from typing import Any

#: HunyuanVideoPipeline's embedded guidance and its text length (after the template is cropped)
GUIDANCE = 6.0
TEXT_LENGTH = 256

_BASE: dict[str, Any] = {
    "in_channels": 16, "out_channels": 16, "num_attention_heads": 24, "attention_head_dim": 128, "num_layers": 20,
    "num_single_layers": 40, "num_refiner_layers": 2, "mlp_ratio": 4.0, "patch_size": 2, "patch_size_t": 1,
    "qk_norm": "rms_norm", "guidance_embeds": True, "text_embed_dim": 4096, "pooled_projection_dim": 768,
    "rope_theta": 256.0, "rope_axes_dim": [16, 56, 56], "image_condition_type": None,
}

PRESETS: dict[str, dict[str, Any]] = {
    "hunyuan-video": {"architecture": dict(_BASE), "hub_id": "hunyuanvideo-community/HunyuanVideo",
                      "summary": "HunyuanVideo 13B: 20 dual- and 40 single-stream blocks, 24x128 heads, embedded "
                                 "guidance"},
    "tiny": {"architecture": {**_BASE, "num_attention_heads": 2, "attention_head_dim": 16, "num_layers": 1,
                              "num_single_layers": 1, "num_refiner_layers": 1, "text_embed_dim": 32,
                              "pooled_projection_dim": 16, "rope_axes_dim": [4, 6, 6]},
             "hub_id": None, "summary": "1 dual- and 1 single-stream block, 2x16 heads, 32-d text (tests)"},
}


def preset(name: str) -> dict[str, Any]:
    """A fresh copy of preset ``name``; an unknown name lists the known ones."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; known presets: {', '.join(PRESETS)}.")
    return deepcopy(PRESETS[name])


def check_architecture(arch: dict[str, Any]) -> None:
    """Raise ``ValueError`` (one sentence naming the key) for arguments ``HunyuanVideoTransformer3DModel`` cannot
    build or osctl cannot train."""
    for key in ("num_attention_heads", "attention_head_dim", "num_layers", "in_channels", "text_embed_dim",
                "pooled_projection_dim", "patch_size", "patch_size_t"):
        value = arch.get(key)
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{key}={value!r} must be a positive integer.")
    axes = list(arch.get("rope_axes_dim") or [])
    if len(axes) != 3 or sum(axes) != arch["attention_head_dim"]:
        raise ValueError(f"rope_axes_dim={axes} must be three sizes summing to attention_head_dim "
                         f"({arch['attention_head_dim']}): the rotary table splits each head in time, height, width.")
    if arch.get("image_condition_type") is not None:
        raise ValueError("image_condition_type belongs to HunyuanVideo's image-to-video models, which osctl does not "
                         "train yet; use the text-to-video configuration.")
