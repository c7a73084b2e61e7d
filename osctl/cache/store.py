"""The cache on disk: safetensors shards, two Arrow tables of offsets into them, the prompt file.

Folder layout (``<index folder>/cache`` unless ``data.cache.dir`` / ``--out`` say otherwise)::

    manifest.json                 what the cache is for (osctl.cache.spec); written first, by rank 0
    shards/shard-000000.safetensors   samples [0, S), shard k holds [k S, (k + 1) S)
    samples.arrow                 one row per sample: shard, status, views, latent shape, byte offset
    texts.arrow                   one row per stored caption variant: text key, byte offset, stored length
    prompts.safetensors           the empty prompt (CFG dropout) and the validation prompts

**Shards** are ordinary safetensors files (any safetensors tool reads them): per sample ``N/mV``
(posterior mean of view V, ``C x T x H x W``), ``N/sV`` (its std, absent for a deterministic
autoencoder), ``N/tK`` (text states ``n x D`` of caption variant K) and ``N/kK`` (its attention mask,
int64 ``n``), in that order, in the storage dtype; the header's ``__metadata__`` holds the shard's
rows as JSON (key :data:`SHARD_META_KEY`), so the tables can always be rebuilt from the shards.
``n`` is the encoder's padded length ``L`` for whole text states, or, trimmed (``storage.text_states``,
:mod:`osctl.cache.spec`), the variant's :func:`stored_text_length`: the padding after its last valid
token is not stored, and :meth:`ShardMap.text` restores it as zeros (states and mask) on read. A
shard is written to a hidden temporary file and renamed into place when complete
(:func:`osctl.utils.atomic.atomic_file`): a shard file that exists is whole, a killed or failed
writer leaves only a ``.shard-*.tmp-*`` file, removed by the next build.

**Tables** (written by rank 0 once every shard exists) are memory-mapped by every rank and DataLoader
worker; a read is a row lookup and a zero-copy view of the shard's pages (:class:`ShardMap`).

Why safetensors + Arrow rather than Arrow IPC tensor columns: see ``benchmarks/README.md``
(``bench_cache.py --storage``): the same random-read rate, and shards that can be written one sample
at a time without holding the shard in memory, published with one rename, checked and read by
standard tools.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import mmap
import os
import struct
import tempfile
from array import array
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pyarrow as pa
import torch

from osctl.errors import DataError, writing
from osctl.utils.atomic import atomic_file, ensure_inside

MANIFEST = "manifest.json"
SHARDS = "shards"
SAMPLES_TABLE = "samples.arrow"
TEXTS_TABLE = "texts.arrow"
PROMPTS_FILE = "prompts.safetensors"
SHARD_META_KEY = "osctl.cache.shard"
TABLE_META_KEY = b"osctl.cache.table"

STORAGE_DTYPES: dict[str, torch.dtype] = {"bf16": torch.bfloat16, "fp32": torch.float32}
_ST_NAMES = {torch.bfloat16: "BF16", torch.float32: "F32", torch.float16: "F16", torch.int64: "I64",
             torch.uint8: "U8"}
_ST_DTYPES = {name: dtype for dtype, name in _ST_NAMES.items()}

STATUS_MISSING, STATUS_OK, STATUS_BAD = 0, 1, 2

SAMPLES_SCHEMA = pa.schema([
    ("status", pa.int8()), ("shard", pa.int32()), ("views", pa.int16()), ("has_std", pa.int8()),
    ("c", pa.int32()), ("t", pa.int32()), ("h", pa.int32()), ("w", pa.int32()),
    ("latent_offset", pa.int64()), ("text_start", pa.int64()), ("text_count", pa.int32()),
])
TEXTS_SCHEMA = pa.schema([("key", pa.uint64()), ("offset", pa.int64()), ("length", pa.int32())])


def shard_name(shard: int) -> str:
    """File name of shard ``shard``."""
    return f"shard-{shard:06d}.safetensors"


def text_key(text: str) -> int:
    """A 64-bit key of a caption variant (looked up among one sample's variants only)."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")


def stored_text_length(mask: torch.Tensor) -> int:
    """Tokens of a trimmed text entry: up to its last valid token (the mask's last 1, plus one), so every
    position left out is masked whatever the mask's shape (a prefix mask, as the T5 and Llama tokenizers pad on
    the right, or not). A text with no valid token is kept whole: a model would attend to all of its padding."""
    valid = mask.reshape(-1).nonzero()
    return int(valid[-1]) + 1 if valid.numel() else int(mask.numel())


# ------------------------------------------------------------------------------------------- writing


@dataclass
class EncodedSample:
    """One sample as the build encoded it: posterior per view and text states per caption variant,
    or ``bad`` = (code, path, message) when its media could not be read."""

    sample: int
    views: list[tuple[torch.Tensor, torch.Tensor | None]] = field(default_factory=list)
    texts: list[tuple[str, torch.Tensor, torch.Tensor]] = field(default_factory=list)
    bad: tuple[str, str, str] | None = None
    random: bool = False  # the loader chooses its frames at random (a temporal crop)


class ShardWriter:
    """Writes one shard: samples are appended as they are encoded (their bytes go to a hidden data file, so
    the shard is never held in memory), :meth:`publish` writes header + data and renames it into place."""

    def __init__(self, folder: Path, shard: int, *, root: Path, dtype: torch.dtype, spec_sha: str,
                 trim_text: bool = False) -> None:
        self.path = folder / shard_name(shard)
        self.root = root
        self.dtype = dtype
        self.trim_text = trim_text  # store text states up to their last valid token (see the module docstring)
        self.meta: dict[str, Any] = {"shard": shard, "spec_sha256": spec_sha, "rows": []}
        self.tensors: list[tuple[str, str, list[int], int, int]] = []  # name, dtype, shape, begin, end
        ensure_inside(folder, root).mkdir(parents=True, exist_ok=True)
        with writing(folder, action="write the cache shard to"):
            fd, name = tempfile.mkstemp(prefix=f".{shard_name(shard)}.data-", dir=folder)
        self._data_path = Path(name)
        self._data: BinaryIO = os.fdopen(fd, "wb")
        self._size = 0

    def _put(self, name: str, tensor: torch.Tensor) -> int:
        begin = self._size
        data = tensor.detach().to("cpu").contiguous()
        raw = data.view(torch.uint8) if data.dtype != torch.uint8 else data
        self._data.write(memoryview(raw.numpy()).cast("B"))
        self._size += data.numel() * data.element_size()
        self.tensors.append((name, _ST_NAMES[data.dtype], list(data.shape), begin, self._size))
        return begin

    def add(self, item: EncodedSample) -> None:
        """Append one sample (its rows go into the shard's metadata)."""
        if item.bad is not None:
            self.meta["rows"].append({"sample": item.sample, "bad": list(item.bad)})
            return
        offset = -1
        for v, (mean, std) in enumerate(item.views):
            begin = self._put(f"{item.sample}/m{v}", mean.to(self.dtype))
            offset = begin if v == 0 else offset
            if std is not None:
                self._put(f"{item.sample}/s{v}", std.to(self.dtype))
        texts = []
        for k, (text, states, mask) in enumerate(item.texts):
            length = stored_text_length(mask) if self.trim_text else int(mask.shape[0])
            begin = self._put(f"{item.sample}/t{k}", states[:length].to(self.dtype))
            self._put(f"{item.sample}/k{k}", mask[:length].to(torch.int64))
            texts.append([text_key(text), begin, length])
        mean, std = item.views[0]
        self.meta["rows"].append({"sample": item.sample, "views": len(item.views), "random": item.random,
                                  "std": std is not None,
                                  "shape": list(mean.shape), "offset": offset, "texts": texts})

    def publish(self) -> int:
        """Write the shard file (header, then the data) atomically; returns its size in bytes."""
        try:
            with writing(self.path, action="write the cache shard",
                         hint="the shard was not published; free space and run the build again (finished "
                              "shards are kept)."):
                self._data.close()
                header = self._header()
                with atomic_file(self.path, root=self.root) as tmp, open(tmp, "wb") as out, \
                        open(self._data_path, "rb") as data:
                    out.write(struct.pack("<Q", len(header)))
                    out.write(header)
                    _copy(data, out)
        finally:
            self.close()
        return 8 + len(header) + self._size

    def _header(self) -> bytes:
        header: dict[str, Any] = {"__metadata__": {SHARD_META_KEY: json.dumps(self.meta, separators=(",", ":"))}}
        for name, dtype, shape, begin, end in self.tensors:
            header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}
        raw = json.dumps(header, separators=(",", ":")).encode()
        return raw + b" " * (-(8 + len(raw)) % 64)  # data starts 64-byte aligned

    def close(self) -> None:
        """Drop the hidden data file (also when the shard is abandoned)."""
        with contextlib.suppress(Exception):
            self._data.close()
        with contextlib.suppress(OSError):
            self._data_path.unlink()


