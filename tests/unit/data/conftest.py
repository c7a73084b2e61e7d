"""Fixtures of the data tests (plain helpers live in ``tests.unit.data.data_helpers``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest


@pytest.fixture
def make_data(tmp_path: Path) -> Callable[..., Path]:
    """``make_data({"a.json": records, ...}, root=...)`` -> data.txt listing each file with the media root."""

    from tests.unit.data.data_helpers import write_annotations

    def make(files: dict[str, list[Any]], root: Path | None = None) -> Path:
        media = root or tmp_path / "media"
        media.mkdir(parents=True, exist_ok=True)
        lines = []
        for name, records in files.items():
            write_annotations(tmp_path / "anno", records, name)
            lines.append(f"{media},anno/{name}")
        data_txt = tmp_path / "data.txt"
        data_txt.write_text("\n".join(lines) + "\n")
        return data_txt

    return make
