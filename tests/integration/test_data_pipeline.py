"""End to end on a generated shapes dataset: index built by training, real decoding, training that
resumes with identical losses (also with a different worker count), bad media counted, and two real
ranks (gloo) that agree on the index and on every step's shape."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from osctl.plugin_manager import default_registry
from osctl.recipe.load import load_recipe
from osctl.recipe.validate import check_recipe
from osctl.synth.shapes import synth_shapes
from osctl.train.loop import train
from osctl.train.run import TrainOptions, run_training, setup_training
from tests.train_helpers import TINY_RECIPE

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
DATA = """data:
  data: {data}
  num_frames: 9
  train_fps: 12
  min_frames: 5
  max_hxw: 1024
  hw_stride: 16
  drop_short_ratio: 0
  group_data: true
  min_bucket_batches: 0
  num_workers: 0"""
TINY_DATA = """data:
  num_frames: 5
  hw_stride: 8
  max_height: 16
  max_width: 16"""


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 clips (12/24/30 fps, 1-2 s, three frame sizes, cut and crop records) and 6 images."""
    return synth_shapes(tmp_path_factory.mktemp("shapes"), videos=12, images=6, seed=0).data_txt


def _recipe(folder: Path, data_txt: Path) -> Path:
    assert TINY_DATA in TINY_RECIPE
    text = TINY_RECIPE.replace(TINY_DATA, DATA.format(data=data_txt))
    path = folder / "recipe.yaml"
    path.write_text(text.format(out=folder / "out", cache=folder.parent / "cache"))
    return path


def _checked(recipe: Path, overrides: list[str]):
    registry = default_registry()
    return check_recipe(load_recipe(recipe, ["train.checkpointing_steps=100", *overrides]), registry), registry


def _run(recipe: Path, overrides: list[str]):
    checked, registry = _checked(recipe, overrides)
    return run_training(checked, registry, TrainOptions())


def _data_cache(tmp_path: Path, data_txt: Path, mode: str) -> list[str]:
    """Overrides that train with ``data.cache`` ``mode``; for ``require`` the cache is built first."""
    if mode == "off":
        return ["data.cache.mode=off"]
    from osctl.cache.build import BuildOptions, build_cache

    (tmp_path / "c").mkdir()
    where = [f"data.cache.dir={tmp_path / 'data-cache'}"]
    build_cache(_checked(_recipe(tmp_path / "c", data_txt), where)[0], default_registry(), BuildOptions())
    return [*where, "data.cache.mode=require"]


@pytest.mark.parametrize("cache", ["off", "require"])
def test_training_on_real_media_resumes_with_identical_losses(shapes, tmp_path, cache):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    cached = _data_cache(tmp_path, shapes, cache)
    straight = _run(_recipe(tmp_path / "a", shapes), ["train.max_steps=12", *cached])
    plan = json.loads((tmp_path / "a" / "out" / "plan.json").read_text())
    assert "built now" in plan["data index"] and "per epoch" in plan["data batch rounding"]
    steps = int(plan["steps per epoch"])
    assert 3 < steps < 12  # the run crosses an epoch boundary
    recipe = _recipe(tmp_path / "b", shapes)
    first = _run(recipe, ["train.max_steps=4", *cached])
    second = _run(recipe, ["train.max_steps=12", "train.resume_from_checkpoint=latest", "data.num_workers=2", *cached])
    assert first.losses + second.losses == straight.losses
    state = json.loads((tmp_path / "b" / "out" / "checkpoint-4" / "data" / "rank-0.json").read_text())
    assert (state["epoch"], state["position"]) == (0, 4)
    assert "up to date" in json.loads((tmp_path / "b" / "out" / "plan.json").read_text())["data index"]


