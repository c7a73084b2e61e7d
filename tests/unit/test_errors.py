"""The one mapping of operating-system failures to osctl errors, and the ``writing`` block that uses it."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from osctl import errors
from osctl.errors import ConfigError, OsctlError, StorageError, UsageError, io_error, writing


@pytest.mark.parametrize(("code", "kind", "words"), [
    (errno.ENOSPC, StorageError, "the disk is full"),
    (errno.EDQUOT, StorageError, "quota"),
    (errno.EFBIG, StorageError, "larger than the file system"),
    (errno.EIO, StorageError, "input/output error"),
    (errno.EROFS, UsageError, "read-only file system"),
    (errno.EACCES, UsageError, "permission denied"),
    (errno.EPERM, UsageError, "not permitted"),
    (errno.EISDIR, UsageError, "is a folder"),
    (errno.ENAMETOOLONG, UsageError, "too long"),
])
def test_each_errno_is_one_sentence_naming_the_chosen_path(tmp_path: Path, code: int, kind: type, words: str) -> None:
    exc = OSError(code, "text from the OS", str(tmp_path / "out" / ".tmp-x1y2"))
    mapped = io_error(exc, tmp_path / "out", action="write the sample index to")
    assert type(mapped) is kind
    assert mapped.message.startswith(f"cannot write the sample index to {tmp_path / 'out'}: ")
    assert words in mapped.message and mapped.message.endswith(".") and ".tmp-x1y2" not in mapped.message
    assert mapped.exit_code == (2 if kind is UsageError else 1)


def test_a_file_in_the_way_is_named(tmp_path: Path) -> None:
    (tmp_path / "blocker").write_text("x")
    for code in (errno.ENOTDIR, errno.EEXIST):
        mapped = io_error(OSError(code, "x"), tmp_path / "blocker" / "out")
        assert isinstance(mapped, UsageError)
        assert f"{tmp_path / 'blocker'} is a file, not a folder" in mapped.message


def test_unknown_failures_are_not_mapped(tmp_path: Path) -> None:
    assert io_error(OSError(errno.ENOENT, "gone"), tmp_path) is None
    assert io_error(ValueError("bad value"), tmp_path) is None
    assert io_error(OSError(errno.EEXIST, "exists"), tmp_path) is None  # an existing folder is no problem


def test_library_wrapped_failures_are_recognised(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    safetensors_like = RuntimeError("Error while serializing: I/O error: No space left on device (os error 28)")
    assert isinstance(io_error(safetensors_like, tmp_path), StorageError)
    torch_writer = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 757248 vs 757140")
    monkeypatch.setattr(errors, "free_bytes", lambda path: 4096)
    full = io_error(torch_writer, tmp_path / "checkpoint-6", action="save checkpoint")
    assert isinstance(full, StorageError)
    assert full.message.startswith(f"cannot save checkpoint {tmp_path / 'checkpoint-6'}: the disk is full (only 4 KiB")
    monkeypatch.setattr(errors, "free_bytes", lambda path: 50 << 30)
    other = io_error(torch_writer, tmp_path / "checkpoint-6", action="save checkpoint")
    assert isinstance(other, StorageError) and "the write failed" in other.message and "disk is full" not in other.message


def test_writing_maps_cleans_up_and_passes_other_errors_through(tmp_path: Path) -> None:
    cleaned: list[str] = []
    with pytest.raises(StorageError) as caught, \
            writing(tmp_path, action="save checkpoint", cleanup=lambda: cleaned.append("x"), hint="it was removed."):
        raise OSError(errno.ENOSPC, "No space left on device")
    assert cleaned == ["x"] and caught.value.hint == "it was removed."
    assert isinstance(caught.value.__cause__, OSError)
    with pytest.raises(KeyError), writing(tmp_path, cleanup=lambda: cleaned.append("y")):
        raise KeyError("not an I/O failure")
    with pytest.raises(ConfigError), writing(tmp_path, cleanup=lambda: cleaned.append("z")):
        raise ConfigError("already an osctl error")
    assert cleaned == ["x", "y", "z"]


def test_config_errors_can_list_their_problems() -> None:
    exc = ConfigError("model.a: bad; model.b: worse", problems=[("model.a", "bad"), ("model.b", "worse")])
    assert isinstance(exc, OsctlError) and exc.exit_code == 2 and exc.problems[1] == ("model.b", "worse")
