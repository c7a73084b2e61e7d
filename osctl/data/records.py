"""The Open-Sora-Plan v1.3 annotation record: its fields, their types and the media kinds.

This is the one module that knows the record layout (reference §1.2). Everything else receives
columns (:class:`osctl.data.table.RecordTable`) built from the typed structs declared here.

Fields (all optional at the type level; the checks in :mod:`osctl.data.validate` and the rules in
:mod:`osctl.data.rules` decide what a record needs):

========== ============================ =============================================================
field      type                         meaning
========== ============================ =============================================================
path       str                          media path, joined with the DATA_ROOT of its data.txt line
cap        str or list of str           caption(s); one is chosen per read (kept as JSON text)
resolution {height: int, width: int}    size of the full decoded frame, in pixels
num_frames int (videos)                 frames of the usable clip starting at ``cut[0]``
fps        number (videos)              frame rate of the file
aesthetic  finite number                aesthetic score (``aes`` is accepted as an alias)
cut        [start_frame, end_frame]     usable frame span; the whole clip when absent
crop       [x0, x1, y0, y1]             spatial crop applied before sizing; full frame when absent
tech       finite number                technical quality score, used only by recipe filters
motion     finite number                motion score, used only by recipe filters
========== ============================ =============================================================

Images and videos are told apart by the extension of ``path`` (case-insensitive): see
:data:`IMAGE_EXTENSIONS` and :data:`VIDEO_EXTENSIONS`.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from typing import Annotated, Any

import msgspec

IMAGE_EXTENSIONS: frozenset[str] = frozenset({"jpg", "jpeg", "png", "webp", "bmp"})
"""Extensions (lower case, no dot) read as single-frame image samples."""

VIDEO_EXTENSIONS: frozenset[str] = frozenset({"mp4", "mov", "mkv", "webm", "avi"})
"""Extensions (lower case, no dot) read as video samples."""

KIND_VIDEO = 0
KIND_IMAGE = 1
KIND_UNKNOWN = 2
KIND_NAMES = {KIND_VIDEO: "video", KIND_IMAGE: "image", KIND_UNKNOWN: "unknown"}

RECORD_FIELDS: tuple[str, ...] = (
    "path", "cap", "resolution", "num_frames", "fps", "aesthetic", "aes", "cut", "crop", "tech", "motion",
)
SCORE_FIELDS: tuple[str, ...] = ("aesthetic", "aes", "tech", "motion")

MAX_FRAMES = 10_000_000
"""Most frames a record may count (``num_frames``, ``cut`` ends): 10^7 frames are 46 hours at 60 fps,
far beyond any training clip; a larger value is a broken annotation (and overflows the frame arithmetic)."""

MAX_SIDE = 65_536
"""Most pixels a frame side may have (``resolution``, ``crop``): 2^16, above 16K video (15360 px) and the
largest frames JPEG and WebP can store (65535 px); area products of such sides still fit in int64."""

MAX_FPS = 1_000.0
"""Highest plausible frame rate of a file (``fps``): playback rates are 24-240 (high-speed footage is
stored at a playback rate); resampling a 10^308 fps clip to the training rate overflows."""

MIN_FPS = 0.01
"""Lowest plausible positive frame rate (one frame every 100 s, slower than any slideshow video): a
1e-300 fps clip would give 10^300 candidate frames. Zero and negative rates are ``bad_fps`` instead."""

PLAUSIBLE_MAX: dict[str, float] = {"num_frames": MAX_FRAMES, "resolution.height": MAX_SIDE,
                                   "resolution.width": MAX_SIDE, "fps": MAX_FPS, "cut": MAX_FRAMES,
                                   "crop": MAX_SIDE}
"""The upper bound of every bounded field (``out_of_range`` above it): the one place these limits live."""

PLAUSIBLE_MIN: dict[str, float] = {"fps": MIN_FPS}
"""Lower bounds of positive values (``out_of_range`` when above 0 but below the bound)."""

_NAN = math.nan
_DBL_MAX = sys.float_info.max

Finite = Annotated[float, msgspec.Meta(ge=-_DBL_MAX, le=_DBL_MAX)]
"""A float that must be finite: NaN and infinities fail typed decoding."""


class Resolution(msgspec.Struct, frozen=True, gc=False):
    """``resolution`` of a record: the full decoded frame size in pixels (NaN when absent)."""

    height: float | None = _NAN
    width: float | None = _NAN


NO_RESOLUTION = Resolution()
RAW_NULL = msgspec.Raw(b"null")
NO_CUT: tuple[float, float] = (_NAN, _NAN)
NO_CROP: tuple[float, float, float, float] = (_NAN, _NAN, _NAN, _NAN)


class Record(msgspec.Struct, gc=False):
    """One annotation record as decoded by msgspec (unknown keys are ignored).

    Every number decodes to a Python float (integer fields included: their integrality is checked on
    the columns, see :func:`osctl.data.columns.build_columns`) and absent keys take NaN defaults
    (:data:`NO_RESOLUTION`, :data:`NO_CUT` and :data:`NO_CROP` for the nested values). Rows of numbers
    then have one fixed binary layout that numpy reads in one step. An explicit ``null`` decodes to
    ``None`` and is treated exactly like an absent key (on a slower path).

    ``cap`` is kept as its JSON text (:class:`msgspec.Raw`): captions are the bulk of a file and are
    only checked (:func:`caption_states`) and copied into the index, never needed as Python strings.
    """

    path: str | None = None
    cap: msgspec.Raw = RAW_NULL
    resolution: Resolution | None = NO_RESOLUTION
    num_frames: float | None = _NAN
    fps: Finite | None = _NAN
    aesthetic: Finite | None = _NAN
    aes: Finite | None = _NAN
    cut: tuple[float, float] | None = NO_CUT
    crop: tuple[float, float, float, float] | None = NO_CROP
    tech: Finite | None = _NAN
    motion: Finite | None = _NAN


class ObjectRecord(Record, gc=False):
    """A record converted from Python objects (pickle, parquet, lenient reading): ``cap`` is a value."""

    cap: Any = None  # type: ignore[assignment]


CAP_MISSING = 0
CAP_OK = 1
CAP_BLANK = 2
CAP_WRONG_TYPE = 3
"""Caption states: absent/null, usable, empty or blank (or a list with an empty item), wrong type."""

_CAPTION_LIST = msgspec.json.Decoder(list[Any])
_STRING = msgspec.json.Decoder(str)


def caption_state(raw: bytes | memoryview | msgspec.Raw) -> tuple[int, str | None]:
    """State of one caption given its JSON text, plus a message when the type is wrong."""
    raw = memoryview(raw)
    head = bytes(raw[:1])
    if head == b"n":
        return CAP_MISSING, None
    if head == b'"':
        return (CAP_BLANK if not _STRING.decode(raw).strip() else CAP_OK), None
    if head == b"[":
        items = _CAPTION_LIST.decode(raw)
        for k, item in enumerate(items):
            if not isinstance(item, str):
                return CAP_WRONG_TYPE, f"cap[{k}] is a {_type_name(item)}, expected a string"
        if not items or any(not item.strip() for item in items):
            return CAP_BLANK, None
        return CAP_OK, None
    value = msgspec.json.decode(raw)
    return CAP_WRONG_TYPE, f"cap is a {_type_name(value)}, expected a string or a list of strings"


def media_kind(path: str) -> int:
    """``KIND_VIDEO``, ``KIND_IMAGE`` or ``KIND_UNKNOWN`` from the extension of ``path`` (any case)."""
    name = path.rsplit("/", 1)[-1]
    if "." not in name:
        return KIND_UNKNOWN
    ext = name.rsplit(".", 1)[-1].lower()
    if ext in VIDEO_EXTENSIONS:
        return KIND_VIDEO
    if ext in IMAGE_EXTENSIONS:
        return KIND_IMAGE
    return KIND_UNKNOWN


class FieldIssue(msgspec.Struct, frozen=True):
    """A problem found while reading one record leniently: which field and what is wrong."""

    code: str
    field: str
    message: str


def _is_int(value: Any) -> bool:
    """An integer, or a float with an integral value (``720.0``), never a bool."""
    return type(value) is int or (type(value) is float and value.is_integer())


def _is_number(value: Any) -> bool:
    return type(value) in (int, float)


def _type_name(value: Any) -> str:
    return {dict: "object", list: "array", tuple: "array", str: "string", bool: "boolean", type(None): "null",
            int: "integer", float: "number"}.get(type(value), type(value).__name__)


def inspect_record(obj: Any) -> tuple[ObjectRecord, list[FieldIssue]]:
    """Read one record that failed typed decoding, keeping every valid field and naming each bad one.

    Returns an :class:`ObjectRecord` whose invalid fields are replaced by their "absent" default, plus one
    :class:`FieldIssue` per problem (``not_an_object``, ``wrong_type``, ``not_finite``, ``bad_fps``,
    ``bad_cut``, ``bad_crop``). This is the slow, per-record path; files that decode cleanly never
    reach it.
    """
    issues: list[FieldIssue] = []
    if not isinstance(obj, dict):
        issues.append(FieldIssue("not_an_object", "", f"record is a JSON {_type_name(obj)}, expected an object"))
        return ObjectRecord(), issues
    values: dict[str, Any] = {}

    path = obj.get("path")
    if path is not None and not isinstance(path, str):
        issues.append(FieldIssue("wrong_type", "path", f"path is a {_type_name(path)}, expected a string"))
    elif path is not None:
        values["path"] = path

    cap = obj.get("cap")
    if isinstance(cap, str):
        values["cap"] = cap
    elif isinstance(cap, list | tuple):
        bad = [i for i, item in enumerate(cap) if not isinstance(item, str)]
        if bad:
            issues.append(FieldIssue("wrong_type", f"cap[{bad[0]}]",
                                     f"cap[{bad[0]}] is a {_type_name(cap[bad[0]])}, expected a string"))
        else:
            values["cap"] = list(cap)
    elif cap is not None:
        issues.append(FieldIssue("wrong_type", "cap", f"cap is a {_type_name(cap)}, expected a string or a list of strings"))
    values.setdefault("cap", None)

    res = obj.get("resolution")
    if isinstance(res, dict):
        dims: dict[str, int | None] = {}
        for key in ("height", "width"):
            value = res.get(key)
            if value is None or _is_int(value):
                dims[key] = None if value is None else float(value)
            else:
                issues.append(FieldIssue("wrong_type", f"resolution.{key}",
                                         f"resolution.{key} is {value!r} ({_type_name(value)}), expected an integer"))
                dims[key] = None
        values["resolution"] = Resolution(**{k: v for k, v in dims.items() if v is not None})  # type: ignore[arg-type]
    elif res is not None:
        issues.append(FieldIssue("wrong_type", "resolution",
                                 f"resolution is a {_type_name(res)}, expected an object with height and width"))

    num_frames = obj.get("num_frames")
    if num_frames is not None:
        if _is_int(num_frames):
            values["num_frames"] = float(num_frames)
        else:
            issues.append(FieldIssue("wrong_type", "num_frames",
                                     f"num_frames is {num_frames!r} ({_type_name(num_frames)}), expected an integer"))

    for key in ("fps", *SCORE_FIELDS):
        value = obj.get(key)
        if value is None:
            continue
        if not _is_number(value):
            issues.append(FieldIssue("wrong_type", key, f"{key} is {value!r} ({_type_name(value)}), expected a number"))
        elif not math.isfinite(value):
            code = "bad_fps" if key == "fps" else "not_finite"
            issues.append(FieldIssue(code, key, f"{key} is {value!r}, expected a finite number"))
        else:
            values[key] = float(value)

    for key, size, names in (("cut", 2, "[start_frame, end_frame]"), ("crop", 4, "[x0, x1, y0, y1]")):
        value = obj.get(key)
        if value is None:
            continue
        if isinstance(value, list | tuple) and len(value) == size and all(_is_int(v) for v in value):
            values[key] = tuple(float(v) for v in value)
        else:
            issues.append(FieldIssue(f"bad_{key}", key, f"{key} is {value!r}, expected {size} integers {names}"))
    return ObjectRecord(**values), issues


RECORD_LIST = msgspec.json.Decoder(list[Record])
"""Typed decoding of a JSON array of records: fast, and fails at the first record that is not well typed."""
RECORD = msgspec.json.Decoder(Record)
"""Typed decoding of one JSON record."""
RAW_LIST = msgspec.json.Decoder(list[msgspec.Raw])
"""A JSON array split into its records' raw texts (to decode them one by one)."""
ANY_JSON = msgspec.json.Decoder()
"""Untyped JSON decoding (what :func:`inspect_record` reads)."""

