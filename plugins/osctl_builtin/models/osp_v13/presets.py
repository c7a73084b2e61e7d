"""Named configurations of the OSP v1.3 transformer and the torch-free rules that go with them.

Kept free of torch so that recipe validation (which imports every registration module) can resolve a
preset, check the sparse-block layout and report patch sizes without loading the model code.

- ``2B/122``: the released ``OpenSoraT2V_v1_3-2B/122`` (32 blocks, 24 heads x 96, mT5-XXL text,
  Skiparse k=4 on blocks 2..29); about 2.77 B parameters despite the name.
- ``tiny``: a 4-block, 2 x 24 model (about 0.2 M parameters) with Skiparse k=4 on block 1 (group
  skip) and block 2 (single skip), for CPU demos and tests.
- ``tiny-dense``: the same with dense attention everywhere (a baseline for ``tiny``).
"""

from __future__ import annotations

from copy import deepcopy
from typing import Any

_COMMON: dict[str, Any] = {
    "patch_size": 2,
    "patch_size_t": 1,
    "in_channels": 8,
    "out_channels": 8,
    "activation_fn": "gelu-approximate",
    "attention_bias": True,
    "double_self_attention": False,
    "only_cross_attention": False,
    "upcast_attention": False,
    "norm_elementwise_affine": False,
    "norm_eps": 1e-6,
    "dropout": 0.0,
    "interpolation_scale_t": 1.0,
    "interpolation_scale_h": 1.0,
    "interpolation_scale_w": 1.0,
}

PRESETS: dict[str, dict[str, Any]] = {
    "2B/122": {
        **_COMMON,
        "num_layers": 32,
        "num_attention_heads": 24,
        "attention_head_dim": 96,
        "caption_channels": 4096,
        "cross_attention_dim": 2304,
        "sparse1d": True,
        "sparse_n": 4,
        "sparse_blocks": None,
    },
    "tiny": {
        **_COMMON,
        "num_layers": 4,
        "num_attention_heads": 2,
        "attention_head_dim": 24,
        "caption_channels": 32,
        "cross_attention_dim": 48,
        "sparse1d": True,
        "sparse_n": 4,
        "sparse_blocks": [1, 2],
    },
    "tiny-dense": {
        **_COMMON,
        "num_layers": 4,
        "num_attention_heads": 2,
        "attention_head_dim": 24,
        "caption_channels": 32,
        "cross_attention_dim": 48,
        "sparse1d": False,
        "sparse_n": 1,
        "sparse_blocks": None,
    },
}

PRESET_SUMMARIES: dict[str, str] = {
    "2B/122": "released OpenSoraT2V_v1_3-2B/122: 32 blocks, 24x96 heads, mT5-XXL 4096-d text, Skiparse k=4",
    "tiny": "4 blocks, 2x24 heads, 32-d text, Skiparse k=4 on blocks 1 (group) and 2 (single)",
    "tiny-dense": "tiny with dense attention everywhere",
}


def preset_names() -> list[str]:
    """The known preset names."""
    return list(PRESETS)