def test_a_corrupt_clip_is_replaced_and_counted_and_too_many_stop_training(shapes, tmp_path):
    from osctl.errors import DataError

    copy = tmp_path / "shapes"
    subprocess.run(["cp", "-r", str(shapes.parent), str(copy)], check=True)
    victim = sorted((copy / "videos").glob("*.mp4"))[0]
    victim.write_bytes(victim.read_bytes()[:400])
    checked, registry = _checked(_recipe(tmp_path, copy / "data.txt"), ["train.max_steps=8", "train.use_ema=false"])
    parts = setup_training(checked, registry, TrainOptions())
    with pytest.raises(DataError, match=rf"1 bad sample.*max_bad_fraction 0.01.*{victim.name}: undecodable"):
        train(parts)  # one file of 15 samples is far above the default 1 %
    records: list[dict] = []
    parts = setup_training(checked, registry, TrainOptions(log=records.append))
    parts.data.max_bad_fraction = 0.2
    assert train(parts).final_step == 8
    stats = parts.data.stats()
    assert stats["bad_samples"] == 1 and stats["replaced"] >= 1 and victim.name in stats["examples"][0]
    # the counters are in the logged records (metrics.jsonl and the trackers get the same records)
    last = records[-1]
    assert (last["data_bad_samples"], last["data_replaced"], last["data_reads"]) == \
        (1, stats["replaced"], stats["reads"])


def test_stale_index_is_rebuilt_in_the_default_folder_and_refused_in_an_explicit_one(shapes, tmp_path):
    from osctl.data.index import StaleIndexError

    recipe = _recipe(tmp_path, shapes)
    checked, registry = _checked(recipe, ["train.max_steps=1"])
    setup_training(checked, registry, TrainOptions(dry_run=True))
    checked, registry = _checked(recipe, ["train.max_steps=1", "data.train_fps=8"])
    plan = setup_training(checked, registry, TrainOptions(dry_run=True)).plan.as_dict()
    assert "rebuilt" in plan["data index"] and "train_fps" in plan["data index"]
    explicit = [f"data.index_dir={tmp_path / 'out' / 'index'}", "train.max_steps=1"]
    checked, registry = _checked(recipe, [*explicit, "data.train_fps=6"])
    with pytest.raises(StaleIndexError, match="train_fps"):
        setup_training(checked, registry, TrainOptions(dry_run=True))


WORKER = """
import json, sys, torch
from pathlib import Path
from osctl.data.stream.loader import build_batch_source
from osctl.parallel import dist as pdist
from osctl.parallel.layout import ParallelLayout
from osctl.plugin_manager import default_registry
from osctl.recipe.load import load_recipe
from osctl.recipe.validate import check_recipe

registry = default_registry()
checked = check_recipe(load_recipe(Path(sys.argv[1]), ["train.train_batch_size=1"]), registry)
info = pdist.init_distributed(120)
tokenize = lambda texts: {"input_ids": torch.zeros(len(texts), 4, dtype=torch.long),
                          "attention_mask": torch.ones(len(texts), 4, dtype=torch.long)}
layout = ParallelLayout.from_recipe(checked.loaded.recipe, world_size=info.world_size)
source, summary = build_batch_source(checked, registry, info, layout=layout, dp_rank=info.rank, tokenize=tokenize)
stream = iter(source)
rows = [[list(b["pixel_values"].shape), b["samples"].tolist()] for b in (next(stream) for _ in range(source.steps_per_epoch))]
Path(sys.argv[2]).joinpath(f"rank{info.rank}.json").write_text(json.dumps({"rows": rows, "summary": summary}))
pdist.shutdown()
"""


@pytest.mark.multiprocess
def test_two_ranks_build_the_index_once_and_agree_on_every_shape(shapes, tmp_path):
    recipe = _recipe(tmp_path, shapes)
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(script),
               str(recipe), str(tmp_path)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert "built now" in ranks[0]["summary"]["index"] and ranks[0]["summary"] == ranks[1]["summary"]
    a, b = ranks[0]["rows"], ranks[1]["rows"]
    assert len(a) == len(b) > 0
    assert all(x[0] == y[0] for x, y in zip(a, b, strict=True))  # same shape on both ranks at every step
    samples = [s for row in a + b for s in row[1]]
    assert len(samples) == len(set(samples))  # no sample twice in an epoch
