"""The cache's files: shards round-trip through the memory map, are plain safetensors, and are published
whole or not at all; the tables point into them; text states stored trimmed read back at the padded length."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest
import torch

from osctl.cache.store import (
    SHARDS,
    EncodedSample,
    ShardMap,
    ShardWriter,
    leftovers,
    read_table,
    shard_name,
    stored_text_length,
    text_key,
    write_tables,
)
from osctl.errors import StorageError


def _sample(i: int, *, views: int = 1, std: bool = True, texts: int = 2) -> EncodedSample:
    g = torch.Generator().manual_seed(i)
    item = EncodedSample(i)
    for _ in range(views):
        mean = torch.randn(3, 2, 4, 5, generator=g)
        item.views.append((mean, mean.abs() + 0.1 if std else None))
    for k in range(texts):
        item.texts.append((f"text {i} {k}", torch.randn(6, 4, generator=g), torch.tensor([1, 1, 1, 0, 0, 0])))
    return item


def _write(folder: Path, shard: int, items: list[EncodedSample], dtype: torch.dtype = torch.float32) -> Path:
    writer = ShardWriter(folder / SHARDS, shard, root=folder, dtype=dtype, spec_sha="s")
    for item in items:
        writer.add(item)
    writer.publish()
    return folder / SHARDS / shard_name(shard)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_shard_round_trips_through_the_tables_and_the_memory_map(tmp_path, dtype):
    items = [_sample(0, views=2), _sample(1, std=False), EncodedSample(2, bad=("undecodable", "x.mp4", "broken")),
             _sample(3, texts=0)]
    path = _write(tmp_path, 0, items, dtype)
    counts = write_tables(tmp_path, 4, 4, spec_sha="s")
    assert (counts["ok"], counts["bad"], counts["missing"], counts["texts"]) == (3, 1, 0, 4)
    samples, meta = read_table(tmp_path / "samples.arrow")
    texts, _ = read_table(tmp_path / "texts.arrow")
    assert meta["bad_samples"] == {"2": ["undecodable", "x.mp4", "broken"]}
    shards = ShardMap(tmp_path)
    for item in (items[0], items[1], items[3]):
        i = item.sample
        shape = tuple(int(samples[k][i]) for k in "cthw")
        size = torch.Size(shape).numel() * dtype.itemsize
        for v, (mean, std) in enumerate(item.views):
            offset = int(samples["latent_offset"][i]) + v * size * (2 if std is not None else 1)
            assert torch.equal(shards.tensor(0, offset, shape, dtype), mean.to(dtype))
            if std is not None:
                assert torch.equal(shards.tensor(0, offset + size, shape, dtype), std.to(dtype))
        start = int(samples["text_start"][i])
        for k, (text, states, mask) in enumerate(item.texts):
            assert int(texts["key"][start + k]) == text_key(text)
            offset = int(texts["offset"][start + k])
            assert torch.equal(shards.tensor(0, offset, (6, 4), dtype), states.to(dtype))
            assert torch.equal(shards.tensor(0, offset + 6 * 4 * dtype.itemsize, (6,), torch.int64), mask)
    # any safetensors reader opens a shard
    from safetensors.torch import load_file

    loaded = load_file(str(path))
    assert torch.equal(loaded["0/m1"], items[0].views[1][0].to(dtype)) and "1/s0" not in loaded


def test_a_full_disk_publishes_nothing_and_leaves_no_file(tmp_path, monkeypatch):
    folder = tmp_path
    _write(folder, 0, [_sample(0)])
    writer = ShardWriter(folder / SHARDS, 1, root=folder, dtype=torch.float32, spec_sha="s")
    writer.add(_sample(4))
    def full(source, target):
        target.write(b"x" * 100)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("osctl.cache.store._copy", full)
    with pytest.raises(StorageError, match=r"shard-000001"):
        writer.publish()
    assert sorted(p.name for p in (folder / SHARDS).iterdir()) == [shard_name(0)]
    assert not list(leftovers(folder))
    counts = write_tables(folder, 8, 4, spec_sha="s")
    assert (counts["ok"], counts["missing"]) == (1, 7)  # the rest stays usable


def test_shards_of_another_spec_are_not_read_into_the_tables(tmp_path):
    _write(tmp_path, 0, [_sample(0)])
    counts = write_tables(tmp_path, 1, 1, spec_sha="other")
    assert (counts["ok"], counts["missing"]) == (0, 1)


def test_trimmed_text_states_are_smaller_and_read_back_at_the_padded_length(tmp_path):
    g = torch.Generator().manual_seed(0)
    item = EncodedSample(0)
    item.views.append((torch.randn(3, 2, 4, 5, generator=g), None))
    masks = [[1, 1, 1, 0, 0, 0, 0, 0], [1, 0, 1, 1, 0, 0, 0, 0], [1] * 8, [0] * 8]  # a gap; full; no valid token
    for k, mask in enumerate(masks):
        item.texts.append((f"text {k}", torch.randn(8, 4, generator=g), torch.tensor(mask)))
    assert [stored_text_length(torch.tensor(m)) for m in masks] == [3, 4, 8, 8]
    sizes = {}
    for trim in (False, True):
        folder = tmp_path / str(trim)
        writer = ShardWriter(folder / SHARDS, 0, root=folder, dtype=torch.float32, spec_sha="s", trim_text=trim)
        writer.add(item)
        sizes[trim] = writer.publish()
        write_tables(folder, 1, 1, spec_sha="s")
        texts, _ = read_table(folder / "texts.arrow")
        assert texts["length"].tolist() == ([3, 4, 8, 8] if trim else [8] * 4)
        shards = ShardMap(folder)
        for row, (_, states, mask) in enumerate(item.texts):
            read, read_mask = shards.text(0, int(texts["offset"][row]), int(texts["length"][row]), (8, 4), torch.float32)
            n = int(texts["length"][row])
            assert read.shape == (8, 4) and torch.equal(read_mask, mask)
            assert torch.equal(read[:n], states[:n]) and not read[n:].any()
    assert sizes[False] - sizes[True] >= (5 + 4) * (4 * 4 + 8)  # the padding of the first two texts is not stored
