"""The sample index: one memory-mappable Arrow file that training reads instead of the annotations.

``osctl data bucket`` writes ``<out>/samples.arrow`` (Arrow IPC *file* format, one record batch, no
compression) and a human-readable ``<out>/index.json`` with the same metadata. Every rank and every
DataLoader worker opens the Arrow file with :func:`pyarrow.memory_map`: the operating system shares
its pages between processes, so nothing is parsed or copied per process and no per-record Python
object exists until a sample is actually read.

Columns (row ``i`` = sample ``i``, in data.txt order then file order):

=============== ============ ==================================================================
column          type         meaning
=============== ============ ==================================================================
file_id         int32        data.txt line's position among the annotation files (0-based)
position        int64        record position inside its annotation file
kind            int8         0 video, 1 image (:data:`osctl.data.records.KIND_VIDEO`, ...)
path            string       media path joined with its DATA_ROOT (an absolute ``path`` wins)
captions_json   binary       the ``cap`` value as JSON text: a string or a list of strings
aesthetic       float64      ``aesthetic`` (or ``aes``) score, NaN when absent
fps             float64      frame rate used (annotation, or ``data.default_fps``); NaN for images
start_frame     int64        first usable source frame (``cut[0]``, else 0)
span_frames     int64        usable source frames from ``start_frame`` (``cut[1] - cut[0]``, else num_frames)
num_frames      int64        the annotation's ``num_frames`` (-1 when absent, e.g. images)
n_candidates    int32        frames left after resampling to ``train_fps`` (0 for images)
crop_x0..y1     int32 x 4    spatial crop box, -1 when the record has none
height, width   int32        annotation resolution (full frame)
bucket          int32        id of the sample's bucket in ``meta["buckets"]``
t, h, w         int32        the bucket shape: frames, height, width of the training tensor
=============== ============ ==================================================================

Metadata (``SampleIndex.meta``, also the schema metadata key ``osctl.index``): ``format``,
``version``, ``num_samples``, ``buckets`` (id, t, h, w, key, count, latent_tokens), ``settings``
(every recipe value that shaped the index), ``fingerprint`` (data.txt and each annotation file:
path, size, mtime_ns, sha256, plus the hash of ``settings``), ``reasons`` (records per drop reason),
``global_batch``, ``world_size``, ``sources``.

Reading API (used by the training dataset)::

    from osctl.data.index import open_index

    index = open_index(out_dir, data_txt=data_txt, settings=settings)   # StaleIndexError if outdated
    len(index)                       # number of samples
    index.numpy("t")                 # zero-copy numpy view of a numeric column
    index.bucket_ids()               # int32 bucket id per sample (for a length-grouped sampler)
    index.sample(i)                  # SampleInfo for one sample: path, kind, captions, frames, crop, shape
    index.captions(i)                # list[str] of one sample
    index.table                      # the pyarrow.Table itself (memory-mapped)

``open_index`` without ``data_txt``/``settings`` skips the freshness checks; :meth:`SampleIndex.check`
returns the list of differences instead of raising. A :class:`SampleIndex` pickles as its path, so
DataLoader workers (fork or spawn) map the same file and share its pages.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from osctl.data.bucket import BucketResult, BucketSettings, FileOutcome
from osctl.data.checksum import FileDigest
from osctl.data.datatxt import parse_data_txt
from osctl.data.fingerprint import build_fingerprint, file_changes, sha256_file, unchanged_since
from osctl.data.table import LoadedAnnotation
from osctl.errors import DataError, UsageError, writing
from osctl.utils.atomic import atomic_file, atomic_write_text

INDEX_FILE = "samples.arrow"
SUMMARY_FILE = "index.json"
FORMAT = "osctl.sample-index"
VERSION = 1
META_KEY = b"osctl.index"

SCHEMA = pa.schema([
    ("file_id", pa.int32()), ("position", pa.int64()), ("kind", pa.int8()), ("path", pa.string()),
    ("captions_json", pa.binary()), ("aesthetic", pa.float64()),
    ("fps", pa.float64()), ("start_frame", pa.int64()), ("span_frames", pa.int64()), ("num_frames", pa.int64()),
    ("n_candidates", pa.int32()), ("crop_x0", pa.int32()), ("crop_x1", pa.int32()), ("crop_y0", pa.int32()),
    ("crop_y1", pa.int32()), ("height", pa.int32()), ("width", pa.int32()), ("bucket", pa.int32()),
    ("t", pa.int32()), ("h", pa.int32()), ("w", pa.int32()),
])


class StaleIndexError(UsageError):
    """The index no longer matches its annotation files or the recipe (exit 2: rebuild it)."""


@dataclass(frozen=True)
class SampleInfo:
    """What read time needs to load one sample (built on demand from the memory-mapped columns)."""

    index: int
    path: str
    kind: int
    captions: list[str]
    aesthetic: float | None
    fps: float | None
    start_frame: int
    span_frames: int
    n_candidates: int
    crop: tuple[int, int, int, int] | None
    height: int
    width: int
    bucket: int
    shape: tuple[int, int, int]


# ------------------------------------------------------------------------------------------- writing


def reuse_recorded_digests(loaded: list[LoadedAnnotation], out_dir: Path) -> int:
    """Take the SHA-256 that the index already in ``out_dir`` recorded for each unchanged annotation file.

    Rebuilding an index (another recipe, another ``--set``) then skips hashing the annotation files
    again: about 0.6 s of CPU per GB. A file counts as unchanged when its path, size, modification and
    change times (ns), inode and device all equal the recorded ones, and it had not changed for
    :data:`osctl.data.fingerprint.RACY_NS` when they were recorded; the change time cannot be set by users, so copying or
    editing a file and restoring its modification time still shows. Returns the number of files whose
    digest was reused; a missing or unreadable earlier index reuses nothing.
    """
    try:
        recorded = json.loads((Path(out_dir) / SUMMARY_FILE).read_text())["fingerprint"]["annotations"]
    except (OSError, ValueError, KeyError, TypeError):
        return 0
    if not isinstance(recorded, list):
        return 0
    by_path = {entry.get("path"): entry for entry in recorded if isinstance(entry, dict)}
    reused = 0
    for item in loaded:
        entry = by_path.get(str(item.source.annotation))
        if isinstance(item.digest, FileDigest) and entry is not None and unchanged_since(item, entry):
            item.digest.settle(entry["sha256"])
            reused += 1
    return reused


def join_paths(root: str, paths: pa.Array) -> pa.Array:
    """``os.path.join(root, path)`` for every path, vectorised (an absolute path is kept as is)."""
    prefix = "" if root == "/" else root.rstrip("/")
    joined = pc.binary_join_element_wise(pa.scalar(prefix), paths, "/")
    absolute = pc.starts_with(paths, "/")
    if not pc.any(absolute).as_py():
        return joined
    return pc.if_else(absolute, paths, joined)


def _int32(values: np.ndarray, missing: int = -1) -> np.ndarray:
    values = np.where(np.isnan(values), missing, values) if values.dtype.kind == "f" else values
    return values.astype(np.int32)


def _single(pieces: list[pa.Array | pa.ChunkedArray], kind: pa.DataType) -> pa.Array:
    chunks = [c for piece in pieces for c in (piece.chunks if isinstance(piece, pa.ChunkedArray) else [piece])]
    chunks = [c for c in chunks if len(c)]
    if not chunks:
        return pa.array([], type=kind)
    return chunks[0] if len(chunks) == 1 else pa.concat_arrays(chunks)


def _kept_numbers(item: LoadedAnnotation, outcome: FileOutcome, rows: np.ndarray) -> dict[str, np.ndarray]:
    """The numeric index columns of one file's kept records (``rows``)."""
    table = item.table
    assert table is not None
    crop = table.crop[rows]
    num_frames = table.num_frames[rows]
    return {
        "file_id": np.full(len(rows), item.source.file_id, dtype=np.int32), "position": rows.astype(np.int64),
        "kind": outcome.kind[rows], "aesthetic": table.score()[rows], "fps": outcome.fps[rows],
        "start_frame": outcome.start[rows], "span_frames": outcome.span[rows],
        "num_frames": np.where(np.isnan(num_frames), -1, num_frames).astype(np.int64),
        "n_candidates": outcome.n_candidates[rows].astype(np.int32),
        "crop_x0": _int32(crop[:, 0]), "crop_x1": _int32(crop[:, 1]), "crop_y0": _int32(crop[:, 2]),
        "crop_y1": _int32(crop[:, 3]), "height": _int32(table.height[rows]), "width": _int32(table.width[rows]),
        "bucket": outcome.bucket[rows], "t": outcome.t[rows], "h": outcome.h[rows], "w": outcome.w[rows],
    }


