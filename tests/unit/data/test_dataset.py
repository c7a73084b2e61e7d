"""The dataset and batch source over a real index of coded videos: exact frames, worker-independent and
resumable batches, bad media replaced and counted, a broken bucket stopping instead of hanging, padding."""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from osctl.data.stream.captions import CaptionPolicy
from osctl.data.stream.dataset import BadSampleStats, Collate, PadSpec, ReadSettings, SampleDataset
from osctl.data.stream.loader import IndexBatchSource, _pad_spec
from osctl.data.stream.sampler import BucketBatchSampler, sample_rng
from osctl.errors import ConfigError, DataError
from tests.geometry_helpers import V13
from tests.unit.data.pipeline_helpers import (
    coded_video,
    decode_frame_ids,
    image_record,
    make_index,
    settings,
    still_image,
    video_record,
)

SETTINGS = settings(num_frames=9, train_fps=12, min_frames=5, max_hxw=1024, hw_stride=16)


def fake_tokenize(texts: list[str]) -> dict[str, torch.Tensor]:
    """Byte ids padded to 24 (a stand-in for the text encoder's tokenizer)."""
    ids = torch.zeros(len(texts), 24, dtype=torch.long)
    for i, text in enumerate(texts):
        data = list(text.encode()[:24])
        ids[i, : len(data)] = torch.tensor(data, dtype=torch.long) if data else ids[i, :0]
    return {"input_ids": ids, "attention_mask": (ids > 0).long()}


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict]]:
    """12 videos of 4 frame rates and 2 sizes, 4 images, one short clip, one missing-file record."""
    root = tmp_path_factory.mktemp("clips")
    media = root / "media"
    records = []
    for i, (fps, frames) in enumerate([(24, 40), (30, 50), (12, 20), (15, 30)] * 3):
        size = (64, 64) if i % 2 == 0 else (48, 80)
        coded_video(media / f"v{i:02d}.mp4", frames, fps, size)
        records.append(video_record(f"v{i:02d}.mp4", frames, fps, size, cap=[f"clip {i}", f"video {i}"],
                                    aesthetic=6.0 if i % 3 == 0 else 5.0))
    for j in range(4):
        still_image(media / f"i{j}.png", (64, 64), 40 * j)
        records.append(image_record(f"i{j}.png", (64, 64)))
    coded_video(media / "short.mp4", 8, 12, (64, 64))
    records.append(video_record("short.mp4", 8, 12, (64, 64)))
    return root, records


@pytest.fixture(scope="module")
def index(clips, tmp_path_factory):
    root, records = clips
    folder = tmp_path_factory.mktemp("index")
    (folder / "media").symlink_to(root / "media")
    return make_index(folder, records, SETTINGS)


def _dataset(index, **changes) -> SampleDataset:
    read = ReadSettings(frames=SETTINGS.frames, resolution=SETTINGS.resolution,
                        captions=CaptionPolicy(cfg=0.0, clean=False), seed=42, geometry=SETTINGS.geometry, **changes)
    return SampleDataset(index, read)


def _source(index, *, workers=0, batch=2, dp_size=1, dp_rank=0, dataset=None, max_bad=0.5, tokenize=fake_tokenize):
    dataset = dataset or _dataset(index)
    sampler = BucketBatchSampler(index.bucket_ids(), batch_size=batch, dp_size=dp_size, dp_rank=dp_rank, seed=42,
                                 members=dataset.members)
    return IndexBatchSource(dataset, sampler, Collate(tokenize, global_batch=sampler.global_batch), num_workers=workers,
                            max_bad_fraction=max_bad, timeout_s=120)


def _take(source, n):
    stream = iter(source)
    return [next(stream) for _ in range(n)]


def test_index_shapes(index):
    keys = {b["key"]: b["count"] for b in index.buckets}
    assert keys == {"9x32x32": 6, "9x16x32": 6, "1x32x32": 4, "5x32x32": 1}


