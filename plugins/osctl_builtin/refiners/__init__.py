"""Built-in caption refiners: ``none`` (identity), ``template`` (the reference positive template) and
``llm`` (a local causal LM with the reference's caption-refiner chat prompt).

Re-exports the reference prompt strings (defined in the core, :mod:`osctl.text`) and
:func:`build_tiny_causal_lm`, which writes a tiny random chat LM folder for tests and the demo.
Importing this package stays light: torch and transformers are imported only when a refiner is built.
"""

from osctl.text import NEGATIVE_PROMPT, POSITIVE_TEMPLATE
from osctl_builtin.refiners.llm import REFINER_INSTRUCTION, REFINER_SYSTEM_PROMPT, build_tiny_causal_lm

__all__ = [
    "NEGATIVE_PROMPT",
    "POSITIVE_TEMPLATE",
    "REFINER_INSTRUCTION",
    "REFINER_SYSTEM_PROMPT",
    "build_tiny_causal_lm",
]
