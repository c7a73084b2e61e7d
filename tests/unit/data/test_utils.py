"""osctl.utils: the restricted unpickler never runs code; atomic writes stay inside their folder."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest

from osctl.errors import UsageError
from osctl.utils.atomic import atomic_dir, atomic_file, atomic_write_bytes, atomic_write_text, ensure_inside
from osctl.utils.safe_pickle import UnsafePickleError, safe_load, safe_loads


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, (f"touch {self.marker}",))


def test_plain_data_round_trips() -> None:
    value = [{"path": "a.mp4", "cap": ["x", "y"], "resolution": {"height": 1, "width": 2}, "fps": 29.97,
              "flags": (True, False, None), "raw": b"\x00", "tags": {1, 2}, "frozen": frozenset({"a"}),
              "big": 2**80, "arr": bytearray(b"z")}]
    for protocol in range(0, pickle.HIGHEST_PROTOCOL + 1):
        assert safe_loads(pickle.dumps(value, protocol=protocol)) == value


def test_malicious_pickle_is_refused_without_running(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    data = pickle.dumps([{"path": "a.mp4"}, _Exploit(marker)])
    with pytest.raises(UnsafePickleError, match=r"posix\.system|os\.system") as info:
        safe_loads(data)
    assert not marker.exists()
    assert info.value.global_name in ("posix.system", "os.system")
    assert "nothing from the file was executed" in str(info.value)


def test_class_instances_and_persistent_ids_are_refused(tmp_path: Path) -> None:
    from collections import OrderedDict

    with pytest.raises(UnsafePickleError, match=r"collections\.OrderedDict"):
        safe_loads(pickle.dumps(OrderedDict(a=1)))

    class Persisting(pickle.Pickler):
        def persistent_id(self, obj):  # type: ignore[no-untyped-def]
            return "x" if obj == "secret" else None

    path = tmp_path / "p.pkl"
    with open(path, "wb") as handle:
        Persisting(handle).dump(["secret"])
    with pytest.raises(UnsafePickleError, match="persistent id"):
        safe_load(path)


def test_truncated_pickle_is_an_ordinary_error() -> None:
    data = pickle.dumps([{"a": 1}] * 10)
    with pytest.raises((pickle.UnpicklingError, EOFError)):
        safe_loads(data[: len(data) // 2])


def test_atomic_writes_replace_and_leave_no_temporary_files(tmp_path: Path) -> None:
    target = tmp_path / "out" / "file.txt"
    atomic_write_text(target, "one", root=tmp_path / "out")
    atomic_write_bytes(target, b"two", root=tmp_path / "out")
    assert target.read_text() == "two"
    with pytest.raises(RuntimeError), atomic_file(target, root=tmp_path / "out") as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash while writing")
    assert target.read_text() == "two"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["file.txt"]


def test_a_replaced_file_can_be_released_in_the_background(tmp_path: Path) -> None:
    from osctl.utils.atomic import finish_releasing

    root = tmp_path / "out"
    target = root / "big.bin"
    atomic_write_bytes(target, b"old" * 1000, root=root)
    with open(target, "rb") as reader:  # a reader of the old file is not disturbed
        with atomic_file(target, root=root, release_old_later=True) as tmp:
            tmp.write_bytes(b"new")
        assert target.read_bytes() == b"new"
        finish_releasing()
        assert reader.read() == b"old" * 1000
    assert sorted(p.name for p in root.iterdir()) == ["big.bin"]
    with pytest.raises(RuntimeError), atomic_file(target, root=root, release_old_later=True) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("crash while writing")
    with atomic_file(root / "fresh.bin", root=root, release_old_later=True) as tmp:  # nothing to release
        tmp.write_bytes(b"x")
    finish_releasing()
    assert sorted(p.name for p in root.iterdir()) == ["big.bin", "fresh.bin"] and target.read_bytes() == b"new"


def test_writes_outside_the_output_folder_are_refused(tmp_path: Path) -> None:
    root = tmp_path / "out"
    root.mkdir()
    for bad in (tmp_path / "elsewhere.txt", root / ".." / "escape.txt", Path("/etc/osctl-test")):
        with pytest.raises(UsageError, match="outside the output folder"):
            atomic_write_text(bad, "x", root=root)
    (root / "link").symlink_to(tmp_path)
    with pytest.raises(UsageError):
        ensure_inside(root / "link" / "x.txt", root)
    assert not (tmp_path / "elsewhere.txt").exists()


def test_atomic_dir_swaps_whole_folders(tmp_path: Path) -> None:
    target = tmp_path / "idx"
    with atomic_dir(target, root=tmp_path) as tmp:
        (tmp / "a").write_text("1")
    with atomic_dir(target, root=tmp_path) as tmp:
        (tmp / "b").write_text("2")
    assert sorted(p.name for p in target.iterdir()) == ["b"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["idx"]


def test_relative_destinations_are_relative_to_the_working_directory(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    out = Path("demo_out") / "train" / "index"
    written = atomic_write_text(out / "index.json", "{}", root=out)
    assert written == (tmp_path / "demo_out" / "train" / "index" / "index.json").resolve()
    assert (tmp_path / "demo_out" / "train" / "index" / "index.json").read_text() == "{}"
    assert not (tmp_path / "demo_out" / "train" / "index" / "demo_out").exists()
