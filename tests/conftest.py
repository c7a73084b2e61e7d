"""Test-session setup: no network, pinned terminal width, fixtures shared by every test folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Any accidental hub call fails at once instead of hanging or downloading.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["DIFFUSERS_OFFLINE"] = "1"
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ["COLUMNS"] = "200"
os.environ["NO_COLOR"] = "1"
os.environ.pop("OSCTL_DEBUG", None)

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED = REPO_ROOT.parent / "shared"


VENDORED_GOLDEN = REPO_ROOT / "tests" / "fixtures" / "golden"


def golden_dir() -> Path:
    """The reference fixtures: ``$OSCTL_GOLDEN``, else ``../shared/golden``, else the vendored copy."""
    if os.environ.get("OSCTL_GOLDEN"):
        return Path(os.environ["OSCTL_GOLDEN"])
    shared = SHARED / "golden"
    return shared if shared.is_dir() else VENDORED_GOLDEN


@pytest.fixture(scope="session")
def golden() -> Path:
    """Path of the golden fixtures; tests that need them fail loudly if the folder is missing."""
    path = golden_dir()
    if not path.is_dir():
        pytest.fail(f"golden fixtures not found at {path}; set OSCTL_GOLDEN to their folder")
    return path


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Plugins filters and HOME point at test-private values so a developer's setup cannot leak in."""
    for name in ("OSCTL_LOAD_PLUGINS", "OSCTL_DISABLE_PLUGINS", "OSCTL_TRACE_PLUGINS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))


@pytest.fixture
def hello_plugin(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """Install the out-of-tree ``osctl_hello`` plugin as a fake distribution for one test."""
    from osctl.plugin_manager import reset_caches
    from tests.plugin_helpers import FIXTURES, install_fake_distribution

    root = install_fake_distribution(
        monkeypatch, tmp_path / "site", "osctl-hello", {"osctl_hello": "osctl_hello"},
        FIXTURES / "osctl_hello" / "osctl_hello.py",
    )
    yield root
    reset_caches()
