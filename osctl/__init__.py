"""osctl: train and sample Open-Sora-Plan v1.3 style text-to-video diffusion models.

This module is the public façade for plugin authors: import ``hookimpl``, ``ComponentSpec`` and the
error classes from here, never from ``osctl.*`` submodules (they may move).

``hookimpl``, ``hookspec`` and ``ComponentSpec`` are loaded on first use (they import pluggy and
pydantic), so that commands which need neither, such as ``osctl data bucket`` before it reads the
recipe, start faster.
"""

from typing import TYPE_CHECKING, Any

from osctl.errors import ConfigError, DataError, OsctlError, PluginError, UsageError

if TYPE_CHECKING:
    from osctl.hookspecs import hookimpl, hookspec
    from osctl.registry import ComponentSpec

__version__ = "0.1.0"

__all__ = [
    "ComponentSpec",
    "ConfigError",
    "DataError",
    "OsctlError",
    "PluginError",
    "UsageError",
    "__version__",
    "hookimpl",
    "hookspec",
]

_LAZY = {"hookimpl": "osctl.hookspecs", "hookspec": "osctl.hookspecs", "ComponentSpec": "osctl.registry"}


def __getattr__(name: str) -> Any:
    """Import ``hookimpl``, ``hookspec`` and ``ComponentSpec`` when first asked for (PEP 562)."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'osctl' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
