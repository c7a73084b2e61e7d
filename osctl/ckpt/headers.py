"""safetensors headers and sharded-weights indexes, read without torch and without reading tensor data.

The header of a safetensors file describes every tensor, so a 10 GB checkpoint is inspected in a millisecond
with almost no memory. It is read by the ``safetensors`` library itself (``safe_open``: the header only, the
data is memory-mapped and never touched), which checks it against the file size: truncated copies are caught
before anything tries to load them, and a file described here is one the library will load. Measured against
osctl's former hand-written parser in ``benchmarks/bench_ckpt_headers.py``.

A sharded set is ``<stem>.safetensors.index.json`` (``weight_map``: tensor -> shard file) next to its
shards; :func:`read_sharded` checks that every listed shard exists and that the index and the shard
headers agree tensor for tensor.
"""

from __future__ import annotations

import json
import math
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
    """Describe every tensor of ``path`` from its header, through ``safetensors.safe_open`` (no tensor data read).

    The library checks the header against the file (offsets contiguous and inside it, sizes matching
    shape x dtype, the file fully covered), so a file described here is one ``safetensors`` will load.
    When it refuses the file, :func:`_explain_refusal` reads the header raw to say what is wrong
    (truncated, trailing bytes, not safetensors, ...): a ``DataError`` naming the file.
    ``label`` is how ``TensorInfo.file`` names the file (default: its name); messages use the path.
    """
    from safetensors import SafetensorError, safe_open

    shown = str(path)
    try:
        size = path.stat().st_size
        with safe_open(str(path), framework="numpy") as handle:
            entries = []
            for name in handle.offset_keys():  # data order: each tensor starts where the previous one ends
                described = handle.get_slice(name)
                entries.append((name, described.get_shape(), described.get_dtype()))
            metadata = handle.metadata() or {}
    except OSError as exc:
        raise DataError(f"cannot read {shown}: {exc.strerror or exc}.") from None
    except SafetensorError as exc:
        raise _explain_refusal(path, str(exc)) from None
    sized = []
    for name, shape, code in entries:
        if code not in DTYPES:
            raise DataError(f"{shown}: tensor {name!r} has dtype {code!r}, which osctl does not know.")
        dtype, itemsize = DTYPES[code]
        sized.append((name, tuple(shape), dtype, int(math.prod(shape) * itemsize)))
    data_start = size - sum(nbytes for *_, nbytes in sized)  # the library checked that the data fills the file
    tensors: dict[str, TensorInfo] = {}
    position = data_start
    for name, shape, dtype, nbytes in sized:
        tensors[name] = TensorInfo(name=name, shape=shape, dtype=dtype, file=label or path.name, begin=position,
                                   end=position + nbytes)
        position += nbytes
    return SafetensorsHeader(path=path, tensors=tensors, metadata=dict(metadata), header_bytes=data_start,
                             file_bytes=size)


def _explain_refusal(path: Path, reason: str) -> DataError:
    """One sentence saying why ``safetensors`` refused ``path`` (its own ``reason`` is terse), from the raw header.

    A safetensors file is ``u64 little-endian N`` + ``N`` bytes of JSON (name -> dtype, shape, data_offsets;
    optional ``__metadata__``) + the tensor bytes; the checks below find the first part that disagrees.
    """
    shown = str(path)
    try:
        size = path.stat().st_size
        with path.open("rb") as handle:
            prefix = handle.read(8)
            if len(prefix) < 8:
                return DataError(f"{shown} is {size} bytes, too short to be a safetensors file; it is truncated or empty.")
            (length,) = struct.unpack("<Q", prefix)
            if length > MAX_HEADER_BYTES:
                return DataError(f"{shown} declares a {length}-byte header, which is not a safetensors file "
                                 "(is it a torch .pt/.bin renamed to .safetensors?).")
            if 8 + length > size:
                return DataError(f"{shown} is truncated: its header needs {8 + length} bytes but the file has {size}; "
                                 "copy or download it again.")
            raw = handle.read(length)
    except OSError as exc:
        return DataError(f"cannot read {shown}: {exc.strerror or exc}.")
    try:
        header = json.loads(raw.decode("utf-8").rstrip(" "))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return DataError(f"{shown} does not start with a safetensors JSON header; it is damaged or not safetensors.")
    if not isinstance(header, dict):
        return DataError(f"{shown} has a safetensors header that is not a JSON object; the file is damaged.")
    header.pop("__metadata__", None)
    data_bytes = size - 8 - length
    furthest = 0
    for name, entry in header.items():
        problem = _entry_problem(name, entry)
        if problem:
            return DataError(f"{shown}: {problem}; the file is damaged.")
        end = entry["data_offsets"][1]
        if end > data_bytes:
            return DataError(f"{shown} is truncated: tensor {name!r} ends at byte {8 + length + end} but the file has "
                             f"{size} bytes; copy or download it again.")
        furthest = max(furthest, end)
    if furthest < data_bytes:
        return DataError(f"{shown} has {data_bytes - furthest} bytes after its last tensor; the file is damaged "
                         "(two files concatenated?) and safetensors will refuse to load it.")
    return DataError(f"{shown} is not a valid safetensors file ({reason.removeprefix('Error while deserializing header: ')}); "
                     "it is damaged — copy or download it again.")


def _entry_problem(name: str, entry: Any) -> str | None:
    """What is wrong with one tensor's header entry, or None."""
    if not isinstance(entry, dict) or not {"dtype", "shape", "data_offsets"} <= entry.keys():
        return f"header entry {name!r} lacks dtype/shape/data_offsets"
    code, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if code not in DTYPES:
        return f"tensor {name!r} has dtype {code!r}, which osctl does not know"
    if not (isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape)):
        return f"tensor {name!r} has an invalid shape {shape!r}"
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)
            and 0 <= offsets[0] <= offsets[1]):
        return f"tensor {name!r} has invalid data_offsets {offsets!r}"
    dtype, itemsize = DTYPES[code]
    expected = int(math.prod(shape) * itemsize)
    if offsets[1] - offsets[0] != expected:
        return (f"tensor {name!r} ({dtype} {list(shape)}) should take {expected} bytes but its offsets span "
                f"{offsets[1] - offsets[0]}")
    return None


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