def test_exact_frame_indices_for_given_seeds(index):
    ds = _dataset(index)
    sample = next(i for i in range(len(index)) if index.sample(i).path.endswith("v01.mp4"))  # 30 fps, 50 frames
    # 30 -> 12 fps: interval 2.5, 20 candidates floor(2.5 k); a window of 9 drawn from (seed 42, epoch, position)
    expected = {(0, 0): [0, 2, 5, 7, 10, 12, 15, 17, 20], (0, 1): [12, 15, 17, 20, 22, 25, 27, 30, 32],
                (3, 5): [2, 5, 7, 10, 12, 15, 17, 20, 22]}
    for (epoch, position), frames in expected.items():
        assert ds.frame_indices(sample, sample_rng(42, epoch, position)).tolist() == frames
        item = ds[(sample, epoch, position)]
        pixels = item["pixel_values"]
        assert pixels.shape == (3, 9, 16, 32)
        grey = ((pixels[0, :, 8, 16] + 1) / 2 * 255).numpy()
        assert decode_frame_ids(grey) == frames  # the decoded frames are exactly those
    short = next(i for i in range(len(index)) if index.sample(i).path.endswith("short.mp4"))
    assert ds.frame_indices(short, sample_rng(42, 0, 0)).tolist() == [0, 1, 2, 3, 4]


def test_images_and_captions_in_items(index):
    ds = _dataset(index)
    image = next(i for i in range(len(index)) if index.sample(i).path.endswith("i2.png"))
    item = ds[(image, 0, 0)]
    assert item["pixel_values"].shape == (3, 1, 32, 32) and item["text"] == "image i2.png"
    assert torch.allclose(item["pixel_values"], torch.full((3, 1, 32, 32), 80 / 255 * 2 - 1), atol=1e-5)
    video = next(i for i in range(len(index)) if index.sample(i).path.endswith("v03.mp4"))  # aesthetic 6.0
    texts = {ds[(video, 0, p)]["text"] for p in range(12)}
    assert all(t.startswith(("clip 3", "video 3")) or t.endswith(("clip 3", "video 3")) for t in texts)
    assert any(len(t) > len("video 3") for t in texts)  # an aesthetic sentence was added


def test_batches_do_not_depend_on_workers_and_resume_exactly(index):
    plain = _take(_source(index, workers=0), 11)  # crosses the epoch boundary (8 steps per epoch)
    workers = _take(_source(index, workers=2), 11)
    for a, b in zip(plain, workers, strict=True):
        assert torch.equal(a["pixel_values"], b["pixel_values"]) and a["texts"] == b["texts"]
        assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["samples"], b["samples"])
    for n_workers in (0, 2):
        first = _source(index, workers=n_workers)
        head = _take(first, 4)
        state = first.state_dict()
        assert (state["epoch"], state["position"]) == (0, 4)
        second = _source(index, workers=n_workers)
        second.load_state_dict(state)
        tail = _take(second, 7)
        for a, b in zip(head + tail, plain, strict=True):
            assert torch.equal(a["pixel_values"], b["pixel_values"]) and a["texts"] == b["texts"]
    assert first.steps_per_epoch == 8  # 6 // 2 + 6 // 2 + 4 // 2 + 1 // 2


def test_two_ranks_get_one_shape_per_step(index):
    ranks = [_source(index, dp_size=2, dp_rank=r, batch=1) for r in (0, 1)]
    a, b = (_take(r, ranks[0].steps_per_epoch) for r in ranks)
    seen = []
    for x, y in zip(a, b, strict=True):
        assert x["pixel_values"].shape == y["pixel_values"].shape
        seen += x["samples"].tolist() + y["samples"].tolist()
    assert len(seen) == len(set(seen)) == len(index) - ranks[0].sampler.dropped_per_epoch


