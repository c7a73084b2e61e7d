"""`osctl data bucket` and training count the same batches: one parallel layout, one epoch arithmetic.

Nothing is decoded: the annotations name media that are never read (the index and the sampler only
need sizes and frame counts), so every layout is checked in one process.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from osctl.cli import app
from osctl.data.stream.loader import build_batch_source
from osctl.parallel.dist import DistInfo
from osctl.parallel.layout import ParallelLayout
from osctl.plugin_manager import default_registry
from osctl.recipe.load import load_recipe
from osctl.recipe.validate import check_recipe
from tests.train_helpers import TINY_RECIPE

VIDEO = {"cap": "a clip", "resolution": {"height": 720, "width": 1280}, "num_frames": 40, "fps": 16}
IMAGE = {"cap": "a photo", "resolution": {"height": 720, "width": 1280}}
TINY_DATA = """data:
  num_frames: 5
  hw_stride: 8
  max_height: 16
  max_width: 16"""
DATA = """data:
  data: {data}
  num_frames: 17
  min_frames: 9
  train_fps: 16
  max_hxw: 4096
  hw_stride: 16
  group_data: true
  min_bucket_batches: 0
  num_workers: 0"""

runner = CliRunner()


def _setup(tmp_path: Path, videos: int = 23, images: int = 14) -> tuple[Path, Path]:
    """Uneven buckets (23 clips, 14 images) and the tiny training recipe reading them."""
    media = tmp_path / "media"
    media.mkdir()
    records = [{**VIDEO, "path": f"v{i}.mp4"} for i in range(videos)] + \
        [{**IMAGE, "path": f"i{i}.jpg"} for i in range(images)]
    (tmp_path / "anno.json").write_text(json.dumps(records))
    data_txt = tmp_path / "data.txt"
    data_txt.write_text(f"{media},anno.json\n")
    assert TINY_DATA in TINY_RECIPE
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(TINY_RECIPE.replace(TINY_DATA, DATA.format(data=data_txt))
                      .format(out=tmp_path / "out", cache=tmp_path / "cache"))
    return data_txt, recipe


def _bucket(data_txt: Path, recipe: Path, world: int, sets: list[str]) -> dict[str, Any]:
    flags = [item for s in sets for item in ("--set", s)]
    result = runner.invoke(app, ["data", "bucket", str(data_txt), "-r", str(recipe), "--world-size", str(world),
                                 "--json", *flags])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


LAYOUTS = [  # (world size, recipe overrides)
    (1, ["train.train_batch_size=2"]),
    (1, ["train.train_batch_size=2", "train.gradient_accumulation_steps=3"]),
    (2, ["train.train_batch_size=3", "data.leftover=pad"]),
    (4, ["parallel.strategy=ddp", "parallel.sp_size=2", "parallel.train_sp_batch_size=3"]),
    (4, ["parallel.strategy=ddp", "parallel.sp_size=2", "parallel.train_sp_batch_size=2",
         "train.gradient_accumulation_steps=2", "data.leftover=pad"]),
]


@pytest.mark.parametrize(("world", "sets"), LAYOUTS)
def test_bucket_batches_per_epoch_equal_the_steps_training_runs(tmp_path: Path, world: int, sets: list[str]) -> None:
    data_txt, recipe = _setup(tmp_path)
    bucket = _bucket(data_txt, recipe, world, sets)
    registry = default_registry()
    checked = check_recipe(load_recipe(recipe, sets), registry)
    layout = ParallelLayout.from_recipe(checked.loaded.recipe, world_size=world)
    assert bucket["batch"]["global_batch"] == layout.global_batch
    assert bucket["batch"]["micro_batch"] == layout.micro_batch and bucket["batch"]["dp_size"] == layout.dp_size
    # the loader of any replica of that layout reads the index data bucket wrote, batch for batch
    info = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    for dp_rank in range(layout.dp_size):
        source, summary = build_batch_source(checked, registry, info, layout=layout, dp_rank=dp_rank,
                                             tokenize=lambda texts: {})
        assert "up to date" in summary["index"]  # the index data bucket wrote, not a rebuilt one
        assert source.steps_per_epoch == bucket["micro_batches_per_epoch"] > 0
        assert source.sampler.dropped_per_epoch == bucket["samples_lost"]
        assert source.sampler.duplicated_per_epoch == bucket["samples_duplicated"]
        assert sum(b["batches"] for b in bucket["buckets"]) == source.steps_per_epoch
    assert layout.optimizer_steps(source.steps_per_epoch) == bucket["batches_per_epoch"]


@pytest.mark.slow
@pytest.mark.parametrize("accumulation", [1, 3])
def test_the_training_plan_runs_the_epoch_data_bucket_counts(tmp_path: Path, accumulation: int) -> None:
    data_txt, recipe = _setup(tmp_path)
    sets = ["train.train_batch_size=2", f"train.gradient_accumulation_steps={accumulation}"]
    bucket = _bucket(data_txt, recipe, 1, sets)
    flags = [item for s in [*sets, "train.max_steps=null", "train.num_epochs=1"] for item in ("--set", s)]
    result = runner.invoke(app, ["train", "--recipe", str(recipe), "--dry-run", "--json", *flags])
    assert result.exit_code == 0, result.output
    plan = json.loads(result.stdout)
    assert int(plan["steps per epoch"]) == bucket["batches_per_epoch"] > 0
    assert plan["steps"] == f"0 -> {bucket['batches_per_epoch']}"  # train.num_epochs: 1
    assert plan["batch"] == f"2 per rank x 1 rank(s) x {accumulation} accumulation = {2 * accumulation} per optimizer step"


def test_bucket_refuses_an_index_without_a_batch(tmp_path: Path) -> None:
    data_txt, recipe = _setup(tmp_path, videos=6, images=5)
    result = runner.invoke(app, ["data", "bucket", str(data_txt), "-r", str(recipe), "--world-size", "2",
                                 "--set", "train.train_batch_size=4"])
    assert result.exit_code == 1, result.output
    text = " ".join(result.output.split())
    assert ("an epoch has 0 batches: one micro-step needs 8 samples (4 per replica x 2 data-parallel replica(s); "
            "global batch 8) but the largest of its 2 buckets holds 6 (data.group_data keeps each batch in one "
            "bucket); lower train.train_batch_size") in text
    assert "use fewer processes" in text and "data.min_bucket_batches" in text
    assert not (tmp_path / "out" / "index").exists()
    # the same data on one process trains
    assert _bucket(data_txt, recipe, 1, ["train.train_batch_size=4"])["batches_per_epoch"] == 1 + 1


def _index_facts(folder: Path) -> tuple[bytes, dict[str, Any]]:
    """The columns of an index (as Arrow IPC bytes) and its metadata without what depends on when it was built."""
    import pyarrow as pa

    table = pa.ipc.open_file(pa.memory_map(str(folder / "samples.arrow"))).read_all().replace_schema_metadata(None)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    meta = json.loads((folder / "index.json").read_text())
    meta.pop("created")
    for entry in meta["fingerprint"]["annotations"]:
        entry.pop("stat_ns")
    return sink.getvalue().to_pybytes(), meta


def test_training_builds_the_index_data_bucket_builds(tmp_path: Path) -> None:
    """One library function (osctl.data.build.build_index) behind both: the same columns and metadata."""
    data_txt, recipe = _setup(tmp_path)
    sets = ["train.train_batch_size=2"]
    bucket = runner.invoke(app, ["data", "bucket", str(data_txt), "-r", str(recipe), "-o", str(tmp_path / "cli"),
                                 *[item for s in sets for item in ("--set", s)]])
    assert bucket.exit_code == 0, bucket.output
    registry = default_registry()
    checked = check_recipe(load_recipe(recipe, sets), registry)
    layout = ParallelLayout.from_recipe(checked.loaded.recipe, world_size=1)
    info = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    _, summary = build_batch_source(checked, registry, info, layout=layout, dp_rank=0, tokenize=lambda texts: {})
    assert "built now" in summary["index"]
    built, written = _index_facts(tmp_path / "out" / "index"), _index_facts(tmp_path / "cli")
    assert built == written


def test_training_refuses_an_index_without_a_batch_before_writing_it(tmp_path: Path) -> None:
    """As `data bucket` does: the index is not written when an epoch of the run's layout holds no batch."""
    from osctl.errors import DataError

    _, recipe = _setup(tmp_path, videos=6, images=5)
    sets = ["train.train_batch_size=4"]
    registry = default_registry()
    checked = check_recipe(load_recipe(recipe, sets), registry)
    layout = ParallelLayout.from_recipe(checked.loaded.recipe, world_size=2)
    info = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    with pytest.raises(DataError, match="an epoch has 0 batches: one micro-step needs 8 samples"):
        build_batch_source(checked, registry, info, layout=layout, dp_rank=0, tokenize=lambda texts: {})
    assert not (tmp_path / "out" / "index" / "samples.arrow").exists()