def _kept_paths(item: LoadedAnnotation, mask: pa.Array) -> pa.Array:
    """The joined media paths of one file's kept records."""
    assert item.table is not None
    return join_paths(item.source.root, _single([pc.filter(item.table.path, mask)], pa.string()))


def _kept_captions(item: LoadedAnnotation, mask: pa.Array) -> pa.Array:
    """The caption JSON texts of one file's kept records, as one array."""
    assert item.table is not None and item.table.cap_json is not None
    return _single([pc.filter(item.table.cap_json, mask)], pa.binary())


def index_table(result: BucketResult, *, threads: int | None = None) -> pa.Table:
    """The kept samples of ``result`` as an Arrow table with :data:`SCHEMA` (one contiguous record batch).

    Each file's paths, captions and numbers are gathered as three tasks on up to ``threads`` threads
    (default: the CPU count, at most 8): pyarrow and numpy copy without holding the GIL, and the
    captions alone are most of the bytes, so the copies (and the page faults of the new columns)
    proceed side by side.
    """
    tasks: list[tuple[Any, ...]] = []
    for item, outcome in zip(result.loaded, result.outcomes, strict=True):
        if outcome is None or item.table is None:
            continue
        keep = outcome.reason == 0
        mask = pa.array(keep)
        tasks += [(_kept_captions, item, mask), (_kept_paths, item, mask),
                  (_kept_numbers, item, outcome, np.flatnonzero(keep))]
    threads = threads or min(8, os.cpu_count() or 1)
    if threads > 1 and len(tasks) > 1:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(min(threads, len(tasks))) as pool:
            done = [pool.submit(task[0], *task[1:]) for task in tasks]
            results = [future.result() for future in done]
    else:
        results = [task[0](*task[1:]) for task in tasks]
    strings: dict[str, list[pa.Array]] = {"captions_json": results[0::3], "path": results[1::3]}
    numbers: dict[str, list[np.ndarray]] = {name: [values[name] for values in results[2::3]] for name in SCHEMA.names
                                            if name not in strings}
    columns = []
    for field in SCHEMA:
        if field.name in strings:
            columns.append(_single(strings[field.name], field.type))
        else:
            parts = numbers[field.name]
            data = (parts[0] if len(parts) == 1 else np.concatenate(parts) if parts
                    else np.zeros(0, dtype=field.type.to_pandas_dtype()))
            columns.append(pa.array(data.astype(field.type.to_pandas_dtype(), copy=False), type=field.type))
    return pa.Table.from_batches([pa.record_batch(columns, schema=SCHEMA)])


