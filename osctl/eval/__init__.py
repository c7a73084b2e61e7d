"""Evaluation of generated samples.

:mod:`osctl.eval.shapes` measures how well samples of the built-in shapes dataset follow their prompts
(colour, shape and motion of the object) by plain image analysis, with no model.
"""

STILL_THRESHOLD = 0.08
"""Displacement over a clip (fraction of the frame side) below which a shapes object counts as still."""
