"""Atomic writes that stay inside a chosen output folder.

Every file osctl produces (indexes, reports, manifests) is written under a temporary name in the
destination folder and renamed into place, so a reader never sees a half-written file and a crash
leaves the previous version intact. Each function takes the output folder the user chose (``root``)
and refuses a destination that resolves outside it (``..``, absolute paths, symlinks pointing away).

Typical use::

    from osctl.utils.atomic import atomic_write_bytes, atomic_file

    atomic_write_bytes(out_dir / "index.json", payload, root=out_dir)
    with atomic_file(out_dir / "samples.arrow", root=out_dir) as tmp:   # tmp is a Path to write
        write_somehow(tmp)
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

from osctl.errors import UsageError


def ensure_inside(path: Path, root: Path) -> Path:
    """Return ``path`` resolved, or raise ``UsageError`` when it is not inside ``root``.

    Both sides are resolved (symlinks followed) so that ``root/../x`` or a link that leaves ``root``
    is refused; this is the guard that keeps osctl from writing where the user did not ask.
    """
    root_resolved = Path(root).expanduser().resolve()
    # a relative path means the working directory, as for every other path osctl takes (callers build
    # destinations as ``root / name``; joining a relative one onto root again would nest it twice)
    resolved = Path(path).expanduser().resolve()
    if resolved != root_resolved and not resolved.is_relative_to(root_resolved):
        raise UsageError(
            f"refusing to write {path}: it is outside the output folder {root_resolved}; "
            "choose a destination inside that folder."
        )
    return resolved


_RELEASING: list[threading.Thread] = []


@contextlib.contextmanager
def atomic_file(path: Path, *, root: Path, mode: int = 0o644, release_old_later: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success rename it onto ``path``, else delete it.

    The temporary file lives in the destination folder (same file system, so the rename is atomic)
    and is named ``.<name>.tmp-XXXX``. Parent folders inside ``root`` are created as needed.

    ``release_old_later``: a large file being replaced is freed by the rename itself, which can take
    a tenth of a second; instead it is kept alive by a hidden hard link (``.<name>.old-XXXX``) that a
    background thread deletes while the caller goes on (:func:`finish_releasing` waits for it).
    """
    target = ensure_inside(path, root)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.tmp-", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    old: Path | None = None
    try:
        yield tmp
        os.chmod(tmp, mode)
        old = _link_aside(target) if release_old_later else None
        os.replace(tmp, target)
    except BaseException:
        for leftover in (tmp, old):
            if leftover is not None:
                with contextlib.suppress(OSError):
                    leftover.unlink()
        raise
    if old is not None:
        thread = threading.Thread(target=_unlink_quietly, args=(old,), name="osctl-release-old")
        thread.start()
        _RELEASING.append(thread)


def _link_aside(target: Path) -> Path | None:
    """A second, hidden name for an existing ``target`` (None when there is none or links are not supported)."""
    aside = target.parent / f".{target.name}.old-{secrets.token_hex(4)}"
    try:
        os.link(target, aside)
    except OSError:
        return None
    return aside


def _unlink_quietly(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()


def finish_releasing() -> None:
    """Wait until the files replaced with ``release_old_later`` are deleted (the interpreter also waits at exit)."""
    while _RELEASING:
        _RELEASING.pop().join()


def atomic_write_bytes(path: Path, data: bytes, *, root: Path, fsync: bool = False) -> Path:
    """Write ``data`` to ``path`` atomically (inside ``root``); return the resolved destination."""
    with atomic_file(path, root=root) as tmp, open(tmp, "wb") as handle:
        handle.write(data)
        if fsync:
            handle.flush()
            os.fsync(handle.fileno())
    return ensure_inside(path, root)


def atomic_write_text(path: Path, text: str, *, root: Path, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically (inside ``root``); return the resolved destination."""
    return atomic_write_bytes(path, text.encode(encoding), root=root)


@contextlib.contextmanager
def atomic_dir(path: Path, *, root: Path) -> Iterator[Path]:
    """Yield a temporary folder; on success it replaces ``path`` (an existing folder is swapped out).

    The swap is two renames (old folder aside, new folder in place, old folder removed), so readers
    see either the complete old folder or the complete new one, never a mixture.
    """
    target = ensure_inside(path, root)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield tmp
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
            old.rmdir()
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
