"""safetensors headers and sharded-weights indexes, read without torch and without reading tensor data.

A safetensors file is ``u64 little-endian N`` + ``N`` bytes of JSON (name -> dtype, shape, byte range;
optional ``__metadata__``) + the raw tensor bytes. Reading the first ``8 + N`` bytes describes every
tensor, so a 10 GB checkpoint is inspected in milliseconds with almost no memory. The header is checked
against the file size, which catches truncated copies before anything tries to load them.

A sharded set is ``<stem>.safetensors.index.json`` (``weight_map``: tensor -> shard file) next to its
shards; :func:`read_sharded` checks that every listed shard exists and that the index and the shard
headers agree tensor for tensor.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from osctl.errors import DataError

#: safetensors dtype code -> (torch-style name used in every osctl report, bytes per element)
DTYPES: dict[str, tuple[str, float]] = {
    "F64": ("float64", 8), "F32": ("float32", 4), "F16": ("float16", 2), "BF16": ("bfloat16", 2),
    "I64": ("int64", 8), "I32": ("int32", 4), "I16": ("int16", 2), "I8": ("int8", 1),
    "U64": ("uint64", 8), "U32": ("uint32", 4), "U16": ("uint16", 2), "U8": ("uint8", 1),
    "BOOL": ("bool", 1), "F8_E4M3": ("float8_e4m3fn", 1), "F8_E5M2": ("float8_e5m2", 1),
    "F8_E8M0": ("float8_e8m0fnu", 1), "C64": ("complex64", 8), "F4": ("float4_e2m1fn_x2", 0.5),
}
#: torch-style dtype name -> bytes per element (also for dtypes read from torch files)
ITEMSIZE: dict[str, float] = {name: size for name, size in DTYPES.values()}
ITEMSIZE.update({"complex128": 16, "float8_e4m3fnuz": 1, "float8_e5m2fnuz": 1})
FLOATING = {"float64", "float32", "float16", "bfloat16", "float8_e4m3fn", "float8_e5m2", "float8_e8m0fnu",
            "float8_e4m3fnuz", "float8_e5m2fnuz", "float4_e2m1fn_x2"}

MAX_HEADER_BYTES = 100 * 1024 * 1024  # the safetensors library refuses larger headers too
INDEX_SUFFIX = ".safetensors.index.json"


@dataclass(frozen=True)
class TensorInfo:
    """One tensor as described on disk: name, shape, dtype (torch-style name) and where it lives."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    file: str = ""
    begin: int = 0  # absolute byte offset of the data in ``file`` (safetensors only)
    end: int = 0

    @property
    def numel(self) -> int:
        """Number of elements (1 for a scalar)."""
        count = 1
        for dim in self.shape:
            count *= dim
        return count

    @property
    def nbytes(self) -> int:
        """Bytes of tensor data."""
        return int(self.numel * ITEMSIZE.get(self.dtype, 0))

    def as_dict(self) -> dict[str, Any]:
        """The JSON form used by ``ckpt inspect --tensors``: name, shape, dtype, file."""
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype, "file": self.file}


@dataclass
class SafetensorsHeader:
    """The parsed header of one safetensors file."""

    path: Path
    tensors: dict[str, TensorInfo]
    metadata: dict[str, str] = field(default_factory=dict)
    header_bytes: int = 0
    file_bytes: int = 0


def read_header(path: Path, *, label: str | None = None) -> SafetensorsHeader:
    """Parse and check the header of ``path`` (reads ``8 + N`` bytes, never the tensor data).

    Raises ``DataError`` naming the file when it is not safetensors, is truncated, or its header
    contradicts itself (offsets outside the file, sizes that do not match shape x dtype).
    ``label`` is how ``TensorInfo.file`` names the file (default: its name); messages use the path.
    """
    shown = str(path)
    file_label = label or path.name
    try:
        size = path.stat().st_size
        with path.open("rb") as handle:
            prefix = handle.read(8)
            if len(prefix) < 8:
                raise DataError(f"{shown} is {size} bytes, too short to be a safetensors file; it is truncated or empty.")
            (length,) = struct.unpack("<Q", prefix)
            if length > MAX_HEADER_BYTES:
                raise DataError(f"{shown} declares a {length}-byte header, which is not a safetensors file "
                                "(is it a torch .pt/.bin renamed to .safetensors?).")
            if 8 + length > size:
                raise DataError(f"{shown} is truncated: its header needs {8 + length} bytes but the file has {size}; "
                                "copy or download it again.")
            raw = handle.read(length)
    except OSError as exc:
        raise DataError(f"cannot read {shown}: {exc.strerror or exc}.") from None
    try:
        header = json.loads(raw.decode("utf-8").rstrip(" "))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise DataError(f"{shown} does not start with a safetensors JSON header; it is damaged or not safetensors.") from None
    if not isinstance(header, dict):
        raise DataError(f"{shown} has a safetensors header that is not a JSON object; the file is damaged.")
    metadata = header.pop("__metadata__", None) or {}
    data_start = 8 + length
    data_bytes = size - data_start
    tensors: dict[str, TensorInfo] = {}
    furthest = 0
    for name, entry in header.items():
        info = _tensor_entry(shown, file_label, name, entry, data_start)
        if info.end - data_start > data_bytes:
            raise DataError(
                f"{shown} is truncated: tensor {name!r} ends at byte {info.end} but the file has {size} bytes; "
                "copy or download it again."
            )
        furthest = max(furthest, info.end - data_start)
        tensors[name] = info
    if furthest < data_bytes:
        raise DataError(f"{shown} has {data_bytes - furthest} bytes after its last tensor; the file is damaged "
                        "(two files concatenated?) and safetensors will refuse to load it.")
    return SafetensorsHeader(path=path, tensors=tensors, metadata={str(k): str(v) for k, v in metadata.items()},
                             header_bytes=data_start, file_bytes=size)