def test_bad_file_is_replaced_counted_and_logged_once(index, tmp_path, caplog):
    from osctl.data.stream import dataset as dataset_module

    bad = next(i for i in range(len(index)) if index.sample(i).path.endswith("v00.mp4"))
    ds = _dataset(index)
    original = ds.load

    def load(sample, rng):
        if sample == bad:
            from osctl.data.stream.reader import MediaError

            raise MediaError("undecodable", index.sample(sample).path, "neither decord nor PyAV can decode it")
        return original(sample, rng)

    ds.load = load  # type: ignore[method-assign]
    item = ds[(bad, 0, 0)]
    assert item["sample"] != bad and index.bucket_ids()[item["sample"]] == index.bucket_ids()[bad]
    assert [e.code for e in item["events"]] == ["undecodable"]
    source = _source(index, dataset=ds)
    with caplog.at_level(logging.WARNING, logger=dataset_module.log.name):
        _take(source, 3 * source.steps_per_epoch)  # three epochs: the file is drawn three times
    stats = source.stats()
    assert stats["bad_samples"] == 1 and stats["bad_reads"] >= 2 and stats["replaced"] == stats["bad_reads"]
    assert stats["by_code"] == {"undecodable": stats["bad_reads"]} and "v00.mp4" in stats["examples"][0]
    assert sum("v00.mp4" in r.getMessage() for r in caplog.records) == 1


def test_real_corrupt_and_missing_files_on_disk(clips, tmp_path):
    root, records = clips
    (tmp_path / "media").mkdir()
    for name in ("v00.mp4", "v02.mp4", "v04.mp4", "v06.mp4"):
        (tmp_path / "media" / name).symlink_to(root / "media" / name)
    (tmp_path / "media" / "v08.mp4").write_bytes((root / "media" / "v08.mp4").read_bytes()[:300])  # truncated
    chosen = [r for r in records if r["path"] in ("v00.mp4", "v02.mp4", "v04.mp4", "v06.mp4", "v08.mp4", "v10.mp4")]
    idx = make_index(tmp_path, chosen, SETTINGS)  # v10.mp4 is missing on disk
    source = _source(idx, max_bad=0.5)
    batches = _take(source, 2 * source.steps_per_epoch)
    assert all(b["pixel_values"].shape == (2, 3, 9, 32, 32) for b in batches)
    stats = source.stats()
    assert stats["bad_samples"] == 2 and set(stats["by_code"]) <= {"undecodable", "truncated", "missing"}
    assert "missing" in stats["by_code"]


def test_a_whole_broken_bucket_stops_after_the_retry_bound(clips, tmp_path):
    root, records = clips
    (tmp_path / "media").mkdir()
    for name in ("v00.mp4", "v02.mp4"):
        (tmp_path / "media" / name).symlink_to(root / "media" / name)
    for name in ("v01.mp4", "v03.mp4", "v05.mp4"):
        (tmp_path / "media" / name).write_bytes(b"\x00" * 512)
    chosen = [r for r in records if r["path"] in ("v00.mp4", "v02.mp4", "v01.mp4", "v03.mp4", "v05.mp4")]
    idx = make_index(tmp_path, chosen, SETTINGS)
    ds = _dataset(idx, max_retries=3)
    broken = next(i for i in range(len(idx)) if idx.sample(i).path.endswith("v01.mp4"))
    item = ds[(broken, 0, 0)]
    assert item["failed"] and len(item["events"]) == 4  # 1 + max_retries attempts, then give up
    source = _source(idx, dataset=ds, batch=1, max_bad=1.0)
    with pytest.raises(DataError, match="all failed to load") as info:
        _take(source, source.steps_per_epoch)
    assert "v0" in str(info.value) and "osctl data validate" in info.value.hint


def test_bad_fraction_stops_training_with_examples():
    stats = BadSampleStats(num_samples=100, max_bad_fraction=0.01)
    from osctl.data.stream.dataset import BadEvent

    batch = {"samples": torch.tensor([1]), "events": [BadEvent(5, "missing", "/d/a.mp4", "file does not exist")]}
    stats.record(batch)
    stats.check(batch)  # one bad sample of 100 is within 1 %
    batch2 = {"samples": torch.tensor([2]), "events": [BadEvent(6, "truncated", "/d/b.mp4", "cut")]}
    stats.record(batch2)
    with pytest.raises(DataError, match=r"2 bad sample\(s\).*max_bad_fraction 0.01.*a\.mp4"):
        stats.check(batch2)
    restored = BadSampleStats(100)
    restored.load_state_dict(stats.state_dict())
    assert restored.bad_unique == 2 and restored.as_dict()["by_code"] == {"missing": 1, "truncated": 1}


