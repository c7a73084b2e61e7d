"""osctl: train and sample Open-Sora-Plan v1.3 style text-to-video diffusion models.

This module is the public façade for plugin authors: import ``hookimpl``, ``ComponentSpec`` and the
error classes from here, never from ``osctl.*`` submodules (they may move).
"""

from osctl.errors import ConfigError, DataError, OsctlError, PluginError, UsageError
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
