"""Arrow IPC files written first and given their metadata last are the files pyarrow writes in one go."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from osctl.data.ipc_file import rewrite_metadata, write_table
from tests.geometry_helpers import V13


def _plain(path: Path, table: pa.Table, metadata: dict[bytes, bytes]) -> bytes:
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema.with_metadata(metadata)) as writer:
        writer.write_table(table.replace_schema_metadata(metadata))
    return path.read_bytes()


def _tables() -> list[pa.Table]:
    rng = np.random.default_rng(0)
    n = 5000
    return [
        pa.table({"i": pa.array(np.arange(n, dtype=np.int64)), "f": pa.array(rng.random(n)),
                  "s": pa.array([f"path/{k}.mp4" for k in range(n)]),
                  "b": pa.array([json.dumps(["x" * (k % 50)]).encode() for k in range(n)], pa.binary()),
                  "k": pa.array(rng.integers(0, 3, n).astype(np.int8))}),
        pa.table({"i": pa.array([], pa.int32()), "s": pa.array([], pa.string())}),
        pa.table({"s": pa.array(["a", None, "ccc"]), "f": pa.array([1.0, None, float("nan")])}),
    ]


@pytest.mark.parametrize("which", [0, 1, 2])
def test_metadata_rewritten_in_place_gives_the_one_pass_file(tmp_path: Path, which: int) -> None:
    table = _tables()[which]
    final = {b"osctl.index": json.dumps({"sha256": "ab" * 32, "n": table.num_rows}).encode()}
    draft = {b"osctl.index": json.dumps({"sha256": "0" * 64, "n": table.num_rows}).encode()}
    path = tmp_path / "x.arrow"
    layout = write_table(path, table, draft)
    assert path.read_bytes() == _plain(tmp_path / "draft.arrow", table, draft)
    rewrite_metadata(path, table, layout, final)
    assert path.read_bytes() == _plain(tmp_path / "final.arrow", table, final)
    read = pa.ipc.open_file(pa.memory_map(str(path))).read_all()
    assert read.schema.metadata == final and read.num_rows == table.num_rows


def test_metadata_of_another_length_rewrites_the_whole_file(tmp_path: Path) -> None:
    table = _tables()[0]
    path = tmp_path / "x.arrow"
    layout = write_table(path, table, {b"k": b"short"})
    longer = {b"k": b"a much longer value " * 40}
    rewrite_metadata(path, table, layout, longer)
    assert path.read_bytes() == _plain(tmp_path / "plain.arrow", table, longer)


def test_the_index_is_the_same_whether_or_not_the_digests_were_ready(make_data: Any, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """write_index writes the columns before the annotation digests are known, then fills them in."""
    import time

    import osctl.data.annotations as annotations
    import osctl.data.index as index
    from osctl.data.annotations import read_annotations
    from osctl.data.bucket import BucketSettings, build_buckets
    from osctl.data.datatxt import load_data_txt
    from osctl.data.rules import FrameRules, ResolutionRules

    monkeypatch.setattr(time, "strftime", lambda *_args: "2026-01-01T00:00:00+0000")
    monkeypatch.setattr(annotations, "CHUNK_BYTES", 500)  # decoded in slices: the digest is pending
    monkeypatch.setattr(annotations, "hash_in_background", lambda digests: None)  # until asked for
    records = [{"path": f"v/{i}.mp4", "cap": f"clip {i}", "resolution": {"height": 720, "width": 1280},
                "num_frames": 100, "fps": 16} for i in range(60)]
    data_txt = make_data({"a.json": records, "b.json": records[:7]})
    settings = BucketSettings(frames=FrameRules(num_frames=29, train_fps=16),
                              resolution=ResolutionRules(mode="area", max_hxw=262144, hw_stride=32),
                              min_bucket_batches=1, geometry=V13)
    result = build_buckets(read_annotations(load_data_txt(data_txt)), settings)
    assert not isinstance(result.loaded[0].digest, str)  # still pending when the index is written
    path = index.write_index(result, data_txt, tmp_path / "out")
    meta = index.read_meta(path)
    assert meta["fingerprint"]["annotations"][0]["sha256"] == result.loaded[0].sha256 != index.PENDING_DIGEST
    expected = index.index_meta(result, data_txt)
    assert meta == json.loads(json.dumps(expected, default=str))
    table = index.index_table(result)
    assert path.read_bytes() == _plain(tmp_path / "plain.arrow", table, {index.META_KEY: json.dumps(expected, default=str).encode()})