def index_meta(result: BucketResult, data_txt: Path, *, world_size: int | None = None,
               created: str | None = None) -> dict[str, Any]:
    """The metadata stored with the index (see the module docstring); ``created`` defaults to now."""
    from osctl import __version__

    settings = result.settings
    return {
        "format": FORMAT, "version": VERSION, "osctl": __version__,
        "created": created or time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "num_samples": result.n_kept, "num_records": result.n_records,
        "buckets": [{"id": b.id, "key": b.key, "t": b.t, "h": b.h, "w": b.w, "count": b.count,
                     "latent_tokens": b.latent_tokens} for b in result.buckets],
        "reasons": result.reason_counts(),
        "minority_buckets": [{"key": key, "count": count} for key, count in result.minority],
        "global_batch": settings.layout.global_batch,
        "world_size": world_size if world_size is not None else settings.layout.world_size,
        "settings": settings.shaping_fields(),
        "fingerprint": build_fingerprint(data_txt, result.loaded, settings),
    }


def write_index(result: BucketResult, data_txt: Path, out_dir: Path) -> Path:
    """Write ``samples.arrow`` and ``index.json`` into ``out_dir`` atomically; return the Arrow file's path.

    Both files are written under temporary names first and published together: ``index.json``, then
    ``samples.arrow`` (the file readers open, so it appears last). A failed write (a full disk) leaves
    the previous pair, or nothing, never a new ``samples.arrow`` without its ``index.json``; it is
    reported as one sentence naming ``out_dir`` (:func:`osctl.errors.writing`).
    Refuses (``DataError``) when no sample survived, naming the largest drop reasons.
    """
    if result.n_kept == 0:
        counts = sorted(((c, r) for r, c in result.reason_counts().items() if r != "kept"), reverse=True)
        top = ", ".join(f"{r} {c}" for c, r in counts[:4]) or "no records"
        raise DataError(f"no sample survived the rules ({top}); nothing was written to {out_dir}.",
                        hint="run `osctl data bucket ... --report drops.jsonl` to see every record's reason.")
    out_dir = Path(out_dir)
    with writing(out_dir, action="write the sample index to"):
        out_dir.mkdir(parents=True, exist_ok=True)
        table = index_table(result)
        meta = index_meta(result, data_txt)  # waits for annotation digests still being computed
        metadata = _schema_metadata(meta)
        target = out_dir / INDEX_FILE
        with atomic_file(target, root=out_dir, release_old_later=True) as tmp:
            with pa.ipc.new_file(str(tmp), table.schema.with_metadata(metadata)) as writer:
                writer.write_table(table.replace_schema_metadata(metadata))
            # inside the Arrow file's block: index.json is published first, samples.arrow only after it
            atomic_write_text(out_dir / SUMMARY_FILE, json.dumps(meta, indent=2, default=str) + "\n", root=out_dir)
    return target


