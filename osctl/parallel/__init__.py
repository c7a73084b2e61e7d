"""Generic parallelism building blocks (no model knowledge).

``osctl.parallel.ulysses`` holds the autograd-aware all-to-all, split and gather primitives that
Ulysses-style sequence parallelism is built from; models call them from inside their attention.
"""
