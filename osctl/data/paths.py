"""Facts about the media paths of annotation files: which exist, which leave DATA_ROOT, which repeat.

Used by ``osctl data validate`` (:mod:`osctl.data.validate`), vectorised over each file's path column:
a million paths cost a fraction of a second, and a file's folder is listed once instead of one
``stat`` per media file. The few paths that need it (``.``/``..`` segments, doubled slashes, absolute
paths elsewhere) are then normalised one by one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from osctl.data._fast import strings
from osctl.data.index import join_paths

ODD_SEGMENTS = r"(^|/)\.\.?(/|$)|//"
DOTDOT_SEGMENT = r"(^|/)\.\.(/|$)"


class JoinedPaths:
    """The paths of one file joined with its DATA_ROOT, built on demand.

    Messages need only a few of them when findings are shown as examples: :meth:`at` joins single
    paths until many have been asked for, then joins the whole column once.
    """

    SINGLE = 64

    def __init__(self, root: str, raw: pa.Array | pa.ChunkedArray) -> None:
        self._root = root
        self._raw = raw
        self._value: pa.Array | pa.ChunkedArray | None = None
        self._asked = 0

    def __call__(self) -> pa.Array | pa.ChunkedArray:
        if self._value is None:
            self._value = join_paths(self._root, self._raw)
        return self._value

    def at(self, i: int) -> str | None:
        """The joined path of record ``i``."""
        self._asked += 1
        if self._value is None and self._asked <= self.SINGLE:
            return join_paths(self._root, self._raw.slice(i, 1))[0].as_py()
        return self()[i].as_py()


@dataclass
class PathFacts:
    """Per-record facts about the annotation's own paths, computed once per file with numpy."""

    valid: np.ndarray
    absolute: np.ndarray
    odd: np.ndarray
    dotdot: np.ndarray
    slash: np.ndarray


def _matching(raw: pa.Array | pa.ChunkedArray, rows: np.ndarray, pattern: str) -> np.ndarray:
    """``pattern`` matched on the strings at ``rows`` only (a boolean mask); False for every other row."""
    out = np.zeros(len(raw), dtype=bool)
    if len(rows):
        found = pc.match_substring_regex(raw.take(pa.array(rows)), pattern)
        out[rows] = pc.fill_null(found, False).to_numpy(zero_copy_only=False)
    return out


def path_facts(raw: pa.Array | pa.ChunkedArray) -> PathFacts:
    """Validity, absolute, odd (``.``/``..`` segments, ``//``), ``..`` segments and last-slash position.

    The regular expressions only run on the few paths :func:`osctl.data._fast.strings.may_have_dot_segments`
    picks; every other path cannot match them.
    """
    candidates = np.flatnonzero(strings.may_have_dot_segments(raw))
    odd = _matching(raw, candidates, ODD_SEGMENTS)
    return PathFacts(valid=raw.is_valid().to_numpy(zero_copy_only=False),
                      absolute=strings.first_byte_is(raw, ord("/")), odd=odd,
                      dotdot=_matching(raw, candidates[odd[candidates]], DOTDOT_SEGMENT),
                      slash=strings.last_slash(raw))


def _folders(raw: pa.Array | pa.ChunkedArray, facts: PathFacts) -> list[str]:
    """The distinct parent folders of the paths (``""`` for a path without ``/``), in order of appearance.

    A folder is taken from each record whose folder differs from the previous record's (compared
    exactly, bytes and length), so a file listing one folder after another needs only a few strings.
    """
    lengths = np.maximum(facts.slash, 0)
    previous_valid = np.concatenate([[False], facts.valid[:-1]])
    heads = np.flatnonzero(facts.valid & ~(strings.same_as_previous(raw, lengths) & previous_valid))
    if not len(heads):
        return []
    texts = raw.take(pa.array(heads)).to_pylist()
    seen: dict[str, None] = {}
    for text, length in zip(texts, lengths[heads].tolist(), strict=True):
        seen.setdefault(text.encode()[:length].decode(), None)
    return list(seen)


def existing(root: str, raw: pa.Array | pa.ChunkedArray, facts: PathFacts) -> np.ndarray:
    """Which media files exist, listing each parent folder once instead of one ``stat`` per file.

    Works on the annotation's own (short) paths: folders are listed relative to ``root`` (absolute
    paths as they are) and their entries compared with the paths; odd paths (and absolute paths right
    under ``/``) are checked one by one.
    """
    n = len(raw)
    exists = np.zeros(n, dtype=bool)
    if not facts.valid.any():
        return exists
    odd = facts.odd | (facts.absolute & (facts.slash == 0))
    listed: list[str] = []
    for folder in _folders(raw, facts):
        real = folder if folder.startswith("/") else os.path.join(root, folder) if folder else root
        try:
            with os.scandir(real) as entries:
                prefix = f"{folder}/" if folder else ""
                listed.extend(prefix + entry.name for entry in entries if not entry.is_dir())
        except OSError:
            continue
    if listed:
        exists = pc.fill_null(pc.is_in(raw, value_set=pa.array(listed, type=pa.string())), False).to_numpy(
            zero_copy_only=False).copy()
    rows = np.flatnonzero(odd & facts.valid)
    if len(rows):
        paths = join_paths(root, raw.take(pa.array(rows))).to_pylist()
        exists[rows] = [os.path.isfile(path) for path in paths]
    return exists


