"""Small real pieces for training tests: a tiny recipe and an in-memory, resumable batch source.

They live in :mod:`osctl.testing` (benchmarks and plugin authors use them too); this module keeps the
names tests import.
"""

from osctl.testing import TINY_RECIPE, SyntheticClips, write_tiny_recipe

__all__ = ["TINY_RECIPE", "SyntheticClips", "write_tiny_recipe"]
