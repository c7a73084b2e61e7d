"""Check, before any work, that an output folder the user chose can receive the command's files.

A training run that builds its index and its models for minutes and then fails on its first write
(the folder is a file, on a read-only disk, not writable by this user) wastes that time; commands call
:func:`check_output_dir` first, and the failure is one sentence naming the key and the folder.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from osctl.errors import UsageError, blocking_file, writing


def check_output_dir(path: Path | str, *, key: str, create: bool = True) -> Path:
    """Make sure ``path`` is (or can become) a folder this process can write into; return it.

    ``key`` names where the folder was chosen (``train.output_dir``, ``--out``). With ``create`` the
    folder is created and a hidden empty file is written and removed in it (which finds a read-only
    disk even when the permission bits allow writing); without it nothing is written (a command that
    fails later leaves no empty folder behind) and the nearest existing folder is checked with
    ``os.access``, which also refuses a read-only disk.
    """
    path = Path(path)
    blocking = blocking_file(path)
    if blocking is not None:
        where = "it is a file" if os.path.abspath(blocking) == os.path.abspath(path) else f"{blocking} is a file"
        raise UsageError(f"{key}: cannot write into {path}: {where}, not a folder; choose a folder.")
    if not create:
        existing = Path(os.path.abspath(path))
        while not existing.exists():
            existing = existing.parent
        if not writable(existing):
            raise UsageError(f"{key}: cannot write into {path}: {existing} is not writable by this user "
                             "(or is on a read-only disk); choose a folder you can write to.")
        return path
    with writing(path, action=f"write {key}"):
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".osctl-write-check-", dir=path)
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(probe)
    return path


def writable(folder: Path) -> bool:
    """Whether this process may create files in the existing ``folder`` (``os.access``: permission bits,
    ACLs and a read-only mount all count)."""
    return os.access(folder, os.W_OK | os.X_OK)
