"""safetensors headers and indexes: read without tensor data, every kind of damage named in one sentence."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from osctl.ckpt.headers import read_header, read_sharded
from osctl.errors import DataError


def _write(path: Path, tensors: dict[str, torch.Tensor]) -> Path:
    save_file(tensors, str(path), metadata={"format": "pt"})
    return path


def test_header_describes_every_tensor(tmp_path):
    path = _write(tmp_path / "w.safetensors", {"a.weight": torch.zeros(3, 4), "b": torch.zeros(2, dtype=torch.bfloat16),
                                               "mask": torch.zeros(5, dtype=torch.bool)})
    header = read_header(path)
    assert header.metadata == {"format": "pt"}
    assert {n: (i.shape, i.dtype, i.nbytes) for n, i in header.tensors.items()} == {
        "a.weight": ((3, 4), "float32", 48), "b": ((2,), "bfloat16", 4), "mask": ((5,), "bool", 5)}
    with path.open("rb") as handle:  # the offsets point at the real bytes
        info = header.tensors["a.weight"]
        handle.seek(info.begin)
        assert handle.read(info.end - info.begin) == bytes(48)


def test_offsets_follow_the_data_order_with_empty_and_scalar_tensors(tmp_path):
    tensors = {"z": torch.arange(3, dtype=torch.float64), "empty": torch.zeros(0, 4), "s": torch.tensor(7.0),
               "h": torch.arange(5, dtype=torch.float16), "m": torch.tensor([True, False])}
    path = _write(tmp_path / "w.safetensors", tensors)
    header = read_header(path)
    raw = path.read_bytes()
    assert header.header_bytes == 8 + struct.unpack("<Q", raw[:8])[0]
    assert header.file_bytes == len(raw)
    for name, tensor in tensors.items():
        info = header.tensors[name]
        assert raw[info.begin:info.end] == tensor.numpy().tobytes(), name


def test_file_the_library_would_refuse_is_refused(tmp_path):
    """A hole between two tensors: every size agrees with the file, but safetensors will not load it."""
    header = {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
              "b": {"dtype": "F32", "shape": [2], "data_offsets": [16, 24]}}
    raw = json.dumps(header).encode()
    path = tmp_path / "holes.safetensors"
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + bytes(24))
    with pytest.raises(DataError, match=r"holes\.safetensors is not a valid safetensors file \(invalid offset for "
                                        r"tensor `b`\); it is damaged"):
        read_header(path)


def test_truncated_file_is_one_sentence(tmp_path):
    path = _write(tmp_path / "w.safetensors", {"a": torch.ones(100)})
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(DataError, match=r"w\.safetensors is truncated: tensor 'a' ends at byte \d+ but the file has"):
        read_header(path)


@pytest.mark.parametrize(("payload", "message"), [
    (b"", "too short to be a safetensors file"),
    (struct.pack("<Q", 10**12) + b"{}", "not a safetensors file"),
    (struct.pack("<Q", 500) + b"{}", "is truncated: its header needs 508 bytes"),
    (struct.pack("<Q", 4) + b"nope", "does not start with a safetensors JSON header"),
])
def test_damaged_headers(tmp_path, payload, message):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(payload)
    with pytest.raises(DataError, match=message):
        read_header(path)


def test_inconsistent_offsets_and_trailing_bytes(tmp_path):
    header = {"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 8]}}
    raw = json.dumps(header).encode()
    path = tmp_path / "bad.safetensors"
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + bytes(8))
    with pytest.raises(DataError, match=r"should take 16 bytes but its offsets span 8"):
        read_header(path)
    good = _write(tmp_path / "ok.safetensors", {"a": torch.ones(4)})
    good.write_bytes(good.read_bytes() + b"extra")
    with pytest.raises(DataError, match="5 bytes after its last tensor"):
        read_header(good)


def _sharded(folder: Path) -> Path:
    folder.mkdir()
    _write(folder / "m-00001-of-00002.safetensors", {"a": torch.ones(2), "b": torch.ones(3)})
    _write(folder / "m-00002-of-00002.safetensors", {"c": torch.ones(4)})
    index = folder / "m.safetensors.index.json"
    index.write_text(json.dumps({"metadata": {"total_size": 36}, "weight_map": {
        "a": "m-00001-of-00002.safetensors", "b": "m-00001-of-00002.safetensors", "c": "m-00002-of-00002.safetensors"}}))
    return index


def test_sharded_set_reads_all_shards(tmp_path):
    weights = read_sharded(_sharded(tmp_path / "f"), root=tmp_path / "f")
    assert list(weights.tensors) == ["a", "b", "c"]
    assert weights.tensors["c"].file == "m-00002-of-00002.safetensors"


def test_missing_shard(tmp_path):
    index = _sharded(tmp_path / "f")
    (tmp_path / "f" / "m-00002-of-00002.safetensors").unlink()
    with pytest.raises(DataError, match=r"shard .*m-00002-of-00002\.safetensors listed in .*m\.safetensors\.index\.json "
                                        r"is missing"):
        read_sharded(index)


def test_wrong_index(tmp_path):
    index = _sharded(tmp_path / "f")
    data = json.loads(index.read_text())
    data["weight_map"]["c"] = "m-00001-of-00002.safetensors"
    index.write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"index\.json is wrong: tensor 'c' is listed in m-00001-of-00002\.safetensors "
                                        "but that shard does not hold it"):
        read_sharded(index)
    data["weight_map"]["c"] = "m-00002-of-00002.safetensors"
    del data["weight_map"]["b"]
    index.write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"index\.json is wrong: m-00001-of-00002\.safetensors holds tensor 'b' but the "
                                        "index does not list it"):
        read_sharded(index)
    data["weight_map"] = {"a": "m-00001-of-00002.safetensors", "b": "m-00001-of-00002.safetensors",
                          "c": "m-00002-of-00002.safetensors", "ghost": "m-00002-of-00002.safetensors"}
    index.write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"tensor 'ghost' is listed in m-00002-of-00002\.safetensors but that shard does not"):
        read_sharded(index)


def test_index_cannot_point_outside_its_folder(tmp_path):
    index = _sharded(tmp_path / "f")
    index.write_text(json.dumps({"weight_map": {"a": "../elsewhere.safetensors"}}))
    with pytest.raises(DataError, match="outside its folder"):
        read_sharded(index)
