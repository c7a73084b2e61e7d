"""The two text-only refiners: ``none`` (prompts unchanged) and ``template`` (reference §7.4).

The reference sampler wraps every (optionally LLM-refined) prompt in a fixed positive template,
``"\\n    high quality, high aesthetic, {}\\n    "``; the newlines and indentation are kept because
they are tokens the model saw. ``template`` does exactly that.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import Field, field_validator

from osctl.registry import ComponentConfig, EmptyConfig
from osctl.text import POSITIVE_TEMPLATE


class IdentityRefiner:
    """Returns the prompts unchanged (the ``none`` refiner, the default)."""

    def __call__(self, prompts: Sequence[str]) -> list[str]:
        """The prompts as a new list."""
        return list(prompts)

    def __repr__(self) -> str:
        return "IdentityRefiner()"


class TemplateConfig(ComponentConfig):
    """Options of the ``template`` refiner."""

    template: str = Field(POSITIVE_TEMPLATE, description="the prompt replaces '{}' (default: the reference template)")

    @field_validator("template")
    @classmethod
    def _one_slot(cls, value: str) -> str:
        try:
            filled = value.format("\x00")
        except (IndexError, KeyError, ValueError) as exc:
            raise ValueError(f"must be a str.format template with one '{{}}' slot ({exc})") from None
        if filled.count("\x00") != 1:
            raise ValueError("must contain exactly one '{}' slot for the prompt")
        return value


class TemplateRefiner:
    """Wraps each prompt in a template (by default the reference's :data:`POSITIVE_TEMPLATE`)."""

    def __init__(self, template: str = POSITIVE_TEMPLATE) -> None:
        self.template = template

    def __call__(self, prompts: Sequence[str]) -> list[str]:
        """``template.format(prompt)`` for each prompt."""
        return [self.template.format(prompt) for prompt in prompts]

    def __repr__(self) -> str:
        return f"TemplateRefiner(template={self.template!r})"


def build_none(config: EmptyConfig, **_: Any) -> IdentityRefiner:
    """Factory of ``none``."""
    return IdentityRefiner()


def build_template(config: TemplateConfig, **_: Any) -> TemplateRefiner:
    """Factory of ``template``."""
    return TemplateRefiner(config.template)
