"""Named configurations of the LTX-Video transformer, torch-free (recipe checks and plans read them).

The released values are the ``transformer/config.json`` of the diffusers repositories on the hub
(Lightricks/LTX-Video, 0.9.0 to 0.9.6 share this 2B transformer); the sampling facts are ``LTXPipeline``'s and the
model card's: frames 8k+1, sizes multiples of 32 (best 768x512 at 24-25 fps, 121 frames), flow matching with a
token-dependent shift (``FlowMatchEulerDiscreteScheduler`` with dynamic shifting, sigmas ``linspace(1, 1/N,
N)``), guidance 3.0, 50 steps, T5 v1.1 XXL text of 128 tokens.

- ``ltx-video-2b``: 28 blocks, 32 heads x 64, 128 latent channels, patch 1x1x1 (about 1.92 B parameters);
- ``tiny``: two blocks with the same structure for CPU tests, 32-d text.
"""

from __future__ import annotations

from copy import deepcopy
from typing import Any

#: LTXPipeline's defaults: the frame rate its rotary positions assume and its text length
FRAME_RATE = 25.0
TEXT_LENGTH = 128

_BASE: dict[str, Any] = {
    "in_channels": 128, "out_channels": 128, "patch_size": 1, "patch_size_t": 1, "num_attention_heads": 32,
    "attention_head_dim": 64, "cross_attention_dim": 2048, "num_layers": 28, "activation_fn": "gelu-approximate",
    "qk_norm": "rms_norm_across_heads", "norm_elementwise_affine": False, "norm_eps": 1e-6, "caption_channels": 4096,
    "attention_bias": True, "attention_out_bias": True,
}

PRESETS: dict[str, dict[str, Any]] = {
    "ltx-video-2b": {"architecture": dict(_BASE), "hub_id": "Lightricks/LTX-Video",
                     "summary": "LTX-Video 0.9.x 2B: 28 blocks, 32x64 heads, 128 latent channels, patch 1x1x1"},
    "tiny": {"architecture": {**_BASE, "num_attention_heads": 2, "attention_head_dim": 16, "cross_attention_dim": 32,
                              "num_layers": 2, "caption_channels": 32},
             "hub_id": None, "summary": "2 blocks, 2x16 heads, 128 latent channels, 32-d text (tests)"},
}


def preset(name: str) -> dict[str, Any]:
    """A fresh copy of preset ``name``; an unknown name lists the known ones."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; known presets: {', '.join(PRESETS)}.")
    return deepcopy(PRESETS[name])


def check_architecture(arch: dict[str, Any]) -> None:
    """Raise ``ValueError`` (one sentence naming the key) for arguments ``LTXVideoTransformer3DModel`` cannot build."""
    for key in ("num_attention_heads", "attention_head_dim", "num_layers", "in_channels", "caption_channels",
                "cross_attention_dim", "patch_size", "patch_size_t"):
        value = arch.get(key)
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{key}={value!r} must be a positive integer.")
    inner = arch["num_attention_heads"] * arch["attention_head_dim"]
    if arch["cross_attention_dim"] != inner:
        raise ValueError(f"cross_attention_dim={arch['cross_attention_dim']} must equal num_attention_heads x "
                         f"attention_head_dim ({inner}): the text is projected to the model's width.")
