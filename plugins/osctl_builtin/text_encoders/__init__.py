"""Built-in text encoders: T5-family encoders from the hub or a folder, and a tiny local mT5.

``build_tiny_t5(folder, seed=..., d_model=...)`` (in :mod:`osctl_builtin.text_encoders.t5`) writes a
tiny deterministic encoder folder for tests and the demo.
"""