def escapes(root: str, raw: pa.Array | pa.ChunkedArray, facts: PathFacts) -> np.ndarray:
    """Records whose path leaves DATA_ROOT (``..`` segments or an absolute path elsewhere).

    An absolute path without ``.``/``..`` segments or ``//`` only needs a prefix test (normalising it
    at most drops a trailing ``/``); the others are normalised one by one.
    """
    out = np.zeros(len(raw), dtype=bool)
    prefix = root.rstrip("/") + "/"
    plain = np.flatnonzero(facts.absolute & ~facts.odd)
    if len(plain):
        subset = raw.take(pa.array(plain))
        inside = pc.or_(pc.starts_with(subset, prefix), pc.equal(subset, prefix[:-1]))
        out[plain] = ~pc.fill_null(inside, True).to_numpy(zero_copy_only=False)
    rows = np.flatnonzero((facts.absolute & facts.odd) | facts.dotdot)
    if len(rows):
        for i, path in zip(rows.tolist(), raw.take(pa.array(rows)).to_pylist(), strict=True):
            joined = os.path.normpath(os.path.join(root, path))
            out[i] = not (joined + "/").startswith(prefix)
    return out


def _flat(pieces: list[pa.Array | pa.ChunkedArray]) -> pa.ChunkedArray:
    chunks = [c for piece in pieces for c in (piece.chunks if isinstance(piece, pa.ChunkedArray) else [piece])]
    return pa.chunked_array(chunks, type=pa.string())


def repeats(keys: list[pa.Array | pa.ChunkedArray], spans: np.ndarray | None = None,
            ) -> tuple[np.ndarray, np.ndarray, dict[int, int]]:
    """Records that repeat an earlier record's key, over all ``keys`` arrays taken as one column.

    Returns ``(later, codes, first)``: the global positions of every repeat after the first listing,
    the code of each one's key, and the global position of each code's first listing. Only records
    whose 64-bit string hash (:func:`osctl.data._fast.strings.hashes`) is shared with another record can
    repeat one; those few are then compared exactly (Arrow dictionary encoding).

    ``spans`` (one row per record, e.g. the ``cut`` column; NaN for "absent"): a record repeats another
    only when its row equals the other's too, so the scenes of one video (same path, other cuts) do not.
    """
    nothing: tuple[np.ndarray, np.ndarray, dict[int, int]] = (np.zeros(0, np.int64), np.zeros(0, np.int64), {})
    if not keys:
        return nothing
    valid = np.concatenate([k.is_valid().to_numpy(zero_copy_only=False) for k in keys])
    if not valid.any():
        return nothing
    hashes = np.concatenate([strings.hashes(k) for k in keys])
    ordered = np.sort(hashes[valid])
    shared = ordered[1:][ordered[1:] == ordered[:-1]]
    if not len(shared):
        return nothing
    candidates = np.flatnonzero(valid & np.isin(hashes, shared))
    encoded = pc.dictionary_encode(_flat(keys).take(pa.array(candidates)))
    codes = np.concatenate([c.indices.to_numpy(zero_copy_only=False).astype(np.int64) for c in encoded.chunks]) \
        if encoded.num_chunks else np.zeros(0, np.int64)
    local = np.flatnonzero(np.bincount(codes)[codes] > 1)
    if not len(local):
        return nothing
    repeated, repeated_codes = candidates[local], codes[local]
    if spans is not None:  # split each key's group by span; only groups still holding two records repeat
        rows = np.column_stack([repeated_codes.astype(np.float64), np.nan_to_num(spans[repeated], nan=-1.0)])
        _, repeated_codes = np.unique(rows, axis=0, return_inverse=True)
        repeated_codes = repeated_codes.reshape(-1).astype(np.int64)
        still = np.bincount(repeated_codes)[repeated_codes] > 1
        repeated, repeated_codes = repeated[still], repeated_codes[still]
        if not len(repeated):
            return nothing
    _, first = np.unique(repeated_codes, return_index=True)
    first_of = dict(zip(repeated_codes[first].tolist(), repeated[first].tolist(), strict=True))
    later_mask = repeated != np.array([first_of[c] for c in repeated_codes.tolist()])
    later, later_codes = repeated[later_mask], repeated_codes[later_mask]
    return later, later_codes, first_of
