"""Stale torch-extension build locks (a CPU Adam build killed half-way) are found before DeepSpeed waits on them."""

from __future__ import annotations

import logging
import os
import time

import pytest

from osctl_builtin.strategies.build_lock import REMOTE_GRACE_S, clear_stale_lock, extension_lock, lock_holders

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="holders are found through /proc")


@pytest.fixture
def lock(tmp_path, monkeypatch):
    """``cpu_adam``'s lock file in a private ``TORCH_EXTENSIONS_DIR``, as a killed build leaves it (no .so)."""
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "extensions"))
    path = extension_lock("cpu_adam")
    assert path == tmp_path / "extensions" / "cpu_adam" / "lock"
    path.write_bytes(b"")
    return path


def test_lock_nobody_holds_is_removed_with_a_warning(lock, caplog):
    with caplog.at_level(logging.WARNING, logger="osctl.strategies.deepspeed"):
        message = clear_stale_lock(lock, single_machine=True)
    assert not lock.exists()
    assert message is not None and message.startswith(f"removed the stale build lock {lock} ")
    assert message in caplog.text


def test_lock_a_live_build_holds_is_kept(lock):
    fd = os.open(lock, os.O_RDONLY)  # what torch's FileBaton keeps open while it builds
    try:
        assert lock_holders(lock) == [os.getpid()]
        assert clear_stale_lock(lock, single_machine=True) is None
        assert lock.exists()
    finally:
        os.close(fd)


def test_several_machines_young_lock_is_kept_and_named(lock, caplog):
    """Another machine sharing the folder may be building: a recent lock is left, with what to delete."""
    with caplog.at_level(logging.WARNING, logger="osctl.strategies.deepspeed"):
        message = clear_stale_lock(lock, single_machine=False)
    assert lock.exists()
    assert message is not None and f"the build lock {lock} is held by no process on this machine" in message
    assert "delete that file" in message and message in caplog.text


def test_several_machines_old_lock_is_removed(lock):
    old = time.time() - REMOTE_GRACE_S - 60
    os.utime(lock, (old, old))
    assert clear_stale_lock(lock, single_machine=False) is not None
    assert not lock.exists()


def test_no_lock_nothing_to_do(lock):
    lock.unlink()
    assert clear_stale_lock(lock, single_machine=True) is None