def test_mixed_shapes_are_padded_with_a_latent_mask():
    spec = PadSpec(frames=9, height=32, width=48, geometry=V13)
    items = [{"pixel_values": torch.ones(3, 9, 32, 48), "text": "a", "sample": 0, "ticket": (0, 0, 0), "events": []},
             {"pixel_values": torch.ones(3, 5, 16, 40), "text": "b", "sample": 1, "ticket": (1, 0, 1), "events": []},
             {"pixel_values": torch.ones(3, 1, 32, 48), "text": "c", "sample": 2, "ticket": (2, 0, 2), "events": []}]
    batch = Collate(fake_tokenize, pad=spec, global_batch=3)(items)
    assert batch["pixel_values"].shape == (3, 3, 9, 32, 48)
    assert batch["latent_mask"].shape == (3, 3, 4, 6)
    assert batch["latent_mask"][0].all()
    assert batch["latent_mask"][1, :2, :2, :5].all() and batch["latent_mask"][1].sum() == 2 * 2 * 5
    assert batch["latent_mask"][2, :1].all() and batch["latent_mask"][2].sum() == 4 * 6
    assert batch["pixel_values"][1, :, 5:].abs().sum() == 0 and batch["pixel_values"][1, :, :, 16:].abs().sum() == 0
    with pytest.raises(DataError, match="mixes shapes"):
        Collate(fake_tokenize, pad=None)(items)


def test_padding_is_refused_where_the_resolution_mode_makes_it_wrong():
    index = SimpleNamespace(buckets=[{"t": 9, "h": 32, "w": 32}, {"t": 9, "h": 16, "w": 32}])
    data = SimpleNamespace(group_data=False, effective_resolution_mode="area", num_frames=9, max_height=32, max_width=32)
    with pytest.raises(ConfigError, match="use group_data"):
        _pad_spec(SimpleNamespace(data=data), index, V13)
    data.effective_resolution_mode = "force"
    spec = _pad_spec(SimpleNamespace(data=data), index, V13)
    assert (spec.frames, spec.height, spec.width, spec.geometry) == (9, 32, 32, V13)
    data.group_data = True
    assert _pad_spec(SimpleNamespace(data=data), index, V13) is None


def test_dataset_pickles_without_the_table(index):
    import pickle

    ds = _dataset(index)
    blob = pickle.dumps(ds)
    assert len(blob) < 20_000  # the index travels as its path, not its rows
    again = pickle.loads(blob)
    assert np.array_equal(again.index.bucket_ids(), index.bucket_ids())


def test_resume_with_another_schedule_continues_approximately_with_a_note(index):
    first = _source(index, batch=2)
    _take(first, 5)
    state = first.state_dict()
    other = _source(index, batch=1)  # e.g. resumed on another number of data-parallel replicas
    other.load_state_dict(state)
    assert other.resume_note and "global_batch 2 -> 1" in other.resume_note
    assert (other.epoch, other.position) == (0, 5 * other.steps_per_epoch // first.steps_per_epoch)
    bogus = dict(state, position=99)
    with pytest.raises(DataError, match="does not belong to this index"):
        _source(index, batch=2).load_state_dict(bogus)
    done = _source(index, batch=2)
    done.load_state_dict(dict(state, position=first.steps_per_epoch))
    assert (done.epoch, done.position) == (1, 0)


def test_an_unexpected_exception_counts_as_bad_media_but_a_hung_storage_stops(index):
    from osctl.data.stream.reader import DecodeHung

    ds = _dataset(index, max_retries=1)

    def broken(sample, rng):
        raise ValueError("exotic pixel format")

    ds.load = broken  # type: ignore[method-assign]
    item = ds[(0, 0, 0)]
    assert item["failed"] and {e.code for e in item["events"]} == {"error"}
    assert "ValueError: exotic pixel format" in item["events"][0].message

    def hung(sample, rng):
        raise DecodeHung("4 media decodes hung")

    ds.load = hung  # type: ignore[method-assign]
    with pytest.raises(DecodeHung):
        ds[(0, 0, 0)]
