"""Named configurations of the CogVideoX transformers, torch-free (recipe checks and plans read them).

The released values are the ``transformer/config.json`` of the diffusers repositories on the hub
(THUDM/CogVideoX-2b, THUDM/CogVideoX-5b, THUDM/CogVideoX1.5-5B); the sampling facts are their model cards'
and ``scheduler/scheduler_config.json``'s: 49 frames at 8 fps and 480x720 (1.0), 81 frames at 16 fps and
768x1360 (1.5), 50 steps, guidance 6.0, T5 v1.1 XXL text of 226 tokens, v-prediction on a zero-terminal-SNR
table with the SNR shifted by 3.0 (1.0 for 1.5).

- ``cogvideox-2b``: 30 blocks, 30 heads x 64, sine-cosine positions (about 1.69 B parameters);
- ``cogvideox-5b``: 42 blocks, 48 heads x 64, 3D rotary positions (about 5.57 B);
- ``cogvideox1.5-5b``: the 5B with a 2x2x2 patch (two latent frames per token) and rotary positions over a
  300x300 base (about 5.57 B);
- ``tiny``, ``tiny-rope``, ``tiny-1.5``: two-block models with the same structure for CPU tests, 32-d text.
"""

from __future__ import annotations

from copy import deepcopy
from typing import Any

#: tokens of the text condition: CogVideoXPipeline's max_sequence_length (T5 padding included)
TEXT_LENGTH = 226

_BASE: dict[str, Any] = {
    "num_attention_heads": 30, "attention_head_dim": 64, "in_channels": 16, "out_channels": 16,
    "flip_sin_to_cos": True, "freq_shift": 0, "time_embed_dim": 512, "ofs_embed_dim": None, "text_embed_dim": 4096,
    "num_layers": 30, "dropout": 0.0, "attention_bias": True, "sample_width": 90, "sample_height": 60,
    "sample_frames": 49, "patch_size": 2, "patch_size_t": None, "temporal_compression_ratio": 4,
    "max_text_seq_length": 226, "activation_fn": "gelu-approximate", "timestep_activation_fn": "silu",
    "norm_elementwise_affine": True, "norm_eps": 1e-5, "spatial_interpolation_scale": 1.875,
    "temporal_interpolation_scale": 1.0, "use_rotary_positional_embeddings": False,
    "use_learned_positional_embeddings": False, "patch_bias": True,
}
_5B = {**_BASE, "num_attention_heads": 48, "num_layers": 42, "use_rotary_positional_embeddings": True}
_15 = {**_5B, "patch_size_t": 2, "patch_bias": False, "sample_width": 300, "sample_height": 300, "sample_frames": 81}
_TINY = {"num_attention_heads": 2, "attention_head_dim": 16, "time_embed_dim": 16, "text_embed_dim": 32,
         "num_layers": 2, "sample_width": 8, "sample_height": 8, "sample_frames": 9}

PRESETS: dict[str, dict[str, Any]] = {
    "cogvideox-2b": {"architecture": dict(_BASE), "hub_id": "THUDM/CogVideoX-2b", "sampler": "CogVideoX",
                     "snr_shift_scale": 3.0,
                     "summary": "CogVideoX 2B: 30 blocks, 30x64 heads, sine-cosine positions, T5-XXL 226-token text"},
    "cogvideox-5b": {"architecture": dict(_5B), "hub_id": "THUDM/CogVideoX-5b", "sampler": "CogVideoXDPM",
                     "snr_shift_scale": 3.0, "summary": "CogVideoX 5B: 42 blocks, 48x64 heads, 3D rotary positions"},
    "cogvideox1.5-5b": {"architecture": dict(_15), "hub_id": "THUDM/CogVideoX1.5-5B", "sampler": "CogVideoXDPM",
                        "snr_shift_scale": 1.0,
                        "summary": "CogVideoX 1.5 5B: the 5B with a 2x2x2 patch (two latent frames per token)"},
    "tiny": {"architecture": {**_BASE, **_TINY}, "hub_id": None, "sampler": "CogVideoX", "snr_shift_scale": 3.0,
             "summary": "2 blocks, 2x16 heads, sine-cosine positions, 32-d text (tests)"},
    "tiny-rope": {"architecture": {**_5B, **_TINY}, "hub_id": None, "sampler": "CogVideoXDPM", "snr_shift_scale": 3.0,
                  "summary": "tiny with 3D rotary positions, as the 5B (tests)"},
    "tiny-1.5": {"architecture": {**_15, **_TINY, "sample_width": 16, "sample_height": 16}, "hub_id": None,
                 "sampler": "CogVideoXDPM", "snr_shift_scale": 1.0,
                 "summary": "tiny with the 1.5 patch 2x2x2 and rotary positions (tests)"},
}


def preset(name: str) -> dict[str, Any]:
    """A fresh copy of preset ``name``; an unknown name lists the known ones."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; known presets: {', '.join(PRESETS)}.")
    return deepcopy(PRESETS[name])


def check_architecture(arch: dict[str, Any]) -> None:
    """Raise ``ValueError`` (one sentence naming the key) for arguments ``CogVideoXTransformer3DModel`` cannot build
    or osctl cannot train."""
    for key in ("num_attention_heads", "attention_head_dim", "num_layers", "in_channels", "text_embed_dim",
                "time_embed_dim", "patch_size"):
        value = arch.get(key)
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{key}={value!r} must be a positive integer.")
    if arch.get("use_rotary_positional_embeddings") and arch["attention_head_dim"] % 8:
        raise ValueError(f"attention_head_dim={arch['attention_head_dim']} must be a multiple of 8 with rotary "
                         "positions (3D rotary tables split each head in time, height and width); use e.g. 16 or 64.")
    if arch.get("ofs_embed_dim"):
        raise ValueError("ofs_embed_dim belongs to CogVideoX 1.5's image-to-video model, which osctl does not train "
                         "yet; use a text-to-video configuration.")
    if arch.get("in_channels") != (arch.get("out_channels") or arch.get("in_channels")):
        raise ValueError(f"in_channels={arch.get('in_channels')} differs from out_channels={arch.get('out_channels')}: "
                         "that is an image-to-video model (image latents concatenated); use a text-to-video one.")
