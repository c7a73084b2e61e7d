"""Precision names (as written in recipes and flags) to torch dtypes, in one place."""

from __future__ import annotations

from typing import Any

from osctl.errors import ConfigError

_NAMES = {
    "fp32": "float32", "float32": "float32", "float": "float32",
    "bf16": "bfloat16", "bfloat16": "bfloat16",
    "fp16": "float16", "float16": "float16", "half": "float16",
    "fp64": "float64", "float64": "float64",
}


def torch_dtype(value: Any, what: str = "dtype") -> Any:
    """A ``torch.dtype`` from a dtype or a name such as ``bf16``/``fp32``/``torch.float16`` (None stays None).

    ``what`` names the setting in the error, e.g. ``autoencoder dtype``.
    """
    import torch

    if value is None or isinstance(value, torch.dtype):
        return value
    key = str(value).lower().removeprefix("torch.")
    if key not in _NAMES:
        raise ConfigError(f"{what} {value!r} is unknown; use fp32, bf16 or fp16.")
    return getattr(torch, _NAMES[key])


def component_dtype(configured: Any, runtime: Any, what: str = "dtype") -> Any:
    """The dtype a component loads its weights in: its recipe's ``dtype``, else the command's, else float32.

    ``configured`` is the component's own setting (e.g. ``text_encoder.dtype``), ``runtime`` the dtype the
    command passed its factory; ``what`` names the setting in the error.
    """
    import torch

    return torch_dtype(configured, what) or torch_dtype(runtime, what) or torch.float32
