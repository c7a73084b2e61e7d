"""The `osctl` package façade: plugin-author names load on first use, the rest of osctl does not pay for them."""

from __future__ import annotations

import subprocess
import sys

import pytest


def test_facade_names_resolve_lazily() -> None:
    import osctl
    from osctl import ComponentSpec, hookimpl, hookspec
    from osctl.hookspecs import hookimpl as real_hookimpl
    from osctl.registry import ComponentSpec as RealSpec

    assert ComponentSpec is RealSpec and osctl.ComponentSpec is RealSpec
    assert hookimpl is real_hookimpl and callable(hookspec)
    assert set(osctl.__all__) >= {"ComponentSpec", "hookimpl", "hookspec", "DataError", "__version__"}
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        osctl.nope  # noqa: B018


def test_importing_osctl_or_its_cli_loads_neither_pluggy_nor_the_registry() -> None:
    code = ("import sys, osctl.cli; "
            "print(sorted(m for m in ('pluggy', 'osctl.registry', 'osctl.hookspecs', 'numpy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
