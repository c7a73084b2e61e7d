"""The local engine: results in input order whatever finishes first, every result reported once."""

from __future__ import annotations

import os
from typing import Any

import pytest

from osctl.curate.engines import LocalEngine, chunk_items, make_engine
from osctl.errors import UsageError


def _square_with_pid(context: Any, item: int) -> tuple[int, int]:
    return item * item + context, os.getpid()


@pytest.mark.parametrize("workers", [1, 2])
def test_local_engine_keeps_the_order_and_reports_each_result(workers: int) -> None:
    seen: list[int] = []
    results = LocalEngine(workers).map(_square_with_pid, list(range(40)), context=1,
                                       on_result=lambda i, r: seen.append(i))
    assert [r[0] for r in results] == [i * i + 1 for i in range(40)]
    assert sorted(seen) == list(range(40))
    pids = {r[1] for r in results}
    assert (pids == {os.getpid()}) if workers == 1 else (os.getpid() not in pids)


def test_chunks_cover_every_item_once() -> None:
    chunks = chunk_items(list("abcdefghij"), slots=2)
    assert [i for chunk in chunks for i, _ in chunk] == list(range(10)) and len(chunks) == 5
    assert len(chunk_items(list(range(10_000)), slots=2)) == 157  # at most 64 items per chunk


def test_engine_choice_errors() -> None:
    with pytest.raises(UsageError, match="--engine 'spark' is not an engine; use one of local, ray"):
        make_engine("spark")
    with pytest.raises(UsageError, match="--address names a Ray cluster; add --engine ray"):
        make_engine("local", address="auto")

