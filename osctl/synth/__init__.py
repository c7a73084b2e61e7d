"""Synthetic datasets that need no download: real media files plus Open-Sora-Plan annotations.

:mod:`osctl.synth.shapes` writes the built-in *shapes* dataset (coloured circles, squares and triangles
moving on plain backgrounds) used by the demo and the end-to-end tests. This package module stays
free of heavy imports so the command line can read the defaults cheaply.
"""

DEFAULT_VIDEOS = 80
"""Default clip count: at least the 69 training colour x shape x motion triples (75 without hold-out)."""
DEFAULT_IMAGES = 30
"""Default image count: about two of each colour x shape pair."""
