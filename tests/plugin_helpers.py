"""Helpers to install fake plugin distributions (a ``*.dist-info`` folder) for one test."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"


def install_fake_distribution(
    monkeypatch: pytest.MonkeyPatch, root: Path, dist: str, entry_points: dict[str, str], module_src: Path | None = None
) -> Path:
    """Write ``<dist>-0.1.dist-info`` with an ``osctl`` entry-point group into ``root`` and put it on sys.path."""
    root.mkdir(parents=True, exist_ok=True)
    info = root / f"{dist}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    lines = ["[osctl]"] + [f"{name} = {target}" for name, target in entry_points.items()]
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
    if module_src is not None:
        shutil.copy(module_src, root / module_src.name)
    monkeypatch.syspath_prepend(str(root))
    from osctl.plugin_manager import reset_caches

    reset_caches()
    return root