def _tensor_entry(shown: str, file_label: str, name: str, entry: Any, data_start: int) -> TensorInfo:
    if not isinstance(entry, dict) or not {"dtype", "shape", "data_offsets"} <= entry.keys():
        raise DataError(f"{shown}: header entry {name!r} lacks dtype/shape/data_offsets; the file is damaged.")
    code = entry["dtype"]
    if code not in DTYPES:
        raise DataError(f"{shown}: tensor {name!r} has dtype {code!r}, which osctl does not know.")
    shape = entry["shape"]
    offsets = entry["data_offsets"]
    if not (isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape)):
        raise DataError(f"{shown}: tensor {name!r} has an invalid shape {shape!r}; the file is damaged.")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)
            and 0 <= offsets[0] <= offsets[1]):
        raise DataError(f"{shown}: tensor {name!r} has invalid data_offsets {offsets!r}; the file is damaged.")
    dtype, itemsize = DTYPES[code]
    info = TensorInfo(name=name, shape=tuple(shape), dtype=dtype, file=file_label,
                      begin=data_start + offsets[0], end=data_start + offsets[1])
    if offsets[1] - offsets[0] != int(info.numel * itemsize):
        raise DataError(f"{shown}: tensor {name!r} ({dtype} {list(shape)}) should take {int(info.numel * itemsize)} "
                        f"bytes but its offsets span {offsets[1] - offsets[0]}; the file is damaged.")
    return info


@dataclass
class ShardedSet:
    """The tensors of a folder's weights: one safetensors file or an index with its shards."""

    folder: Path
    files: list[Path]
    tensors: dict[str, TensorInfo]
    index: Path | None = None
    metadata: dict[str, str] = field(default_factory=dict)


def read_index(index: Path) -> dict[str, str]:
    """The ``weight_map`` of a ``*.safetensors.index.json`` (tensor -> shard file name); checked for shape."""
    shown = str(index)
    try:
        data = json.loads(index.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"cannot read the index {shown}: {exc}.") from None
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise DataError(f"{shown} has no valid 'weight_map' (tensor name -> shard file); the index is damaged.")
    for shard in set(weight_map.values()):
        if Path(shard).name != shard:
            raise DataError(f"{shown} points at {shard!r}, outside its folder; refusing to follow it.")
    return weight_map


def read_sharded(index: Path, *, root: Path | None = None) -> ShardedSet:
    """Read an index and the headers of all its shards; every disagreement is a one-sentence ``DataError``.

    Checked: each listed shard exists; each tensor the index lists is in the shard it names; no
    shard holds a tensor the index does not list (or lists under another shard).
    """
    folder = index.parent
    weight_map = read_index(index)
    shown = str(index)
    tensors: dict[str, TensorInfo] = {}
    files = []
    for shard in sorted(set(weight_map.values())):
        path = folder / shard
        if not path.is_file():
            raise DataError(f"shard {path} listed in {shown} is missing; copy or download it again.")
        header = read_header(path, label=_rel(path, root))
        files.append(path)
        for name, info in header.tensors.items():
            listed = weight_map.get(name)
            if listed != shard:
                where = f"lists it in {listed}" if listed else "does not list it"
                raise DataError(f"{shown} is wrong: {path.name} holds tensor {name!r} but the index {where}.")
            tensors[name] = info
    absent = [name for name in weight_map if name not in tensors]
    if absent:
        raise DataError(f"{shown} is wrong: tensor {absent[0]!r} is listed in {weight_map[absent[0]]} but that shard "
                        f"does not hold it ({len(absent)} such tensor(s)).")
    ordered = {name: tensors[name] for name in weight_map}  # index order (sorted names in practice)
    return ShardedSet(folder=folder, files=files, tensors=ordered, index=index)


def read_single(path: Path, *, root: Path | None = None) -> ShardedSet:
    """One safetensors file as a :class:`ShardedSet`."""
    header = read_header(path, label=_rel(path, root))
    return ShardedSet(folder=path.parent, files=[path], tensors=header.tensors, metadata=header.metadata)


def find_weights(folder: Path, stems: Iterable[str]) -> Path | None:
    """The index (preferred) or the single safetensors file of the first stem present in ``folder``."""
    for stem in stems:
        index = folder / f"{stem}{INDEX_SUFFIX}"
        if index.is_file():
            return index
        single = folder / f"{stem}.safetensors"
        if single.is_file():
            return single
    return None


def read_weights(path: Path, *, root: Path | None = None) -> ShardedSet:
    """An index file or a single safetensors file, read as a :class:`ShardedSet`."""
    if path.name.endswith(INDEX_SUFFIX):
        return read_sharded(path, root=root)
    return read_single(path, root=root)


def _rel(path: Path, root: Path | None) -> str:
    """``path`` relative to ``root`` (posix form) when it lies inside it, else its name."""
    if root is not None:
        try:
            return path.relative_to(root).as_posix()
        except ValueError:
            pass
    return path.name
