"""Synthetic datasets that need no download: real media files plus Open-Sora-Plan annotations.

:mod:`osctl.synth.shapes` writes the built-in *shapes* dataset (coloured circles, squares and triangles
moving on plain backgrounds) used by the demo and the end-to-end tests. This package module stays
free of heavy imports so the command line can read the defaults cheaply.
"""

DEFAULT_VIDEOS = 80
"""Default clip count: at least the 69 training colour x shape x motion triples (75 without hold-out)."""
DEFAULT_IMAGES = 30
"""Default image count: about two of each colour x shape pair."""
DEFAULT_LANE_SPREAD = 0.0
"""How far from the middle of the frame a clip's shape may be, as a fraction of the free range: 0 puts
every moving shape on the centre line (a horizontal mover crosses at mid-height) and every still one in
the middle, 1 anywhere (images always place their shape anywhere). Why 0: the prompt names the direction
but not the lane, so a random lane is noise the model can never predict from the prompt, and the demo's
tiny model did not learn the direction words within its CPU budget with one (the runs that decided it:
benchmarks/README.md, "Defaults measured")."""
