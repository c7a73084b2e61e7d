"""What ``osctl data import`` reads: a folder of media, a CSV/JSONL/Parquet list, or an existing annotation.

- **Folder** (searched recursively; hidden files and folders skipped): every file whose extension is a
  video or image one (:data:`osctl.data.records.VIDEO_EXTENSIONS`, :data:`~osctl.data.records.IMAGE_EXTENSIONS`).
  The caption is the sibling ``NAME.txt`` or ``NAME.caption`` (one caption per non-empty line; several
  lines become a list, one of which training picks each time), else the entry for the file in a
  ``captions.jsonl`` of its folder (``{"path": "clip.mp4", "caption": "..."}`` per line; ``file`` and
  ``cap`` are accepted too). Records are relative to the folder.
- **List** (``.csv``, ``.tsv``, ``.jsonl``, ``.parquet``): one row per file, with a path column and a
  caption column (names configurable; ``cap`` is used when the caption column is absent). Relative
  paths are relative to ``root`` or else to the list's folder; records are relative to the folders'
  common parent.
- **Annotation** (``.json``, ``.pkl``, or a ``data.txt`` naming several): an Open-Sora-Plan annotation
  to probe again. Every other key of a record (``cap``, ``cut``, ``crop``, scores, the user's own) is
  kept; paths stay relative to the same DATA_ROOT (``root``, else the annotation's folder, else the
  one data.txt gives).

Caption files must be UTF-8 (a UTF-8 or UTF-16 byte-order mark is honoured); one that is not is
reported for its media file, which is then left out rather than written with a garbled caption.
"""

from __future__ import annotations

import codecs
import csv
import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from osctl.curate.problems import ERROR, WARNING, Problem
from osctl.curate.records_io import read_records
from osctl.data.records import KIND_UNKNOWN, media_kind
from osctl.errors import UsageError

CAPTION_MODES: tuple[str, ...] = ("auto", "txt", "caption-column", "none")
"""``--captions``: auto (the source's own way), txt (sidecar files), caption-column (the list's column), none."""

SIDECAR_SUFFIXES: tuple[str, ...] = (".txt", ".caption")
CAPTIONS_JSONL = "captions.jsonl"
LIST_FORMATS: dict[str, str] = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".parquet": "parquet"}
ANNOTATION_FORMATS: dict[str, str] = {".json": "json", ".pkl": "pkl"}

CAPTION_SEVERITY: dict[str, str] = {"caption_encoding": ERROR, "bad_caption": ERROR, "empty_caption": WARNING}
"""How a caption problem weighs: a caption that cannot be read leaves the file out; an empty one is only noted."""

Caption = str | list[str] | None


@dataclass(frozen=True)
class SourceItem:
    """One media file to import: its absolute path, the path its record gets, its caption and kept fields."""

    path: str
    rel: str
    caption: Caption = None
    caption_problem: tuple[str, str] | None = None
    base: dict[str, Any] | None = None


@dataclass
class SourceGroup:
    """Files sharing one DATA_ROOT; written as one annotation file named ``name``."""

    root: str
    name: str
    items: list[SourceItem] = field(default_factory=list)


@dataclass
class Source:
    """Everything found in SRC: the groups of files and the problems met while listing them."""

    kind: str
    origin: Path
    groups: list[SourceGroup]
    problems: list[Problem] = field(default_factory=list)

    @property
    def items(self) -> list[SourceItem]:
        return [item for group in self.groups for item in group.items]


def read_source(src: Path, *, captions: str = "auto", path_column: str = "path", caption_column: str = "caption",
                root: Path | None = None, exclude: Path | None = None) -> Source:
    """List the media files of ``src`` with their captions (see the module docstring for the kinds of SRC).

    ``exclude`` is a folder never searched (the output folder when it lies inside SRC). Raises
    :class:`UsageError` when SRC does not exist, has an unknown suffix, or a named column is absent.
    """
    if captions not in CAPTION_MODES:
        raise UsageError(f"--captions {captions!r} is not a caption source; use one of {', '.join(CAPTION_MODES)}.")
    src = Path(src).expanduser()
    if not src.exists():
        raise UsageError(f"{src} does not exist; pass a folder of videos, a CSV/JSONL/Parquet list or an annotation file.")
    if src.is_dir():
        if captions == "caption-column":
            raise UsageError(f"--captions caption-column needs a CSV/JSONL/Parquet list, but {src} is a folder; "
                             "use --captions txt (NAME.txt files) or none.")
        return _folder_source(src, captions, exclude)
    suffix = src.suffix.lower()
    if suffix in LIST_FORMATS:
        return _list_source(src, LIST_FORMATS[suffix], captions, path_column, caption_column, root)
    if suffix in ANNOTATION_FORMATS or suffix == ".txt":
        if captions == "caption-column":
            raise UsageError(f"--captions caption-column needs a CSV/JSONL/Parquet list; {src} is an annotation "
                             "(its `cap` is kept with --captions auto).")
        return _annotation_source(src, captions, root)
    known = ", ".join([*LIST_FORMATS, *ANNOTATION_FORMATS, ".txt (data.txt)"])
    raise UsageError(f"{src} has suffix {suffix or '(none)'!r}; pass a folder or a file ending in one of {known}.")


