"""The fingerprint of a sample index: what it was built from, to tell when it is stale.

The fingerprint (stored in the index's metadata, :mod:`osctl.data.index`) records data.txt and each
annotation file (path, size, times, inode, SHA-256) and the hash of the settings that shaped the
index. :func:`file_changes` compares a recorded file with the file as it is now;
:func:`unchanged_since` decides whether a recorded digest may be reused without hashing the file again.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from osctl.data.table import LoadedAnnotation

if TYPE_CHECKING:
    from osctl.data.bucket import BucketSettings


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of the file at ``path``."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def hash_json(value: Any) -> str:
    """Hex SHA-256 of ``value`` as canonical JSON (sorted keys, no spaces)."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, separators=(",", ":"), default=str).encode()).hexdigest()


def build_fingerprint(data_txt: Path, loaded: list[LoadedAnnotation], settings: BucketSettings) -> dict[str, Any]:
    """Fingerprint of everything an index depends on: data.txt, each annotation file, the shaping settings.

    Waits for annotation digests still being computed in the background (:mod:`osctl.data.checksum`).
    """
    data_txt = Path(data_txt)
    stat = data_txt.stat()
    shaping = settings.shaping_fields()
    files = [{
        "file_id": item.source.file_id, "line": item.source.line, "root": item.source.root,
        "path": str(item.source.annotation), "format": item.source.format, "size": item.size,
        "mtime_ns": item.mtime_ns, "ctime_ns": item.ctime_ns, "inode": item.inode, "device": item.device,
        "stat_ns": item.stat_ns, "sha256": item.sha256, "records": item.n,
    } for item in loaded]
    fingerprint = {
        "data_txt": {"path": str(data_txt.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
                     "sha256": sha256_file(data_txt)},
        "annotations": files,
        "settings_sha256": hash_json(shaping),
    }
    fingerprint["sha256"] = hash_json({"data_txt": fingerprint["data_txt"]["sha256"],
                                        "files": [f["sha256"] for f in files], "settings": fingerprint["settings_sha256"]})
    return fingerprint


RACY_NS = 2_000_000_000
"""A recorded digest is reused only for a file whose last change (ctime) was at least this long
before its size and times were taken: a file written again within the same timestamp tick as an
earlier write keeps its times, so a change that close to the recording could go unseen."""


def unchanged_since(item: LoadedAnnotation, entry: dict[str, Any]) -> bool:
    """Whether ``entry`` (the same path in an index's fingerprint) describes ``item``'s file, unchanged since then
    (see :func:`osctl.data.index.reuse_recorded_digests`)."""
    same = (entry.get("size") == item.size and entry.get("mtime_ns") == item.mtime_ns
            and entry.get("ctime_ns") == item.ctime_ns and entry.get("inode") == item.inode
            and entry.get("device") == item.device)
    digest, stat_ns = entry.get("sha256"), entry.get("stat_ns")
    return (same and isinstance(digest, str) and len(digest) == 64
            and isinstance(stat_ns, int) and item.ctime_ns <= stat_ns - RACY_NS)


def file_changes(item: dict[str, Any], verify_content: bool) -> list[str]:
    """How the annotation file an index's fingerprint ``item`` describes changed since (empty: it did not).

    Compared by size and modification time; a file whose time changed but whose size did not is hashed
    before being called changed (``verify_content``: always hashed)."""
    path = Path(item["path"])
    try:
        stat = os.stat(path)
    except OSError:
        return [f"annotation file {path} no longer exists"]
    if stat.st_size != item.get("size"):
        return [f"annotation file {path} changed (size {item.get('size')} -> {stat.st_size} bytes)"]
    touched = stat.st_mtime_ns != item.get("mtime_ns") or verify_content
    if touched and sha256_file(path) != item.get("sha256"):
        return [f"annotation file {path} changed (same size, different content)"]
    return []