def _copy(source: BinaryIO, target: BinaryIO) -> None:
    """Append ``source`` to ``target`` (in the kernel where the file system can: no pass through user space)."""
    target.flush()
    size = os.fstat(source.fileno()).st_size
    done = 0
    try:
        while done < size:
            copied = os.copy_file_range(source.fileno(), target.fileno(), size - done)
            if copied == 0:
                break
            done += copied
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL) or done:
            raise
    if done < size:
        source.seek(done)
        target.seek(0, os.SEEK_END)
        while block := source.read(16 << 20):
            target.write(block)


# ------------------------------------------------------------------------------------------- reading


def read_header(path: Path) -> tuple[dict[str, Any], int]:
    """(safetensors header, byte offset of the data) of ``path``; ``DataError`` for a damaged file."""
    try:
        with open(path, "rb") as handle:
            raw = handle.read(8)
            (length,) = struct.unpack("<Q", raw) if len(raw) == 8 else (-1,)
            if not 0 < length < (1 << 30):
                raise ValueError("bad header length")
            header = json.loads(handle.read(length))
    except (OSError, ValueError, struct.error) as exc:
        raise DataError(f"cache shard {path} is damaged ({exc}); delete it and run `osctl data cache` again "
                        "to rebuild it.") from None
    return header, 8 + length


