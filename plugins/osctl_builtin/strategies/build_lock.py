"""Stale build locks of torch's JIT extensions (DeepSpeed's CPU Adam), found before DeepSpeed waits on them.

``torch.utils.cpp_extension`` guards each extension's build folder with a ``lock`` file
(``FileBaton``): the builder creates it with ``O_CREAT | O_EXCL``, keeps it open while compiling and
deletes it when done; every other process polls until the file is gone, forever and silently. A build
killed half-way (Ctrl-C, OOM, a killed job) leaves the file behind, and every later run then hangs.

The file records no owner, but its builder keeps it open, so on Linux a live holder on this machine shows
in ``/proc/<pid>/fd``. :func:`clear_stale_lock` removes a lock nobody on this machine holds, with a warning
naming it. A run spanning several machines may share the folder (a network home): a lock held on another
machine is invisible here, so there a lock is removed only once it is older than :data:`REMOTE_GRACE_S`
(far longer than a build); a younger one is left to torch with a warning that says what to delete if no
build is running anywhere.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

log = logging.getLogger("osctl.strategies.deepspeed")

#: a lock no process on this machine holds is taken for another machine's build until it is this old
REMOTE_GRACE_S = 600.0


def extension_lock(name: str) -> Path:
    """The ``lock`` file torch uses while building the JIT extension ``name`` (``TORCH_EXTENSIONS_DIR`` aware)."""
    from torch.utils.cpp_extension import _get_build_directory

    return Path(_get_build_directory(name, verbose=False)) / "lock"


def lock_holders(lock: Path) -> list[int] | None:
    """Ids of the processes on this machine that have ``lock`` open; None where ``/proc`` cannot tell."""
    proc = Path("/proc")
    if not (proc / "self" / "fd").is_dir():
        return None
    try:
        target = os.path.realpath(lock)
    except OSError:
        return None
    holders = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fds = list((entry / "fd").iterdir())
        except OSError:  # gone, or another user's process (its builds use its own cache folder)
            continue
        for fd in fds:
            try:
                if os.readlink(fd) == target:
                    holders.append(int(entry.name))
                    break
            except OSError:
                continue
    return holders


def clear_stale_lock(lock: Path, *, single_machine: bool, now: float | None = None) -> str | None:
    """Remove ``lock`` when no process holds it (see the module docstring); returns what was done, or None.

    The outcome is also logged as a warning: removing a lock, or leaving one that may hang the build.
    """
    try:
        age = (time.time() if now is None else now) - lock.stat().st_mtime
    except FileNotFoundError:
        return None
    holders = lock_holders(lock)
    if holders is None or holders:
        return None  # cannot tell, or a build is running here: torch waits for it as usual
    if single_machine or age > REMOTE_GRACE_S:
        try:
            lock.unlink()
        except FileNotFoundError:  # another rank of this run removed it first
            return None
        message = (f"removed the stale build lock {lock} (left by an interrupted build {age:.0f} s ago; no process "
                   "holds it); the extension is built again now")
    else:
        message = (f"the build lock {lock} is held by no process on this machine; another machine of this run may "
                   "be building it, so DeepSpeed waits for it — if no build is running anywhere, delete that file")
    log.warning("warning: %s", message)
    return message