# ------------------------------------------------------------------------------------------------ captions


def read_caption_file(path: Path) -> tuple[Caption, tuple[str, str] | None]:
    """The caption(s) in a text file: one per non-empty line (a list when several), or a problem.

    UTF-8 (with or without a byte-order mark) or UTF-16 with a byte-order mark; anything else, or a
    NUL character, is a ``caption_encoding`` problem naming the offending byte.
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        return None, ("bad_caption", f"cannot read caption file {path.name} ({exc.strerror or exc})")
    try:
        if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
            text = data.decode("utf-16")
        else:
            text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        return None, ("caption_encoding", f"caption file {path.name} is not UTF-8 text (byte 0x{data[exc.start]:02x} "
                                          f"at offset {exc.start}); save it as UTF-8 and import again")
    if "\x00" in text:
        return None, ("caption_encoding", f"caption file {path.name} holds NUL characters (UTF-16 without a byte-order "
                                          "mark?); save it as UTF-8 and import again")
    return _caption_lines(text, path.name)


def _caption_lines(text: str, name: str) -> tuple[Caption, tuple[str, str] | None]:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return None, ("empty_caption", f"caption file {name} is empty; the record is written without a caption "
                                       "(add one, or run `osctl data caption`)")
    return (lines[0] if len(lines) == 1 else lines), None


def _check_caption_value(value: Any, where: str) -> tuple[Caption, tuple[str, str] | None]:
    if value is None:
        return None, None
    if isinstance(value, str):
        if not value.strip():
            return None, ("empty_caption", f"{where} is empty; the record is written without a caption")
        return value.strip(), None
    if isinstance(value, list | tuple) and value and all(isinstance(v, str) and v.strip() for v in value):
        return [v.strip() for v in value], None
    return None, ("bad_caption", f"{where} is {value!r}, expected a string or a list of non-empty strings")


def _sidecar(media: Path) -> Path | None:
    for suffix in SIDECAR_SUFFIXES:
        candidate = media.with_suffix(suffix)
        if candidate.is_file():
            return candidate
    return None


def _captions_jsonl(folder: Path, problems: list[Problem]) -> dict[str, tuple[Caption, tuple[str, str] | None]]:
    """``captions.jsonl`` of ``folder`` as {file name relative to folder: (caption, problem)}."""
    path = folder / CAPTIONS_JSONL
    if not path.is_file():
        return {}
    table: dict[str, tuple[Caption, tuple[str, str] | None]] = {}
    try:
        data = path.read_bytes().decode("utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        problems.append(Problem(str(path), "caption_encoding", WARNING, f"{CAPTIONS_JSONL} cannot be read as UTF-8 "
                                                                        f"({exc}); its captions are not used"))
        return {}
    for number, line in enumerate(data.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            problems.append(Problem(f"{path}:{number}", "bad_caption", WARNING, f"JSON syntax error ({exc}); line ignored"))
            continue
        name = row.get("path", row.get("file")) if isinstance(row, dict) else None
        if not isinstance(name, str) or not name:
            problems.append(Problem(f"{path}:{number}", "bad_caption", WARNING,
                                    'the line names no file; write {"path": "clip.mp4", "caption": "..."}'))
            continue
        value = row.get("caption", row.get("cap"))
        table[os.path.normpath(name)] = _check_caption_value(value, f"the caption of {name} in {CAPTIONS_JSONL}")
    return table


# ------------------------------------------------------------------------------------------------ folders


def _folder_source(src: Path, captions: str, exclude: Path | None) -> Source:
    root = src.resolve()
    skip = exclude.resolve() if exclude is not None else None
    problems: list[Problem] = []
    group = SourceGroup(root=str(root), name="media")
    for folder, dirs, files in os.walk(root):
        here = Path(folder)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and (skip is None or here / d != skip))
        table = _captions_jsonl(here, problems) if captions != "none" else {}
        for name in sorted(files):
            if name.startswith(".") or media_kind(name) == KIND_UNKNOWN:
                continue
            media = here / name
            caption: Caption = None
            problem = None
            if captions != "none":
                sidecar = _sidecar(media)
                if sidecar is not None:
                    caption, problem = read_caption_file(sidecar)
                elif name in table:
                    caption, problem = table[name]
            group.items.append(SourceItem(str(media), media.relative_to(root).as_posix(), caption, problem))
    return Source("folder", src, [group], problems)


# ------------------------------------------------------------------------------------------------ lists


def _list_rows(path: Path, fmt: str) -> list[dict[str, Any]]:
    if fmt in ("csv", "tsv"):
        try:
            text = path.read_bytes().decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise UsageError(f"{path} is not UTF-8 text (byte at offset {exc.start}); save the list as UTF-8.") from None
        return list(csv.DictReader(io.StringIO(text, newline=""), delimiter="," if fmt == "csv" else "\t"))
    from osctl.errors import DataError

    try:
        return read_records(path, "jsonl" if fmt == "jsonl" else "parquet")
    except DataError as exc:
        raise UsageError(exc.message) from None


def _list_source(path: Path, fmt: str, captions: str, path_column: str, caption_column: str,
                 root: Path | None) -> Source:
    rows = _list_rows(path, fmt)
    columns = sorted({key for row in rows for key in row})
    if rows and path_column not in columns:
        raise UsageError(f"--path-column {path_column}: {path.name} has no column {path_column!r}; its columns are "
                         f"{', '.join(columns)}.")
    column = caption_column if caption_column in columns else "cap" if "cap" in columns else None
    if captions == "caption-column" and column is None and rows:
        raise UsageError(f"--caption-column {caption_column}: {path.name} has no column {caption_column!r} (nor `cap`); "
                         f"its columns are {', '.join(columns)}.")
    base = (Path(root).expanduser() if root is not None else path.parent).resolve()
    problems: list[Problem] = []
    found: list[tuple[str, Caption, tuple[str, str] | None]] = []
    seen: set[str] = set()
    for number, row in enumerate(rows, start=1):
        where = f"{path.name} row {number}"
        value = row.get(path_column)
        if not isinstance(value, str) or not value.strip():
            problems.append(Problem(where, "missing_path", ERROR, f"the {path_column!r} column is empty; the row is skipped"))
            continue
        media = os.path.normpath(os.path.join(base, os.path.expanduser(value.strip())))
        if media_kind(media) == KIND_UNKNOWN:
            problems.append(Problem(media, "unknown_extension", ERROR, "the extension is neither a video nor an image "
                                                                        "one; the row is skipped"))
            continue
        if media in seen:
            problems.append(Problem(media, "duplicate_path", WARNING, f"listed again at {where}; the later row is skipped"))
            continue
        seen.add(media)
        caption: Caption = None
        problem = None
        if captions == "txt":
            sidecar = _sidecar(Path(media))
            if sidecar is not None:
                caption, problem = read_caption_file(sidecar)
        elif captions != "none" and column is not None:
            caption, problem = _check_caption_value(row.get(column), f"the {column!r} of {where}")
        found.append((media, caption, problem))
    common = os.path.commonpath([os.path.dirname(m) for m, _, _ in found]) if found else str(base)
    group = SourceGroup(root=common, name=path.stem)
    for media, caption, problem in found:
        group.items.append(SourceItem(media, Path(os.path.relpath(media, common)).as_posix(), caption, problem))
    return Source("list", path, [group], problems)


# ------------------------------------------------------------------------------------------------ annotations


def _annotation_source(path: Path, captions: str, root: Path | None) -> Source:
    from osctl.data.datatxt import load_data_txt
    from osctl.errors import DataError

    if path.suffix.lower() == ".txt":
        try:
            lines = [(s.root, s.annotation, s.format) for s in load_data_txt(path)]
        except DataError as exc:
            raise UsageError(exc.message, hint=exc.hint) from None
        if root is not None:
            raise UsageError("--root applies to one annotation file; a data.txt gives each file's root itself.")
    else:
        data_root = (Path(root).expanduser() if root is not None else path.parent).resolve()
        lines = [(str(data_root), path, ANNOTATION_FORMATS[path.suffix.lower()])]
    groups: list[SourceGroup] = []
    problems: list[Problem] = []
    for data_root, annotation, fmt in lines:
        try:
            records = read_records(annotation, fmt)
        except DataError as exc:
            raise UsageError(exc.message) from None
        group = SourceGroup(root=data_root, name=annotation.stem)
        for index, record in enumerate(records):
            value = record.get("path")
            if not isinstance(value, str) or not value:
                problems.append(Problem(f"{annotation.name} record {index}", "missing_path", ERROR,
                                        "the record has no `path`; it is skipped"))
                continue
            media = os.path.normpath(os.path.join(data_root, value))
            base = {k: v for k, v in record.items() if k != "path"}
            caption: Caption = None
            problem = None
            if captions == "txt":
                sidecar = _sidecar(Path(media))
                base.pop("cap", None)
                if sidecar is not None:
                    caption, problem = read_caption_file(sidecar)
            elif captions == "none":
                base.pop("cap", None)
            group.items.append(SourceItem(media, value, caption, problem, base))
        groups.append(group)
    return Source("annotation", path, groups, problems)