Issues = list[tuple[int, FieldIssue]]
"""``(record index, issue)`` pairs of records that are not well typed."""


def records_from_raws(raws: Sequence[msgspec.Raw]) -> tuple[list[Record], Issues]:
    """Each raw JSON record decoded on its own; those that fail typed decoding are read leniently
    (:func:`inspect_record`), so that every problem of every record is named."""
    records: list[Record] = []
    issues: Issues = []
    for index, raw in enumerate(raws):
        try:
            records.append(RECORD.decode(raw))
        except msgspec.ValidationError:
            record, found = inspect_record(ANY_JSON.decode(raw))
            records.append(record)
            issues.extend((index, issue) for issue in found)
    return records, issues


def records_from_objects(items: Sequence[Any]) -> tuple[list[Record], Issues]:
    """Typed conversion of Python records (pickles, parquet rows, Python's JSON parser); per-record lenient
    reading of those that fail, as :func:`records_from_raws`."""
    try:
        return msgspec.convert(items, list[ObjectRecord]), []  # type: ignore[return-value]
    except msgspec.ValidationError:
        pass
    records: list[Record] = []
    issues: Issues = []
    for index, item in enumerate(items):
        try:
            records.append(msgspec.convert(item, ObjectRecord))
        except msgspec.ValidationError:
            record, found = inspect_record(item)
            records.append(record)
            issues.extend((index, issue) for issue in found)
    return records, issues
