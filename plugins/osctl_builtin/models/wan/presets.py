"""Named configurations of the Wan transformers, torch-free (recipe checks and plans read them).

The released values are the ``transformer/config.json`` (and ``model_index.json``) of the diffusers
repositories on the hub; the sampling facts are the original repositories' (Wan2.1 ``wan/configs``,
Wan2.2 ``wan/configs``): frames, fps, sizes, steps, the sampler's flow shift and guidance.

- ``wan2.1-t2v-1.3b``: 30 blocks, 12 heads x 128, FFN 8960 (about 1.42 B parameters); 480p.
- ``wan2.1-t2v-14b``: 40 blocks, 40 heads x 128, FFN 13824 (about 14.3 B); 480p and 720p.
- ``wan2.2-t2v-a14b``: two 14B experts (``transformer``: high noise, ``transformer_2``: low noise) switched
  at ``boundary_ratio`` 0.875 of the 1000 training timesteps (about 28.6 B in all, 14.3 B per step).
- ``wan2.2-ti2v-5b``: 30 blocks, 24 heads x 128, FFN 14336, 48 latent channels (the Wan 2.2 VAE, 16x
  spatial compression) (about 5.0 B).
- ``tiny``, ``tiny-a14b``, ``tiny-ti2v``: two-block models with the same structure (about 25 k parameters
  per transformer) for CPU tests, with 32-d text (``tiny_t5``'s width).
"""

from __future__ import annotations

from copy import deepcopy
from typing import Any

#: the training timesteps the boundary ratio is a fraction of (every Wan scheduler has 1000)
NUM_TRAIN_TIMESTEPS = 1000
#: tokens of the text condition: WanPipeline pads (with zeros past the prompt) to max_sequence_length 512
TEXT_LENGTH = 512
#: Wan's default negative prompt (the original ``sample_neg_prompt``)
NEGATIVE_PROMPT = ("色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，"
                   "JPEG压缩残留，丑陋的，残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，"
                   "手指融合，静止不动的画面，杂乱的背景，三条腿，背景人很多，倒着走")

_BASE: dict[str, Any] = {
    "patch_size": [1, 2, 2],
    "attention_head_dim": 128,
    "in_channels": 16,
    "out_channels": 16,
    "text_dim": 4096,
    "freq_dim": 256,
    "cross_attn_norm": True,
    "qk_norm": "rms_norm_across_heads",
    "eps": 1e-6,
    "image_dim": None,
    "added_kv_proj_dim": None,
    "rope_max_seq_len": 1024,
    "pos_embed_seq_len": None,
}
_14B = {**_BASE, "num_attention_heads": 40, "ffn_dim": 13824, "num_layers": 40}
_TINY = {**_BASE, "num_attention_heads": 2, "attention_head_dim": 12, "ffn_dim": 48, "num_layers": 2,
         "text_dim": 32, "freq_dim": 32, "rope_max_seq_len": 64}

PRESETS: dict[str, dict[str, Any]] = {
    "wan2.1-t2v-1.3b": {
        "architecture": {**_BASE, "num_attention_heads": 12, "ffn_dim": 8960, "num_layers": 30},
        "transformers": 1, "boundary_ratio": None, "expand_timesteps": False,
        "hub_id": "Wan-AI/Wan2.1-T2V-1.3B-Diffusers",
        "summary": "Wan 2.1 T2V 1.3B: 30 blocks, 12x128 heads, UMT5 4096-d text, 16 latent channels",
    },
    "wan2.1-t2v-14b": {
        "architecture": dict(_14B), "transformers": 1, "boundary_ratio": None, "expand_timesteps": False,
        "hub_id": "Wan-AI/Wan2.1-T2V-14B-Diffusers",
        "summary": "Wan 2.1 T2V 14B: 40 blocks, 40x128 heads",
    },
    "wan2.2-t2v-a14b": {
        "architecture": dict(_14B), "transformers": 2, "boundary_ratio": 0.875, "expand_timesteps": False,
        "hub_id": "Wan-AI/Wan2.2-T2V-A14B-Diffusers",
        "summary": "Wan 2.2 T2V A14B: two 14B experts (high noise, low noise) switched at boundary_ratio 0.875",
    },
    "wan2.2-ti2v-5b": {
        "architecture": {**_BASE, "num_attention_heads": 24, "ffn_dim": 14336, "num_layers": 30, "in_channels": 48,
                         "out_channels": 48},
        "transformers": 1, "boundary_ratio": None, "expand_timesteps": True,
        "hub_id": "Wan-AI/Wan2.2-TI2V-5B-Diffusers",
        "summary": "Wan 2.2 TI2V 5B: 30 blocks, 24x128 heads, 48 latent channels (Wan 2.2 VAE)",
    },
    "tiny": {
        "architecture": dict(_TINY), "transformers": 1, "boundary_ratio": None, "expand_timesteps": False,
        "hub_id": None, "summary": "2 blocks, 2x12 heads, 32-d text, 16 latent channels (tests)",
    },
    "tiny-a14b": {
        "architecture": dict(_TINY), "transformers": 2, "boundary_ratio": 0.875, "expand_timesteps": False,
        "hub_id": None, "summary": "two tiny experts switched at boundary_ratio 0.875 (tests)",
    },
    "tiny-ti2v": {
        "architecture": {**_TINY, "in_channels": 48, "out_channels": 48}, "transformers": 1, "boundary_ratio": None,
        "expand_timesteps": True, "hub_id": None, "summary": "tiny with 48 latent channels (Wan 2.2 VAE; tests)",
    },
}


def preset_names() -> list[str]:
    """The known preset names."""
    return list(PRESETS)


def preset(name: str) -> dict[str, Any]:
    """A fresh copy of preset ``name``; an unknown name lists the known ones."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; known presets: {', '.join(PRESETS)}.")
    return deepcopy(PRESETS[name])


def check_architecture(arch: dict[str, Any]) -> None:
    """Raise ``ValueError`` (one sentence naming the key) for constructor arguments WanTransformer3DModel cannot
    build or run."""
    head_dim = int(arch.get("attention_head_dim") or 0)
    if head_dim < 6 or head_dim % 2:
        raise ValueError(f"attention_head_dim={head_dim} must be an even number of at least 6: the 3D rotary "
                         "embedding splits each head into time, height and width parts; use e.g. 12 or 128.")
    patch = arch.get("patch_size")
    if not (isinstance(patch, list | tuple) and len(patch) == 3 and all(isinstance(p, int) and p >= 1 for p in patch)):
        raise ValueError(f"patch_size={patch!r} must be three positive integers [t, h, w] (released: [1, 2, 2]).")
    if patch[1] != patch[2]:
        raise ValueError(f"patch_size={list(patch)} must patch height and width alike (osctl's latent geometry has one "
                         "spatial patch size).")
    for key in ("num_attention_heads", "num_layers", "in_channels", "out_channels", "text_dim", "ffn_dim", "freq_dim"):
        value = arch.get(key)
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{key}={value!r} must be a positive integer.")
    if arch.get("image_dim") is not None or arch.get("added_kv_proj_dim") is not None:
        raise ValueError("image_dim / added_kv_proj_dim belong to Wan's image-to-video models, which osctl does not "
                         "train yet; use a text-to-video configuration.")