def shard_rows(path: Path, header: tuple[dict[str, Any], int] | None = None) -> dict[str, Any]:
    """The rows a shard's metadata records (``{"shard", "spec_sha256", "rows"}``), with absolute offsets
    (``header``: the shard's :func:`read_header`, when the caller has read it)."""
    header_json, start = header if header is not None else read_header(path)
    meta = json.loads(header_json.get("__metadata__", {}).get(SHARD_META_KEY, "{}"))
    for row in meta.get("rows", []):
        if "offset" in row:
            row["offset"] += start
            for pair in row["texts"]:
                pair[1] += start
    return meta


def stored_texts(header: dict[str, Any]) -> tuple[int, int, int]:
    """``(entries, tokens, bytes)`` of the text entries (states and masks) a shard's header lists."""
    entries = tokens = size = 0
    for name, info in header.items():
        kind = name.rpartition("/")[2][:1]
        if name != "__metadata__" and kind in ("t", "k"):
            begin, end = info["data_offsets"]
            size += end - begin
            if kind == "t":
                entries += 1
                tokens += int(info["shape"][0])
    return entries, tokens, size


class ShardMap:
    """The shards of one cache folder, memory-mapped on first use (at most ``keep`` open at once per process;
    each map is private copy-on-write, so tensors are zero-copy views that share the page cache)."""

    def __init__(self, folder: Path, keep: int = 64) -> None:
        self.folder = Path(folder)
        self.keep = keep
        self._open: OrderedDict[int, mmap.mmap] = OrderedDict()

    def __getstate__(self) -> dict[str, Any]:
        return {"folder": self.folder, "keep": self.keep}  # a DataLoader worker maps its own

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["folder"], state["keep"])  # type: ignore[misc]

    def _map(self, shard: int) -> mmap.mmap:
        found = self._open.get(shard)
        if found is not None:
            self._open.move_to_end(shard)
            return found
        path = self.folder / SHARDS / shard_name(shard)
        try:
            with open(path, "rb") as handle:
                mapped = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_COPY)
        except (OSError, ValueError) as exc:
            raise DataError(f"cannot read cache shard {path} ({exc}); rebuild it with `osctl data cache`.") from None
        self._open[shard] = mapped
        while len(self._open) > self.keep:
            self._open.popitem(last=False)  # closed when no tensor uses it any more
        return mapped

    def tensor(self, shard: int, offset: int, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        """The ``shape`` tensor of ``dtype`` at byte ``offset`` of shard ``shard`` (a view of its pages)."""
        count = int(np.prod(shape)) if shape else 1
        return torch.frombuffer(self._map(shard), dtype=dtype, count=count, offset=offset).view(shape)

    def text(self, shard: int, offset: int, length: int, shape: tuple[int, int],
             dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """``(states L x D, mask L)`` of the text entry at byte ``offset`` holding ``length`` tokens, in the
        padded ``shape`` ``(L, D)``: views of the shard's pages when it is stored whole, else new tensors with
        zeros (states and mask) past ``length``."""
        full, width = shape
        states = self.tensor(shard, offset, (length, width), dtype)
        mask = self.tensor(shard, offset + length * width * dtype.itemsize, (length,), torch.int64)
        if length == full:
            return states, mask
        if length > full:
            raise DataError(f"cache shard {self.folder / SHARDS / shard_name(shard)} holds a text entry of {length} "
                            f"tokens, more than the cache's {full}; rebuild it with `osctl data cache --overwrite`.")
        padded_states = torch.zeros(shape, dtype=dtype)
        padded_states[:length] = states
        padded_mask = torch.zeros(full, dtype=torch.int64)
        padded_mask[:length] = mask
        return padded_states, padded_mask


# ------------------------------------------------------------------------------------------- tables


def write_tables(folder: Path, num_samples: int, shard_samples: int, *, spec_sha: str) -> dict[str, Any]:
    """Read every shard's rows and write ``samples.arrow`` and ``texts.arrow``; returns the counts
    (``ok``, ``bad``, ``missing``, ``bad_examples``, ``texts``, ``bytes``). Shards of another spec are skipped."""
    n_shards = -(-num_samples // shard_samples)
    columns = {name: np.zeros(num_samples, dtype=SAMPLES_SCHEMA.field(name).type.to_pandas_dtype())
               for name in SAMPLES_SCHEMA.names}
    keys = array("Q")  # compact: a million samples with 20 caption variants each are 21 M rows
    offsets = array("q")
    lengths = array("i")
    bad: dict[str, list[str]] = {}
    total_bytes = 0
    for shard in range(n_shards):
        path = folder / SHARDS / shard_name(shard)
        if not path.is_file():
            continue
        meta = shard_rows(path)
        if meta.get("spec_sha256") != spec_sha:
            continue
        total_bytes += path.stat().st_size
        for row in meta.get("rows", []):
            i = int(row["sample"])
            columns["shard"][i] = shard
            if "bad" in row:
                columns["status"][i] = STATUS_BAD
                bad[str(i)] = [str(v) for v in row["bad"]]
                continue
            columns["status"][i] = STATUS_OK
            columns["views"][i] = row["views"]
            columns["has_std"][i] = int(bool(row["std"]))
            shape = list(row["shape"]) + [1] * (4 - len(row["shape"]))
            for name, value in zip(("c", "t", "h", "w"), shape, strict=True):
                columns[name][i] = value
            columns["latent_offset"][i] = row["offset"]
            columns["text_start"][i] = len(keys)
            columns["text_count"][i] = len(row["texts"])
            for key, offset, length in row["texts"]:
                keys.append(int(key))
                offsets.append(int(offset))
                lengths.append(int(length))
    status = columns["status"]
    counts = {"ok": int((status == STATUS_OK).sum()), "bad": int((status == STATUS_BAD).sum()),
              "missing": int((status == STATUS_MISSING).sum()), "texts": len(keys), "bytes": total_bytes}
    meta = {"spec_sha256": spec_sha, "num_samples": num_samples, "bad_samples": bad, **counts}
    samples = pa.table({name: pa.array(values, type=SAMPLES_SCHEMA.field(name).type)
                        for name, values in columns.items()}, schema=SAMPLES_SCHEMA)
    texts = pa.table({"key": pa.array(np.frombuffer(keys, dtype=np.uint64), type=pa.uint64()),
                      "offset": pa.array(np.frombuffer(offsets, dtype=np.int64), type=pa.int64()),
                      "length": pa.array(np.frombuffer(lengths, dtype=np.int32), type=pa.int32())}, schema=TEXTS_SCHEMA)
    with writing(folder, action="write the cache tables to"):
        _write_table(folder / TEXTS_TABLE, texts, folder, {"spec_sha256": spec_sha})
        _write_table(folder / SAMPLES_TABLE, samples, folder, meta)  # last: its presence means complete tables
    return {**counts, "bad_examples": [": ".join([v[1], v[0], v[2]]) for v in list(bad.values())[:5]]}


def _write_table(path: Path, table: pa.Table, root: Path, meta: dict[str, Any]) -> None:
    table = table.replace_schema_metadata({TABLE_META_KEY: json.dumps(meta).encode()})
    with atomic_file(path, root=root) as tmp, pa.OSFile(str(tmp), "wb") as sink, \
            pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)


def read_table(path: Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The columns of a cache table as zero-copy numpy views of its memory map, and its metadata."""
    try:
        reader = pa.ipc.open_file(pa.memory_map(str(path), "r"))
        table = reader.read_all()
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"cache table {path} is unreadable ({exc}); run `osctl data cache` again to rewrite it.") from None
    meta = json.loads((table.schema.metadata or {}).get(TABLE_META_KEY, b"{}"))
    columns = {name: table.column(name).combine_chunks().to_numpy(zero_copy_only=True) if table.num_rows else
               np.zeros(0, dtype=table.schema.field(name).type.to_pandas_dtype()) for name in table.column_names}
    return columns, meta


# ------------------------------------------------------------------------------------------- prompts


def write_prompts(path: Path, root: Path, prompts: list[tuple[str, int | None, torch.Tensor, torch.Tensor]],
                  dtype: torch.dtype) -> None:
    """Write ``(text, max_length, states L x D, mask L)`` prompts as one safetensors file."""
    writer_meta = [{"text": text, "max_length": max_length} for text, max_length, _, _ in prompts]
    tensors: dict[str, torch.Tensor] = {}
    for i, (_, _, states, mask) in enumerate(prompts):
        tensors[f"p{i}/states"] = states.detach().to("cpu", dtype).contiguous()
        tensors[f"p{i}/mask"] = mask.detach().to("cpu", torch.int64).contiguous()
    from safetensors.torch import save

    payload = save(tensors, metadata={"osctl.cache.prompts": json.dumps(writer_meta)})
    with writing(path, action="write the cached prompts to"), atomic_file(path, root=root) as tmp:
        tmp.write_bytes(payload)


def read_prompts(path: Path) -> dict[tuple[str, int | None], tuple[torch.Tensor, torch.Tensor]]:
    """``{(text, max_length): (states, mask)}`` of a prompts file (empty when there is none)."""
    if not path.is_file():
        return {}
    from safetensors import safe_open

    out = {}
    with safe_open(str(path), framework="pt") as handle:
        listed = json.loads((handle.metadata() or {}).get("osctl.cache.prompts", "[]"))
        for i, item in enumerate(listed):
            out[(item["text"], item["max_length"])] = (handle.get_tensor(f"p{i}/states"), handle.get_tensor(f"p{i}/mask"))
    return out


def leftovers(folder: Path) -> Iterator[Path]:
    """Hidden temporary files a killed or failed writer left in the shards folder."""
    shards = folder / SHARDS
    if shards.is_dir():
        for entry in os.scandir(shards):
            if entry.name.startswith(".shard-"):
                yield Path(entry.path)
