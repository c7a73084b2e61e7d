"""Check every record of every annotation file and return all findings (``osctl data validate``).

:func:`validate_data` never prints and never stops at the first problem: a broken annotation file
becomes one finding and the other files are still checked. Findings are stored per check as arrays
of record indices with a message builder (:class:`FindingBlock`), so a million problems cost a few
megabytes until someone asks for them one by one (:meth:`ValidationReport.findings`).

Checks (code, severity) -- :data:`CHECKS` is the authoritative list:

- files: ``datatxt_malformed``, ``datatxt_empty`` (no annotation file listed), ``file_missing``, ``file_unreadable``, ``json_syntax`` (line and column),
  ``not_a_list``, ``pickle_refused``;
- records: ``not_an_object``, ``missing_path``, ``missing_caption``, ``empty_caption``, ``wrong_type``,
  ``missing_resolution``, ``bad_resolution`` (not positive), ``missing_num_frames``, ``bad_num_frames``,
  ``missing_fps``, ``bad_fps`` (videos; not positive or not finite), ``not_finite``
  (aesthetic/aes/tech/motion), ``out_of_range`` (above the bounds of
  :data:`osctl.data.records.PLAUSIBLE_MAX`: frames, sides, fps, cut, crop), ``bad_cut``, ``bad_crop``, ``unknown_extension``, ``media_missing``,
  ``path_escapes_root`` (warning), ``duplicate_path`` (warning);
- with ``probe=True``: ``media_undecodable``, ``resolution_mismatch``, ``frame_count_mismatch``,
  ``cut_beyond_media``, ``fps_mismatch`` -- errors when the difference changes the sample's bucket or
  breaks decoding, warnings otherwise.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from osctl.data.annotations import read_annotations
from osctl.data.bucket import media_kinds
from osctl.data.datatxt import DataSource, display_name, parse_data_txt
from osctl.data.paths import JoinedPaths, escapes, existing, path_facts, repeats
from osctl.data.records import (
    CAP_BLANK,
    CAP_MISSING,
    IMAGE_EXTENSIONS,
    KIND_UNKNOWN,
    KIND_VIDEO,
    VIDEO_EXTENSIONS,
)
from osctl.data.table import LoadedAnnotation, RecordTable

ERROR = "error"
WARNING = "warning"


@dataclass(frozen=True)
class Check:
    """One kind of finding: its stable code, default severity and a short title for tables."""

    code: str
    severity: str
    title: str
    probe: bool = False


CHECKS: dict[str, Check] = {c.code: c for c in [
    Check("datatxt_malformed", ERROR, "data.txt line malformed"),
    Check("datatxt_empty", ERROR, "data.txt lists no annotation file"),
    Check("file_missing", ERROR, "annotation file missing"),
    Check("file_unreadable", ERROR, "annotation file unreadable"),
    Check("json_syntax", ERROR, "JSON syntax error"),
    Check("not_a_list", ERROR, "top level is not a list"),
    Check("pickle_refused", ERROR, "pickle holds more than plain data"),
    Check("not_an_object", ERROR, "record is not an object"),
    Check("missing_path", ERROR, "no path"),
    Check("unknown_extension", ERROR, "unknown media extension"),
    Check("missing_caption", ERROR, "no caption"),
    Check("empty_caption", ERROR, "empty caption"),
    Check("wrong_type", ERROR, "field has the wrong type"),
    Check("missing_resolution", ERROR, "resolution missing"),
    Check("bad_resolution", ERROR, "resolution not positive"),
    Check("missing_num_frames", ERROR, "video without num_frames"),
    Check("bad_num_frames", ERROR, "num_frames not positive"),
    Check("missing_fps", ERROR, "video without fps"),
    Check("bad_fps", ERROR, "fps not positive/finite"),
    Check("not_finite", ERROR, "score not a finite number"),
    Check("out_of_range", ERROR, "number beyond plausible bounds"),
    Check("bad_cut", ERROR, "cut invalid"),
    Check("bad_crop", ERROR, "crop invalid"),
    Check("media_missing", ERROR, "media file missing"),
    Check("path_escapes_root", WARNING, "path escapes DATA_ROOT"),
    Check("duplicate_path", WARNING, "duplicate media path"),
    Check("media_undecodable", ERROR, "media cannot be decoded", probe=True),
    Check("resolution_mismatch", ERROR, "decoded size differs", probe=True),
    Check("frame_count_mismatch", ERROR, "decoded frame count differs", probe=True),
    Check("cut_beyond_media", ERROR, "cut ends after the last frame", probe=True),
    Check("fps_mismatch", ERROR, "decoded fps differs", probe=True),
]}


@dataclass(frozen=True)
class Finding:
    """One problem: ``{severity, code, file, index, field, message}`` in JSON output.

    ``index`` is the 0-based record position in ``file`` (None for a whole-file problem; the 1-based
    line number for ``datatxt_malformed``). ``field`` names the record key at fault (None when none).
    """

    severity: str
    code: str
    file: str
    index: int | None
    field: str | None
    message: str

    def as_dict(self) -> dict[str, object]:
        """The JSON form."""
        return {"severity": self.severity, "code": self.code, "file": self.file, "index": self.index,
                "field": self.field, "message": self.message}

    def short(self) -> str:
        """``file:index field: message`` as shown in tables."""
        where = self.file if self.index is None else f"{self.file}:{self.index}"
        return f"{where} {self.field}: {self.message}" if self.field else f"{where}: {self.message}"


@dataclass
class FindingBlock:
    """Findings of one code and severity in one file, stored as indices plus message builders."""

    code: str
    severity: str
    file: str
    indices: np.ndarray
    field: Callable[[int], str | None] | str | None
    message: Callable[[int], str]

    def __len__(self) -> int:
        return len(self.indices)

    def finding(self, k: int) -> Finding:
        """The k-th finding of the block, materialised."""
        index = self.indices[k]
        i = None if index < 0 else int(index)
        fld = self.field(k) if callable(self.field) else self.field
        return Finding(self.severity, self.code, self.file, i, fld, self.message(k))


@dataclass
class ValidationReport:
    """All findings of a validation run plus what was checked."""

    data_txt: Path
    files: list[LoadedAnnotation] = field(default_factory=list)
    blocks: list[FindingBlock] = field(default_factory=list)
    probed: bool = False

    @property
    def n_records(self) -> int:
        """Records read over all files."""
        return sum(item.n for item in self.files)

    def count(self, code: str | None = None, severity: str | None = None) -> int:
        """Number of findings with this code and/or severity."""
        return sum(len(b) for b in self.blocks
                   if (code is None or b.code == code) and (severity is None or b.severity == severity))

    @property
    def errors(self) -> int:
        """Number of error findings."""
        return self.count(severity=ERROR)

    @property
    def warnings(self) -> int:
        """Number of warning findings."""
        return self.count(severity=WARNING)

    def counts(self) -> dict[str, dict[str, int]]:
        """``{code: {"error": n, "warning": m}}`` for every code with findings."""
        out: dict[str, dict[str, int]] = {}
        for block in self.blocks:
            if len(block):
                slot = out.setdefault(block.code, {})
                slot[block.severity] = slot.get(block.severity, 0) + len(block)
        return out

    def findings(self, code: str | None = None) -> Iterator[Finding]:
        """Every finding (optionally of one code), materialised one at a time."""
        for block in self.blocks:
            if code is None or block.code == code:
                for k in range(len(block)):
                    yield block.finding(k)

    def examples(self, code: str, limit: int = 3) -> list[Finding]:
        """The first ``limit`` findings of ``code``."""
        out: list[Finding] = []
        for finding in self.findings(code):
            out.append(finding)
            if len(out) >= limit:
                break
        return out

    def flagged(self) -> dict[tuple[str, int | None], set[str]]:
        """``{(file, index): {codes}}`` of every finding (handy for tests and reports)."""
        out: dict[tuple[str, int | None], set[str]] = {}
        for finding in self.findings():
            out.setdefault((finding.file, finding.index), set()).add(finding.code)
        return out


def _block(code: str, file: str, mask_or_idx: np.ndarray, fld: Callable[[int], str | None] | str | None,
           message: Callable[[int], str], severity: str | None = None) -> FindingBlock | None:
    idx = np.flatnonzero(mask_or_idx) if mask_or_idx.dtype == bool else np.asarray(mask_or_idx, dtype=np.int64)
    if not len(idx):
        return None
    return FindingBlock(code, severity or CHECKS[code].severity, file, idx, fld, message)


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _record_blocks(item: LoadedAnnotation, name: str) -> list[FindingBlock]:
    """Record-level checks of one readable file (everything except media and cross-file checks)."""
    table = item.table
    assert table is not None
    blocks: list[FindingBlock | None] = []
    grouped: dict[str, list[tuple[int, str, str]]] = {}
    for index, issue in table.issues:
        grouped.setdefault(issue.code, []).append((index, issue.field, issue.message))
    for code, rows in grouped.items():
        blocks.append(FindingBlock(code, CHECKS[code].severity, name, np.array([r[0] for r in rows]),
                                   (lambda k, rows=rows: rows[k][1] or None), (lambda k, rows=rows: rows[k][2])))
    skip = table.bad("record")
    paths = table.path
    kind = media_kinds(paths)
    video = (kind == KIND_VIDEO) & ~skip
    no_path = paths.is_null().to_numpy(zero_copy_only=False) & ~table.bad("path") & ~skip
    blocks.append(_block("missing_path", name, no_path, "path", lambda k: "the record has no `path`"))
    unknown = (kind == KIND_UNKNOWN) & ~no_path & ~table.bad("path") & ~skip
    kinds = f"images: {', '.join(sorted(IMAGE_EXTENSIONS))}; videos: {', '.join(sorted(VIDEO_EXTENSIONS))}"
    unknown_idx = np.flatnonzero(unknown)
    blocks.append(_block("unknown_extension", name, unknown_idx, "path",
                         lambda k: f"{paths[int(unknown_idx[k])].as_py()!r} has an unknown extension ({kinds})"))

    absent = (table.cap_state == CAP_MISSING) & ~table.bad("cap") & ~skip
    blocks.append(_block("missing_caption", name, absent, "cap", lambda k: "the record has no `cap`"))
    blank = (table.cap_state == CAP_BLANK) & ~skip
    blocks.append(_block("empty_caption", name, blank, "cap",
                         lambda k: "the caption is empty or blank (or a caption list holds an empty item)"))

    h, w = table.height, table.width
    res_bad = table.bad("resolution")
    no_res = (np.isnan(h) | np.isnan(w)) & ~res_bad & ~skip
    no_res_idx = np.flatnonzero(no_res)
    blocks.append(_block("missing_resolution", name, no_res_idx,
                         lambda k: "resolution.height" if np.isnan(h[no_res_idx[k]]) else "resolution.width",
                         lambda k: "the record has no resolution.height and resolution.width" if np.isnan(h[no_res_idx[k]]) and np.isnan(w[no_res_idx[k]])
                         else f"resolution.{'height' if np.isnan(h[no_res_idx[k]]) else 'width'} is missing"))
    with np.errstate(invalid="ignore"):
        nonpos_idx = np.flatnonzero(((h <= 0) | (w <= 0)) & ~skip)
        blocks.append(_block("bad_resolution", name, nonpos_idx, "resolution",
                             lambda k: f"resolution is {_num(h[nonpos_idx[k]])}x{_num(w[nonpos_idx[k]])} "
                                       "(height x width); both must be positive"))
        nf = table.num_frames
        blocks.append(_block("missing_num_frames", name, video & np.isnan(nf) & ~table.bad("num_frames"), "num_frames",
                             lambda k: "a video needs `num_frames`"))
        bad_nf = np.flatnonzero(video & (nf <= 0))
        blocks.append(_block("bad_num_frames", name, bad_nf, "num_frames",
                             lambda k: f"num_frames is {_num(nf[bad_nf[k]])}; it must be positive"))
        fps = table.fps
        blocks.append(_block("missing_fps", name, video & np.isnan(fps) & ~table.bad("fps"), "fps",
                             lambda k: "a video needs `fps` (the frame rate decides which frames are sampled)"))
        bad_fps = np.flatnonzero(video & (fps <= 0))
        blocks.append(_block("bad_fps", name, bad_fps, "fps", lambda k: f"fps is {_num(fps[bad_fps[k]])}; it must be positive"))

        c0, c1 = table.cut[:, 0], table.cut[:, 1]
        has_cut = ~np.isnan(c0) & ~skip
        order_bad = has_cut & ~((c0 >= 0) & (c0 < c1))
        span_bad = has_cut & ~order_bad & (c1 - c0 > nf)
        cut_idx = np.flatnonzero(order_bad | span_bad)

        def cut_message(k: int) -> str:
            i = cut_idx[k]
            text = f"cut is [{_num(c0[i])}, {_num(c1[i])}]"
            if order_bad[i]:
                return f"{text}; it needs 0 <= start < end"
            return f"{text}, {_num(c1[i] - c0[i])} frames, but num_frames is {_num(nf[i])}; end - start must not exceed num_frames"

        blocks.append(_block("bad_cut", name, cut_idx, "cut", cut_message))
        x0, x1, y0, y1 = (table.crop[:, j] for j in range(4))
        has_crop = ~np.isnan(x0) & ~skip
        crop_order = (x0 >= 0) & (x0 < x1) & (y0 >= 0) & (y0 < y1)
        inside = (np.isnan(w) | (x1 <= w)) & (np.isnan(h) | (y1 <= h))
        crop_idx = np.flatnonzero(has_crop & ~(crop_order & inside))

        def crop_message(k: int) -> str:
            i = crop_idx[k]
            box = f"crop is [{_num(x0[i])}, {_num(x1[i])}, {_num(y0[i])}, {_num(y1[i])}] (x0, x1, y0, y1)"
            if not crop_order[i]:
                return f"{box}; it needs 0 <= x0 < x1 and 0 <= y0 < y1"
            return f"{box}, outside the {_num(w[i])}x{_num(h[i])} (width x height) frame"

        blocks.append(_block("bad_crop", name, crop_idx, "crop", crop_message))
    return [b for b in blocks if b is not None]


def validate_data(data_txt: Path, *, probe: bool = False, workers: int = 4) -> ValidationReport:
    """Run every check on ``data_txt`` and the files it lists; return the findings (nothing printed).

    Raises :class:`osctl.errors.UsageError` only when ``data_txt`` itself cannot be read.
    """
    data_txt = Path(data_txt)
    sources, problems = parse_data_txt(data_txt)
    base = data_txt.resolve().parent
    report = ValidationReport(data_txt=data_txt, probed=probe)
    txt_name = display_name(data_txt.resolve(), Path.cwd())
    if problems:
        report.blocks.append(FindingBlock(
            "datatxt_malformed", ERROR, txt_name, np.array([p.line for p in problems]), "line",
            lambda k: problems[k].message))
    elif not sources:
        report.blocks.append(FindingBlock(
            "datatxt_empty", ERROR, txt_name, np.array([-1]), None,
            lambda k: f"{data_txt} lists no annotation files; add DATA_ROOT,ANNOTATION_FILE lines"))
    joined_all: list[JoinedPaths] = []
    raw_all: list[pa.Array | pa.ChunkedArray] = []
    cuts: list[np.ndarray] = []
    owners: list[tuple[str, int]] = []
    roots: set[str] = set()
    plain = True  # every path relative and normal: duplicates can be found on the short paths
    # All files are read first: the slices of every large JSON file share the decoding processes.
    for source, item in zip(sources, read_annotations(sources, workers=workers, captions=False, checksum=False),
                            strict=True):
        report.files.append(item)
        name = display_name(source.annotation, base)
        if item.problem is not None:
            report.blocks.append(FindingBlock(item.problem.code, CHECKS[item.problem.code].severity, name,
                                              np.array([-1]), None, lambda k, p=item.problem: p.message))
            continue
        report.blocks.extend(_record_blocks(item, name))
        table = item.table
        assert table is not None
        raw = table.path
        joined = JoinedPaths(source.root, raw)
        facts = path_facts(raw)
        esc_idx = np.flatnonzero(escapes(source.root, raw, facts))
        block = _block("path_escapes_root", name, esc_idx, "path",
                       lambda k, j=joined, e=esc_idx, r=source.root: f"{j.at(int(e[k]))} is outside DATA_ROOT {r}")
        if block:
            report.blocks.append(block)
        exists = existing(source.root, raw, facts)
        miss_idx = np.flatnonzero(~exists & facts.valid)
        block = _block("media_missing", name, miss_idx, "path",
                       lambda k, j=joined, m=miss_idx: f"{j.at(int(m[k]))} does not exist")
        if block:
            report.blocks.append(block)
        joined_all.append(joined)
        raw_all.append(raw)
        cuts.append(table.cut)
        owners.append((name, table.n))
        roots.add(source.root)
        plain = plain and not facts.odd.any() and not facts.absolute.any()
        if probe:
            report.blocks.extend(_probe_blocks(table, name, joined(), exists, workers))
    keys = raw_all if plain and len(roots) == 1 else [joined() for joined in joined_all]
    report.blocks.extend(_duplicate_blocks(keys, np.concatenate(cuts) if cuts else None, joined_all, owners))
    return report


def _duplicate_blocks(keys: list[pa.Array | pa.ChunkedArray], cuts: np.ndarray | None, joined: list[JoinedPaths],
                      owners: list[tuple[str, int]]) -> list[FindingBlock]:
    """``duplicate_path`` warnings on every listing of a media path after its first (across all files).

    A listing with another ``cut`` (a scene of the same video, as ``osctl data import --scenes`` writes)
    is not a repeat; the same path with the same cut, or twice without one, is.

    ``keys`` identify a media file (the joined paths, or the annotation's own paths when every file
    shares one root and no path is absolute or odd); ``joined`` are shown in the messages.

    Found by :func:`osctl.data.paths.repeats`.
    """
    later, later_codes, first_of = repeats(keys, cuts)
    if not len(later):
        return []
    offsets = np.cumsum([0] + [n for _, n in owners])
    blocks = []
    for f, (name, _n) in enumerate(owners):
        inside = (later >= offsets[f]) & (later < offsets[f + 1])
        here = later[inside] - offsets[f]
        if not len(here):
            continue

        def message(k: int, here: np.ndarray = here, here_codes: np.ndarray = later_codes[inside],
                    paths: JoinedPaths = joined[f]) -> str:
            first_index = first_of[int(here_codes[k])]
            owner = int(np.searchsorted(offsets, first_index, side="right") - 1)
            return f"{paths.at(int(here[k]))} is also listed at {owners[owner][0]}:{first_index - int(offsets[owner])}"

        blocks.append(FindingBlock("duplicate_path", WARNING, name, here, "path", message))
    return blocks


def _probe_blocks(table: RecordTable, name: str, joined: pa.Array, exists: np.ndarray,
                  workers: int) -> list[FindingBlock]:
    from osctl.data.probe import probe_media

    kind = media_kinds(table.path)
    todo = np.flatnonzero(exists & (kind != KIND_UNKNOWN))
    infos = probe_media([joined[int(i)].as_py() for i in todo], [int(kind[i]) for i in todo], workers)
    rows: dict[tuple[str, str], list[tuple[int, str | None, str]]] = {}

    def add(code: str, severity: str, i: int, fld: str | None, message: str) -> None:
        rows.setdefault((code, severity), []).append((i, fld, message))

    h, w, nf, fps = table.height, table.width, table.num_frames, table.fps
    c0, c1 = table.cut[:, 0], table.cut[:, 1]
    for i, info in zip(todo.tolist(), infos, strict=True):
        if not info.ok:
            add("media_undecodable", ERROR, i, "path", f"{joined[i].as_py()} cannot be decoded: {info.error}")
            continue
        if not (np.isnan(h[i]) or np.isnan(w[i])) and (info.height, info.width) != (int(h[i]), int(w[i])):
            add("resolution_mismatch", ERROR, i, "resolution",
                f"annotation says {_num(h[i])}x{_num(w[i])} but the file decodes to {info.height}x{info.width} "
                "(height x width); the sample would be sized wrongly")
        if kind[i] != KIND_VIDEO or info.frames is None:
            continue
        if not np.isnan(c0[i]) and c1[i] > info.frames:
            add("cut_beyond_media", ERROR, i, "cut",
                f"cut ends at frame {_num(c1[i])} but the file has {info.frames} frames; decoding would fail")
        elif not np.isnan(nf[i]):
            start = 0.0 if np.isnan(c0[i]) else c0[i]
            if start + nf[i] > info.frames:
                add("frame_count_mismatch", ERROR, i, "num_frames",
                    f"num_frames {_num(nf[i])} from frame {_num(start)} needs {_num(start + nf[i])} frames but the "
                    f"file has {info.frames}; decoding would fail")
            elif np.isnan(c0[i]) and nf[i] != info.frames:
                add("frame_count_mismatch", WARNING, i, "num_frames",
                    f"num_frames is {_num(nf[i])} but the file has {info.frames} frames; only the first "
                    f"{_num(nf[i])} are used")
        if not np.isnan(fps[i]) and info.fps:
            diff = abs(fps[i] - info.fps)
            if diff >= 0.1:
                add("fps_mismatch", ERROR, i, "fps",
                    f"annotation says {_num(fps[i])} fps but the file plays at {info.fps:.3f}; resampling, frame "
                    "count and bucket would be wrong")
            elif diff > 0.01:
                add("fps_mismatch", WARNING, i, "fps",
                    f"annotation says {_num(fps[i])} fps, the file {info.fps:.3f} (too small to change sampling)")
    blocks = []
    for (code, severity), items in rows.items():
        blocks.append(FindingBlock(code, severity, name, np.array([r[0] for r in items]),
                                   (lambda k, items=items: items[k][1]), (lambda k, items=items: items[k][2])))
    return blocks


def checks_run(probe: bool) -> list[Check]:
    """The checks a run performs (the probe checks only with ``probe``)."""
    return [c for c in CHECKS.values() if probe or not c.probe]


__all__ = ["CHECKS", "ERROR", "WARNING", "Check", "DataSource", "Finding", "FindingBlock", "ValidationReport",
           "checks_run", "validate_data"]