def preset_config(name: str) -> dict[str, Any]:
    """A fresh copy of the constructor arguments of preset ``name``; an unknown name lists the known ones."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; known presets: {', '.join(PRESETS)}.")
    return deepcopy(PRESETS[name])


#: the reference's hard-coded Skiparse range: blocks 2..29 (``i > 1 and i < 30`` in ``modeling_opensora.py``)
REFERENCE_SPARSE_RANGE = (2, 30)


def default_sparse_blocks(num_layers: int) -> list[int]:
    """Block indices that are Skiparse blocks when ``sparse1d`` is on and no explicit list is given.

    Exactly the reference rule for every depth: blocks 2..29 that exist (so 2..29 of the released 32,
    with blocks 0, 1, 30, 31 dense). A reference-trained checkpoint of any depth therefore loads with
    the structure it was trained with. Shallow models built here should say what they want with
    ``sparse_blocks`` (the ``tiny`` preset uses ``[1, 2]``: dense first and last block).
    """
    start, stop = REFERENCE_SPARSE_RANGE
    return list(range(start, min(stop, num_layers)))


def resolve_sparse_blocks(num_layers: int, sparse1d: bool, sparse_blocks: list[int] | None) -> list[int]:
    """The sorted indices of the Skiparse blocks; even index = single skip, odd index = group skip.

    ``sparse1d`` is the master switch; ``sparse_blocks`` (explicit indices) replaces the default layout.
    """
    if not sparse1d:
        if sparse_blocks:
            raise ValueError(
                f"sparse_blocks={list(sparse_blocks)} is set but sparse1d is false; set sparse1d: true to use "
                "Skiparse on those blocks, or drop sparse_blocks."
            )
        return []
    if sparse_blocks is None:
        return default_sparse_blocks(num_layers)
    blocks = [int(i) for i in sparse_blocks]
    bad = [i for i in blocks if not 0 <= i < num_layers]
    if bad:
        raise ValueError(
            f"sparse_blocks contains {bad}, outside the valid block indices 0..{num_layers - 1}; "
            "list indices of existing blocks."
        )
    if len(set(blocks)) != len(blocks):
        raise ValueError(f"sparse_blocks={blocks} lists a block twice; list each block index once.")
    return sorted(blocks)


def check_architecture(cfg: dict[str, Any]) -> None:
    """Raise ``ValueError`` (one sentence naming the key) for constructor arguments the model cannot build."""
    heads, head_dim = int(cfg.get("num_attention_heads", 0)), int(cfg.get("attention_head_dim", 0))
    if heads < 1:
        raise ValueError(f"num_attention_heads={heads} must be at least 1.")
    if head_dim < 6 or head_dim % 6:
        raise ValueError(
            f"attention_head_dim={head_dim} must be a positive multiple of 6: RoPE-3D splits each head into "
            "three even parts (t, y, x); use e.g. 24, 48 or 96."
        )
    inner = heads * head_dim
    cross = cfg.get("cross_attention_dim")
    if cross is not None and int(cross) != inner:
        raise ValueError(
            f"cross_attention_dim={cross} must equal num_attention_heads x attention_head_dim = {inner} "
            "(the caption projection outputs that width); drop the key or set it to that value."
        )
    if int(cfg.get("patch_size_t") or 1) != 1:
        raise ValueError(
            f"patch_size_t={cfg.get('patch_size_t')} is not supported: OSP v1.3 patchifies each frame "
            "separately; use patch_size_t: 1."
        )
    if int(cfg.get("patch_size") or 0) < 1:
        raise ValueError(f"patch_size={cfg.get('patch_size')} must be a positive integer (the released model uses 2).")
    sparse_n = int(cfg.get("sparse_n", 1))
    if cfg.get("sparse1d") and sparse_n < 1:
        raise ValueError(f"sparse_n={sparse_n} must be an integer >= 1 (the Skiparse ratio k).")
    if cfg.get("only_cross_attention") or cfg.get("double_self_attention"):
        raise ValueError(
            "only_cross_attention / double_self_attention are not supported by OSP v1.3 (the released model "
            "sets both to false); set them to false."
        )
    if int(cfg.get("caption_channels") or 0) < 1:
        raise ValueError(f"caption_channels={cfg.get('caption_channels')} must be the text-encoder width (e.g. 4096).")
    resolve_sparse_blocks(int(cfg.get("num_layers", 1)), bool(cfg.get("sparse1d")), cfg.get("sparse_blocks"))
    check_abs_pos(cfg.get("abs_pos_embed"), cfg.get("abs_pos_max_size"))
    if cfg.get("rope", True) is False and cfg.get("abs_pos_embed") is None:
        raise ValueError(
            "rope=false leaves the model without any token positions; set abs_pos_embed (e.g. "
            "'learned_interpolated' with abs_pos_max_size) or keep rope on."
        )


ABS_POS_KINDS: tuple[str, ...] = ("learned", "learned_interpolated")
"""``learned``: one vector per token position, the table's top-left corner used for smaller grids;
``learned_interpolated``: the table resampled (trilinear, corners aligned) to every grid, so a vector marks
the same fraction of the frame and of the clip in every bucket."""


def check_abs_pos(kind: Any, max_size: Any) -> None:
    """Raise ``ValueError`` unless the optional absolute position embedding is off or fully specified.

    Why an extension at all: v1.3 positions tokens with RoPE only, which is relative, so the model is
    nearly translation-equivariant. A tiny model trained briefly then cannot place content by the prompt
    (e.g. start a "moving left" object on the right): the shapes demo needs to know where tokens are.
    """
    if kind is None:
        return
    if kind not in ABS_POS_KINDS:
        raise ValueError(f"abs_pos_embed={kind!r} is not known; use {' or '.join(repr(k) for k in ABS_POS_KINDS)} "
                         "or leave it unset (v1.3 has none).")
    sizes = list(max_size) if isinstance(max_size, list | tuple) else None
    if sizes is None or len(sizes) != 3 or not all(isinstance(v, int) and v >= 1 for v in sizes):
        raise ValueError(
            f"abs_pos_max_size={max_size!r} must be three positive integers [frames, rows, columns] counted in "
            f"latent tokens (after patching), e.g. [9, 6, 6], when abs_pos_embed is {kind!r}."
        )
