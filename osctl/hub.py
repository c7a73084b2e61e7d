"""The Hugging Face hub, kept at arm's length: offline unless asked, and where its local cache lives.

osctl never downloads at run time unless the user asks for it: :func:`apply_network_policy` (called by
the command line before anything imports ``huggingface_hub``) sets ``HF_HUB_OFFLINE`` and
``TRANSFORMERS_OFFLINE`` unless ``--online`` or ``OSCTL_ONLINE=1`` is given. Every hub lookup in osctl
honours those variables, so a model that is not in the local cache is a clear error at once (naming
the cache folder that was searched and the download command) instead of minutes of retries.

The cache layout is huggingface_hub's: ``<hub cache>/models--ORG--NAME/{refs/main, snapshots/<hash>/}``
with the hub cache at ``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else ``$XDG_CACHE_HOME/huggingface/hub``,
else ``~/.cache/huggingface/hub``. It is computed here from the environment, without importing
``huggingface_hub`` (a plan must not pay for it).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from osctl.availability import MissingWeights

ONLINE_ENV = "OSCTL_ONLINE"
"""Set to 1 to let osctl look models up on the hub (the same as ``osctl --online``)."""
OFFLINE_ENVS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
"""The variables huggingface_hub and transformers read; either one set to a true value means offline."""
_TRUE = {"1", "true", "yes", "on"}


def _is_true(value: str | None) -> bool:
    return (value or "").strip().lower() in _TRUE


def hub_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` or ``TRANSFORMERS_OFFLINE`` asks for local files only."""
    return any(_is_true(os.environ.get(name)) for name in OFFLINE_ENVS)


def online_requested(online_flag: bool = False) -> bool:
    """True when the user allowed hub lookups: ``--online`` or ``OSCTL_ONLINE=1``."""
    return online_flag or _is_true(os.environ.get(ONLINE_ENV))


def apply_network_policy(online_flag: bool = False) -> bool:
    """Go offline unless hub lookups were asked for; returns True when osctl runs offline.

    Offline means ``HF_HUB_OFFLINE=1`` and ``TRANSFORMERS_OFFLINE=1`` in the environment (inherited by
    worker processes). huggingface_hub reads the variable once, at import: when it is imported already
    its constant is set too. An ``HF_HUB_OFFLINE=1`` the user set stays in force even with ``--online``.
    """
    if online_requested(online_flag):
        return hub_offline()
    for name in OFFLINE_ENVS:
        os.environ[name] = "1"
    constants = sys.modules.get("huggingface_hub.constants")
    if constants is not None:
        constants.HF_HUB_OFFLINE = True
    return True


def hub_cache_dir(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The hub cache folder: ``cache_dir`` when given, else huggingface_hub's default (see the module docstring)."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(name):
            return Path(os.path.expandvars(os.environ[name])).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "huggingface")
    return Path(os.path.expandvars(home)).expanduser() / "hub"


def repo_cache_folder(repo_id: str, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Where the hub cache keeps model ``repo_id``: ``<hub cache>/models--ORG--NAME``."""
    return hub_cache_dir(cache_dir) / ("models--" + repo_id.replace("/", "--"))


def cached_snapshot(repo_id: str, cache_dir: str | os.PathLike[str] | None = None, *,
                    markers: tuple[str, ...] = ("config.json",)) -> Path | None:
    """The cached snapshot folder of ``repo_id`` holding one of the ``markers`` files (``refs/main`` first, then
    the newest), else None."""
    folder = repo_cache_folder(repo_id, cache_dir)
    snapshots = folder / "snapshots"
    ref = folder / "refs" / "main"
    candidates: list[Path] = []
    try:
        if ref.is_file():
            candidates.append(snapshots / ref.read_text().strip())
        if snapshots.is_dir():
            candidates += sorted(snapshots.iterdir(), key=lambda p: p.stat().st_mtime, reverse=True)
    except OSError:
        return None
    return next((c for c in candidates if any((c / marker).is_file() for marker in markers)), None)


def download_command(repo_id: str, cache_dir: str | os.PathLike[str] | None = None) -> str:
    """The shell command that puts ``repo_id`` into the cache osctl searches."""
    where = f" --cache-dir {cache_dir}" if cache_dir is not None else ""
    return f"hf download {repo_id}{where}"


def missing_from_cache(key: str, repo_id: str, cache_dir: str | os.PathLike[str] | None = None, *,
                       partial: bool = False) -> MissingWeights:
    """The :class:`MissingWeights` of hub model ``repo_id`` (recipe key ``key``) that is not in the local cache.

    ``partial``: the cache holds the model's configuration but not its weights.
    """
    folder = repo_cache_folder(repo_id, cache_dir)
    where = "has no weights" if partial else "is not"
    return MissingWeights(
        key=key, detail=f"{repo_id!r} is not available offline: it {where} in the Hugging Face cache at {folder}",
        expected=str(folder),
        fetch=f"download it with `{download_command(repo_id, cache_dir)}` (or run `osctl --online ...` to let "
              "osctl download it)",
    )
