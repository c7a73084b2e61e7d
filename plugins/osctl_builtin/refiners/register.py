"""Registers the built-in caption refiners: ``none`` (default), ``template`` and ``llm``.

Kept light: ``llm`` imports torch and transformers only inside its factory.
"""

from __future__ import annotations

from typing import Any

import osctl
from osctl.registry import EmptyConfig
from osctl_builtin.refiners import basic, llm


@osctl.hookimpl
def register_refiners(register: Any) -> None:
    """Register the identity, template and local-LLM refiners."""
    register(osctl.ComponentSpec(
        name="none", aliases=("identity",), summary="prompts unchanged (default)",
        factory=basic.build_none, config=EmptyConfig,
    ))
    register(osctl.ComponentSpec(
        name="template", summary="wrap each prompt in the reference template 'high quality, high aesthetic, {}'",
        factory=basic.build_template, config=basic.TemplateConfig,
    ))
    register(osctl.ComponentSpec(
        name="llm", aliases=("caption_refiner",),
        summary="rewrite prompts with a local chat LM (reference caption refiner; greedy, 512 new tokens)",
        factory=llm.build_llm, config=llm.LLMRefinerConfig,
    ))
