"""Which autoencoder and text encoder made a cache: plugin name, configuration hash and weights hash.

A cache is only valid for the components that computed it. Their identity is:

- ``name``: the plugin;
- ``config_sha256``: the SHA-256 of the plugin configuration (canonical JSON) without the keys that
  cannot change an output (``cache_dir``) and without values that name weight files or folders
  (those count through their content, so moving the weights does not invalidate the cache);
- ``weights_sha256``: the SHA-256 over the content of the weight files the configuration names (keys
  holding ``path``, ``pretrained``, ``weights``, ``checkpoint``) — a file or folder path, or a Hugging Face id found in the local hub cache — by file name and digest.
  A configuration that names none (random ``preset`` weights made from a seed) has ``"none"``: its
  configuration hash already identifies its weights.

Hashing weights costs about 0.6 s per GB once: every file's size, modification time and digest are
recorded (``files``), and a later check reuses the digest of a file whose size and time did not change,
as the sample index does for annotation files (:func:`osctl.data.index.reuse_recorded_digests`).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel

IGNORED_KEYS = frozenset({"cache_dir"})
"""Configuration keys that change where things are kept, never what a component computes."""
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".json", ".model", ".txt")
"""Files of a weights folder that take part in its identity (weights, configs, tokenizer files)."""
BLOCK = 1 << 20


def component_identity(name: str, config: BaseModel | None, *, recorded: dict[str, Any] | None = None) -> dict[str, Any]:
    """``{"name", "config_sha256", "weights_sha256", "files"}`` of plugin ``name`` with ``config``.

    ``recorded``: an earlier identity of the same component; its file digests are reused for files whose
    size and modification time are unchanged.
    """
    values = config.model_dump(mode="json") if config is not None else {}
    cache_dir = values.get("cache_dir")
    kept: dict[str, Any] = {}
    files: list[Path] = []
    for key, value in sorted(values.items()):
        if key in IGNORED_KEYS:
            continue
        found = _weight_files(value, cache_dir) if isinstance(value, str) and _names_weights(key) else []
        if found:
            files.extend(found)
        else:
            kept[key] = value
    previous = {entry["path"]: entry for entry in (recorded or {}).get("files", [])}
    entries = [_file_entry(path, previous.get(str(path))) for path in sorted(set(files))]
    weights = "none"
    if entries:
        joined = "\n".join(f"{Path(e['path']).name}:{e['sha256']}" for e in sorted(entries, key=lambda e: e["path"]))
        weights = hashlib.sha256(joined.encode()).hexdigest()
    return {"name": name, "config_sha256": _hash_json(kept), "weights_sha256": weights, "files": entries}


def same_component(a: dict[str, Any], b: dict[str, Any]) -> str | None:
    """The first part (``name``, ``config``, ``weights``) in which two identities differ, else None."""
    for key, label in (("name", "name"), ("config_sha256", "config"), ("weights_sha256", "weights")):
        if a.get(key) != b.get(key):
            return label
    return None


def _hash_json(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def _names_weights(key: str) -> bool:
    """Whether configuration key ``key`` names weights (``path``, ``name_or_path``, ``pretrained``, ...)."""
    return "path" in key or key in ("pretrained", "weights", "checkpoint")


def _weight_files(value: str, cache_dir: str | None) -> list[Path]:
    """The weight files ``value`` names: a file, the weight files of a folder, or of a cached hub snapshot."""
    if not value.strip():
        return []
    path = Path(value).expanduser()
    folder: Path | None = None
    if path.is_file():
        return [path.resolve()]
    if path.is_dir():
        folder = path
    elif value.count("/") == 1 and not value.startswith((".", "/", "~")):  # a hub id
        from osctl.hub import cached_snapshot

        folder = cached_snapshot(value, cache_dir)
    if folder is None:
        return []
    out = []
    for root, _, names in os.walk(folder, followlinks=True):
        depth = Path(root).relative_to(folder).parts
        if len(depth) > 2:
            continue
        out.extend(Path(root, n).resolve() for n in names if n.endswith(WEIGHT_SUFFIXES) and not n.startswith("."))
    return out


def _file_entry(path: Path, previous: dict[str, Any] | None) -> dict[str, Any]:
    """``{"path", "size", "mtime_ns", "sha256"}`` of ``path`` (the previous digest when unchanged)."""
    stat = path.stat()
    if previous and previous.get("size") == stat.st_size and previous.get("mtime_ns") == stat.st_mtime_ns:
        digest = str(previous["sha256"])
    else:
        sha = hashlib.sha256()
        with open(path, "rb") as handle:
            while block := handle.read(BLOCK):
                sha.update(block)
        digest = sha.hexdigest()
    return {"path": str(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": digest}