def _schema_metadata(meta: dict[str, Any]) -> dict[bytes, bytes]:
    return {META_KEY: json.dumps(meta, default=str).encode()}


# ------------------------------------------------------------------------------------------- reading


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(_flatten(item, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: value}


def read_meta(path: Path) -> dict[str, Any]:
    """The metadata of the index at ``path`` (folder or file), without reading any column."""
    path = Path(path)
    if path.is_dir():
        path = path / INDEX_FILE
    try:
        schema = pa.ipc.open_file(pa.memory_map(str(path), "r")).schema
    except (pa.ArrowInvalid, OSError) as exc:
        raise UsageError(f"{path} is not a readable osctl sample index ({exc}); rebuild it with `osctl data bucket`.") from None
    raw = (schema.metadata or {}).get(META_KEY)
    return json.loads(raw) if raw else {}


class SampleIndex:
    """A memory-mapped sample index (see the module docstring for columns and metadata)."""

    def __init__(self, path: Path) -> None:
        path = Path(path)
        if path.is_dir():
            path = path / INDEX_FILE
        if not path.is_file():
            raise UsageError(f"no sample index at {path}; build one with `osctl data bucket DATA_TXT --recipe RECIPE`.")
        self.path = path
        try:
            reader = pa.ipc.open_file(pa.memory_map(str(path), "r"))
            self.table: pa.Table = reader.read_all()
            raw = (reader.schema.metadata or {}).get(META_KEY)
            self.meta: dict[str, Any] = json.loads(raw) if raw else {}
        except (pa.ArrowInvalid, OSError, ValueError) as exc:
            raise UsageError(f"{path} is not a readable osctl sample index ({exc}); rebuild it with `osctl data bucket`.") from None
        if self.meta.get("format") != FORMAT or self.meta.get("version") != VERSION:
            raise UsageError(
                f"{path} has format {self.meta.get('format')!r} version {self.meta.get('version')!r}, expected "
                f"{FORMAT!r} version {VERSION}; rebuild it with `osctl data bucket`.")
        self._columns = {name: self.table.column(name).combine_chunks() for name in self.table.column_names}

    def __len__(self) -> int:
        return self.table.num_rows

    def __reduce__(self) -> tuple[Any, tuple[Path]]:
        """Pickle as the file path: a DataLoader worker started with spawn re-maps the file instead of copying it."""
        return (SampleIndex, (self.path,))

    @property
    def buckets(self) -> list[dict[str, Any]]:
        """Bucket descriptions (id, key, t, h, w, count, latent_tokens), largest first."""
        return list(self.meta.get("buckets", []))

    def numpy(self, name: str) -> np.ndarray:
        """A numeric column as a numpy array (a zero-copy view of the memory map)."""
        return self._columns[name].to_numpy(zero_copy_only=True)

    def bucket_ids(self) -> np.ndarray:
        """The bucket id of every sample (int32), for length-grouped sampling."""
        return self.numpy("bucket")

    def media_path(self, i: int) -> str:
        """The joined media path of sample ``i``."""
        return self._columns["path"][i].as_py()

    def captions(self, i: int) -> list[str]:
        """The captions of sample ``i`` (a list even when the record has one string)."""
        value = msgspec.json.decode(self._columns["captions_json"][i].as_buffer())
        return [value] if isinstance(value, str) else list(value)

    def sample(self, i: int) -> SampleInfo:
        """Everything read time needs for sample ``i``."""
        col = self._columns
        if not 0 <= i < len(self):
            raise IndexError(f"sample {i} is out of range for an index of {len(self)} samples")
        x0 = int(col["crop_x0"][i].as_py())
        aesthetic = col["aesthetic"][i].as_py()
        fps = col["fps"][i].as_py()
        return SampleInfo(
            index=i, path=self.media_path(i), kind=int(col["kind"][i].as_py()), captions=self.captions(i),
            aesthetic=None if aesthetic is None or np.isnan(aesthetic) else float(aesthetic),
            fps=None if fps is None or np.isnan(fps) else float(fps),
            start_frame=int(col["start_frame"][i].as_py()), span_frames=int(col["span_frames"][i].as_py()),
            n_candidates=int(col["n_candidates"][i].as_py()),
            crop=None if x0 < 0 else tuple(int(col[k][i].as_py()) for k in ("crop_x0", "crop_x1", "crop_y0", "crop_y1")),  # type: ignore[arg-type]
            height=int(col["height"][i].as_py()), width=int(col["width"][i].as_py()),
            bucket=int(col["bucket"][i].as_py()),
            shape=(int(col["t"][i].as_py()), int(col["h"][i].as_py()), int(col["w"][i].as_py())),
        )

    def check(self, data_txt: Path | None = None, settings: BucketSettings | None = None, *,
              verify_content: bool = False) -> list[str]:
        """Differences between the index and the current data.txt / annotation files / settings (empty = fresh).

        Annotation files are compared by size and modification time; a file whose time changed but
        whose size did not is hashed before being called changed. ``verify_content`` hashes every file.
        """
        fingerprint = self.meta.get("fingerprint", {})
        problems: list[str] = []
        if data_txt is not None:
            data_txt = Path(data_txt)
            stored = fingerprint.get("data_txt", {})
            try:
                if sha256_file(data_txt) != stored.get("sha256"):
                    problems.append(f"{data_txt} changed since the index was built")
            except OSError as exc:
                problems.append(f"cannot read {data_txt}: {exc.strerror}")
            else:
                sources, _ = parse_data_txt(data_txt)
                now = [str(s.annotation) for s in sources]
                before = [f["path"] for f in fingerprint.get("annotations", [])]
                if now != before:
                    problems.append(f"{data_txt} now lists {len(now)} annotation file(s), the index was built from {len(before)}")
        for item in fingerprint.get("annotations", []):
            problems.extend(file_changes(item, verify_content))
        if settings is not None:
            old = _flatten(self.meta.get("settings", {}))
            new = _flatten(json.loads(json.dumps(settings.shaping_fields(), default=str)))
            for key in sorted(set(old) | set(new)):
                if old.get(key) != new.get(key):
                    problems.append(f"{key} was {old.get(key)!r} when the index was built and is {new.get(key)!r} now")
        return problems


def open_index(path: Path, *, data_txt: Path | None = None, settings: BucketSettings | None = None,
               verify_content: bool = False) -> SampleIndex:
    """Open the index at ``path`` (a folder or the Arrow file); raise :class:`StaleIndexError` when outdated.

    Freshness is checked only against what is given: ``data_txt`` (and the annotation files it lists)
    and ``settings`` (the recipe's shaping values). Annotation files recorded in the index are always
    checked for size/time changes.
    """
    index = SampleIndex(path)
    problems = index.check(data_txt, settings, verify_content=verify_content)
    if problems:
        more = f" (and {len(problems) - 1} more difference(s))" if len(problems) > 1 else ""
        source = data_txt or index.meta.get("fingerprint", {}).get("data_txt", {}).get("path", "DATA_TXT")
        raise StaleIndexError(
            f"sample index {index.path} is stale: {problems[0]}{more}.",
            hint=f"rebuild it with `osctl data bucket {source} --recipe RECIPE --out {index.path.parent}`.",
        )
    return index
