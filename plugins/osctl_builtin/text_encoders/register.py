"""Registers the built-in text encoders: ``t5`` (aliases ``mt5``, ``umt5``), ``tiny_t5`` and ``hunyuan_text``.

Kept light: they import torch and transformers only inside their factories.
"""

from __future__ import annotations

from typing import Any

import osctl
from osctl_builtin.text_encoders import hunyuan, t5


@osctl.hookimpl
def register_text_encoders(register: Any) -> None:
    """Register the T5-family encoder, the tiny locally built mT5 and HunyuanVideo's two encoders."""
    register(osctl.ComponentSpec(
        name="t5",
        aliases=("mt5", "umt5"),
        summary="frozen T5/mT5/UMT5 encoder from a HF id or folder (reference: google/mt5-xxl, 512 tokens)",
        factory=t5.build_t5,
        config=t5.T5Config,
    ))
    register(osctl.ComponentSpec(
        name="tiny_t5",
        summary="deterministic random tiny mT5 built locally (demo, tests; no download): byte-level tokenizer, "
                "or word-level over `vocabulary`",
        factory=t5.build_tiny_t5_encoder,
        config=t5.TinyT5Config,
    ))
    register(osctl.ComponentSpec(
        name="hunyuan_text",
        summary="HunyuanVideo's text encoders from its pipeline: LLaVA-Llama-3 states of the templated prompt (256 "
                "tokens) and CLIP-L's pooled vector, packed as one condition",
        factory=hunyuan.build_hunyuan_text,
        config=hunyuan.HunyuanTextConfig,
        metadata={"class_names": ("LlamaModel",), "family": "hunyuan_video"},
    ))
