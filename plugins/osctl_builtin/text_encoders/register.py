"""Registers the built-in text encoders: ``t5`` (aliases ``mt5``, ``umt5``) and ``tiny_t5``.

Kept light: ``t5`` imports torch and transformers only inside its factories.
"""

from __future__ import annotations

from typing import Any

import osctl
from osctl_builtin.text_encoders import t5


@osctl.hookimpl
def register_text_encoders(register: Any) -> None:
    """Register the T5-family encoder and the tiny locally built mT5."""
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
