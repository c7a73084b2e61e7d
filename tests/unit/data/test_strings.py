"""numpy facts about Arrow string columns agree with plain Python on every string, chunk and slice."""

from __future__ import annotations

import re

import numpy as np
import pyarrow as pa
import pytest

from osctl.data._fast import strings

ODD = re.compile(r"(^|/)\.\.?(/|$)|//")


def _values(n: int, seed: int) -> list[str | None]:
    rng = np.random.default_rng(seed)
    alphabet = [*"ab/./cé_", "//", "..", "xyzxyzxyz"]
    out: list[str | None] = []
    for _ in range(n):
        if rng.random() < 0.05:
            out.append(None)
        else:
            out.append("".join(rng.choice(alphabet, int(rng.integers(0, 12)))))
    return out


def _layouts(values: list[str | None]) -> list[pa.Array | pa.ChunkedArray]:
    array = pa.array(values, pa.string())
    third = len(values) // 3
    return [array, array.slice(5, len(values) - 9), pa.array(values, pa.large_string()),
            pa.chunked_array([array.slice(0, third), array.slice(third, 0), array.slice(third)])]


@pytest.mark.parametrize("seed", [0, 1])
def test_facts_match_python(seed: int) -> None:
    for column in _layouts(_values(3000, seed)):
        values = [v or "" for v in column.to_pylist()]
        encoded = [v.encode() for v in values]
        assert strings.last_slash(column).tolist() == [b.rfind(b"/") for b in encoded]
        assert strings.first_byte_is(column, ord("/")).tolist() == [v.startswith("/") for v in values]
        candidates = strings.may_have_dot_segments(column)
        assert all(candidates[i] for i, v in enumerate(values) if ODD.search(v))
        hashes = strings.hashes(column)
        by_value: dict[bytes, int] = {}
        for b, h in zip(encoded, hashes.tolist(), strict=True):
            assert by_value.setdefault(b, h) == h
        assert len(set(by_value.values())) == len(by_value)  # no collision among a few thousand strings
        lengths = np.maximum(strings.last_slash(column), 0)
        prefix_hashes = strings.hashes(column, lengths)
        by_prefix: dict[bytes, int] = {}
        for b, size, h in zip(encoded, lengths.tolist(), prefix_hashes.tolist(), strict=True):
            assert by_prefix.setdefault(b[:size], h) == h
        same = strings.same_as_previous(column, lengths)
        starts = set(np.cumsum([0] + [len(c) for c in getattr(column, "chunks", [column])]).tolist())
        for i in range(len(values)):
            expected = i not in starts and lengths[i] == lengths[i - 1] and \
                encoded[i][:lengths[i]] == encoded[i - 1][:lengths[i - 1]]
            assert same[i] == expected, (i, values[i - 1:i + 1])


def test_empty_columns() -> None:
    for column in (pa.array([], pa.string()), pa.array([None, None], pa.string()), pa.chunked_array([], pa.string())):
        assert len(strings.hashes(column)) == len(column)
        assert strings.last_slash(column).tolist() == [-1] * len(column)
        assert not strings.may_have_dot_segments(column).any()
        assert not strings.first_byte_is(column, 47).any()
