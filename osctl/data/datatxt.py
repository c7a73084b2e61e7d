"""Parse ``data.txt``: one ``DATA_ROOT,ANNOTATION_FILE`` pair per line (reference §1.1).

Rules (each a deliberate fix of a reference trap):

- blank lines and lines whose first non-blank character is ``#`` are skipped;
- a line is split on its **last** comma, so a DATA_ROOT containing commas works (an annotation
  path containing a comma does not: rename the file);
- relative paths (root or annotation) are resolved against the folder holding ``data.txt``; ``~``
  is expanded;
- the annotation format comes from its suffix, case-insensitive: ``.json`` (one JSON array),
  ``.jsonl`` (one record per line), ``.pkl`` (restricted pickle of a list of dicts) or ``.parquet``;
- a malformed line is reported with its line number instead of crashing or reusing the previous
  file's records.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from osctl.errors import DataError, UsageError

ANNOTATION_FORMATS: dict[str, str] = {".json": "json", ".jsonl": "jsonl", ".pkl": "pkl", ".parquet": "parquet"}
"""Accepted annotation suffixes (lower case) and the reader each selects."""


@dataclass(frozen=True)
class DataSource:
    """One usable line of ``data.txt``: where the media live and which annotation file lists them."""

    file_id: int
    line: int
    root: str
    annotation: Path
    format: str

    @property
    def name(self) -> str:
        """Short display name of the annotation file (its file name)."""
        return self.annotation.name


@dataclass(frozen=True)
class DataTxtProblem:
    """A line of ``data.txt`` that cannot be used, with the reason."""

    path: Path
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.message}"


def _resolve(base: Path, text: str) -> Path:
    path = Path(os.path.expanduser(text))
    if not path.is_absolute():
        path = base / path
    return Path(os.path.normpath(path))


def parse_data_txt(path: Path) -> tuple[list[DataSource], list[DataTxtProblem]]:
    """Read ``path`` and return its usable lines and every malformed one (never raises for bad lines).

    Raises :class:`UsageError` when ``path`` itself cannot be read, since the command was pointed at
    the wrong file.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"data file {path} does not exist; pass the data.txt that lists DATA_ROOT,ANNOTATION lines.") from None
    except IsADirectoryError:
        raise UsageError(f"{path} is a folder; pass the data.txt file that lists DATA_ROOT,ANNOTATION lines.") from None
    except UnicodeDecodeError:
        raise UsageError(f"{path} is not UTF-8 text; data.txt must list DATA_ROOT,ANNOTATION lines.") from None
    except OSError as exc:
        raise UsageError(f"cannot read data file {path}: {exc.strerror}.") from None
    base = path.resolve().parent
    sources: list[DataSource] = []
    problems: list[DataTxtProblem] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        root_text, comma, anno_text = line.rpartition(",")
        root_text, anno_text = root_text.strip(), anno_text.strip()
        if not comma:
            problems.append(DataTxtProblem(path, number, f"expected DATA_ROOT,ANNOTATION_FILE but found no comma in {line!r}"))
            continue
        if not root_text:
            problems.append(DataTxtProblem(path, number, f"DATA_ROOT is empty in {line!r}"))
            continue
        if not anno_text:
            problems.append(DataTxtProblem(path, number, f"ANNOTATION_FILE is empty in {line!r}"))
            continue
        suffix = Path(anno_text).suffix.lower()
        fmt = ANNOTATION_FORMATS.get(suffix)
        if fmt is None:
            accepted = ", ".join(ANNOTATION_FORMATS)
            problems.append(DataTxtProblem(
                path, number, f"annotation file {anno_text!r} has suffix {suffix or '(none)'!r}; use one of {accepted}"))
            continue
        sources.append(DataSource(len(sources), number, str(_resolve(base, root_text)), _resolve(base, anno_text), fmt))
    return sources, problems


def load_data_txt(path: Path) -> list[DataSource]:
    """Like :func:`parse_data_txt` but raise :class:`DataError` naming every malformed line.

    Also refuses a ``data.txt`` without any usable line.
    """
    sources, problems = parse_data_txt(path)
    if problems:
        detail = "; ".join(str(p) for p in problems[:5])
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise DataError(f"{detail}{more}.", hint="each line must be DATA_ROOT,ANNOTATION_FILE; lines starting with # are comments.")
    if not sources:
        raise DataError(f"{path} lists no annotation files; add DATA_ROOT,ANNOTATION_FILE lines.")
    return sources


def display_name(path: Path, base: Path) -> str:
    """``path`` relative to ``base`` when inside it, else the full path (how annotation files appear in
    findings and reports: relative to the folder of their data.txt)."""
    try:
        return str(Path(path).relative_to(base))
    except ValueError:
        return str(path)
