"""`osctl data cache` end to end on the shapes dataset with the tiny WF-VAE, tiny T5 and tiny transformer:
training from the cache equals training that encodes (bit for bit in fp32), resumes exactly, refuses a
cache of another recipe, counts bad media as training does; a full disk mid-shard and a rank killed
mid-build are finished by a rerun into the same files an uninterrupted one-process build writes."""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from osctl.cache.build import BuildOptions, build_cache
from osctl.cache.dataset import CachedSampleDataset
from osctl.cache.reader import CacheReader
from osctl.data.stream.dataset import SampleDataset
from osctl.errors import ConfigError, DataError, StorageError
from osctl.plugin_manager import default_registry
from osctl.recipe.load import load_recipe
from osctl.recipe.validate import check_recipe
from osctl.synth.shapes import synth_shapes
from osctl.train.loop import train
from osctl.train.run import TrainOptions, run_training, setup_training

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
RECIPE = """
model: {{name: opensora_v1_3, preset: tiny, in_channels: 8, out_channels: 8}}
autoencoder: {{name: wfvae, preset: tiny}}
text_encoder: {{name: tiny_t5, d_model: 32, max_length: 64, cache_dir: {tcache}}}  # captions: 41-63 bytes
data:
  data: {data}
  num_frames: 9
  train_fps: 4          # every clip fits in 9 frames: no temporal crop, the frames are the sample's own
  min_frames: 5
  max_hxw: 1024
  hw_stride: 16
  drop_short_ratio: 0
  group_data: true
  min_bucket_batches: 0
  num_workers: 0
  cache: {{dtype: fp32, shard_samples: 4}}
train: {{output_dir: {out}, mixed_precision: fp32, max_steps: 3, train_batch_size: 1, checkpointing_steps: 100,
        log_interval: 1, seed: 7, use_ema: false}}
parallel: {{strategy: single}}
"""


@pytest.fixture(scope="module")
def space(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with the shapes dataset (12 clips, 6 images) and a one-process fp32 cache of it in ``cache``."""
    root = tmp_path_factory.mktemp("cache")
    synth_shapes(root / "shapes", videos=12, images=6, seed=0)
    recipe = root / "recipe.yaml"
    recipe.write_text(RECIPE.format(data=root / "shapes" / "data.txt", out=root / "out", tcache=root / "tcache"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the launched ranks (OMP_NUM_THREADS=1), so their shards are comparable
    try:
        build_cache(_checked(root, [f"data.cache.dir={root / 'cache'}"]), default_registry(), BuildOptions())
    finally:
        torch.set_num_threads(threads)
    return root


def _checked(root: Path, overrides: list[str], out: str = "out"):
    return check_recipe(load_recipe(root / "recipe.yaml", [f"train.output_dir={root / out}", *overrides]),
                        default_registry())


def _shards(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((folder / "shards").glob("shard-*.safetensors"))}


def _run(root: Path, out: str, overrides: list[str], **options):
    parts = setup_training(_checked(root, overrides, out), default_registry(), TrainOptions(**options))
    return parts, train(parts)


def test_a_step_from_the_cache_equals_the_step_that_encodes(space, tmp_path):
    cache = f"data.cache.dir={space / 'cache'}"
    steps = ["train.gradient_accumulation_steps=2"]
    on_the_fly, plain = _run(space, "fly", [cache, "data.cache.mode=off", *steps])
    cached, from_cache = _run(space, "cached", [cache, "data.cache.mode=require", *steps])
    assert on_the_fly.autoencoder is not None and cached.autoencoder is None and cached.text_encoder is None
    assert from_cache.losses == plain.losses and len(plain.losses) == 3
    for (name, a), (_, b) in zip(on_the_fly.strategy.module.state_dict().items(),
                                 cached.strategy.module.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    plan = cached.plan.as_dict()
    assert "not built" in plan["memory saved by the cache"] and "not built" in plan["autoencoder"]
    lengths = CacheReader(space / "cache").texts["length"]  # the tiny transformer ignores the padding: trimmed
    assert lengths.min() < 64 and lengths.max() == 64  # short captions trimmed, truncated ones whole

    # bf16 storage: the same posteriors within bf16 rounding, and a run that trains from them
    build_cache(_checked(space, [f"data.cache.dir={tmp_path / 'bf16'}", "data.cache.dtype=bf16"], "bf16-out"),
                default_registry(), BuildOptions())
    exact, rounded = CacheReader(space / "cache"), CacheReader(tmp_path / "bf16")
    assert str(rounded.dtype) == "torch.bfloat16"
    for sample in range(len(exact)):
        for a, b in zip(exact.latents(sample, 0), rounded.latents(sample, 0), strict=True):
            if a is not None:
                assert torch.allclose(b.float(), a, rtol=2 ** -8, atol=1e-6)
    _, bf16 = _run(space, "bf16-train", [f"data.cache.dir={tmp_path / 'bf16'}", "data.cache.dtype=bf16",
                                         "data.cache.mode=require", *steps])
    assert bf16.losses == pytest.approx(plain.losses, rel=2e-2)


def test_resume_from_the_cache_is_exact(space):
    cache = [f"data.cache.dir={space / 'cache'}", "data.cache.mode=require", "train.max_steps=4",
             "train.checkpointing_steps=2"]
    _, straight = _run(space, "straight", cache)
    _, first = _run(space, "resumed", [*cache, "train.max_steps=2"])
    _, second = _run(space, "resumed", [*cache, "train.resume_from_checkpoint=latest", "data.num_workers=2"])
    assert first.losses + second.losses == straight.losses


def test_random_frames_store_views_and_reads_keep_the_loaders_texts(space, tmp_path):
    overrides = ["data.train_fps=12", "data.cache.views=2", f"data.cache.dir={tmp_path / 'views'}"]
    summary = build_cache(_checked(space, overrides, "views"), default_registry(), BuildOptions())
    assert summary["views"] == 12 * 2 + 6  # 12 clips longer than 9 frames: two crops each; images: one
    parts = setup_training(_checked(space, [*overrides, "data.cache.mode=require"], "views"), default_registry(),
                           TrainOptions())
    cached: CachedSampleDataset = parts.data.dataset
    loader = SampleDataset(cached.index, cached.settings, members=cached.members)
    seen: dict[int, set[bytes]] = {}
    for epoch in range(6):
        for position in range(len(cached)):
            ticket = (position, epoch, position)
            item = cached[ticket]
            assert item["text"] == loader[ticket]["text"]  # the same draws from the ticket's generator
            seen.setdefault(position, set()).add(item["latent_mean"].numpy().tobytes())
    assert max(len(v) for v in seen.values()) == 2 and min(len(v) for v in seen.values()) == 1


def test_a_cache_of_another_recipe_is_refused_or_ignored(space, tmp_path):
    cache = f"data.cache.dir={space / 'cache'}"
    with pytest.raises(ConfigError, match=r"data.captions.cfg is 0.1 in the cache and 0.2 in the recipe") as caught:
        setup_training(_checked(space, [cache, "data.cache.mode=require", "data.captions.cfg=0.2"]), default_registry(),
                       TrainOptions())
    assert "osctl data cache --recipe RECIPE --overwrite" in caught.value.hint
    with pytest.raises(ConfigError, match="the autoencoder section's options differ"):
        setup_training(_checked(space, [cache, "data.cache.mode=require", "autoencoder.seed=1"]), default_registry(),
                       TrainOptions())
    parts = setup_training(_checked(space, [cache, "autoencoder.seed=1"]), default_registry(), TrainOptions())
    assert parts.autoencoder is not None and "autoencoder section" in parts.plan.as_dict()["data cache"]
    plan = run_training(_checked(space, [cache]), default_registry(), TrainOptions(dry_run=True)).as_dict()
    assert "(complete): used if it matches the recipe" in plan["data cache"]
    with pytest.raises(ConfigError, match="there is no cache in"):
        setup_training(_checked(space, [f"data.cache.dir={tmp_path}", "data.cache.mode=require"]), default_registry(),
                       TrainOptions())

    from osctl.cli import app

    runner = CliRunner()
    result = runner.invoke(app, ["data", "cache", "--recipe", str(space / "recipe.yaml"), "--set", cache,
                                 "--set", "data.captions.cfg=0.2"])
    assert result.exit_code == 2 and "data.captions.cfg is 0.1 in the cache" in result.output
    report = json.loads(runner.invoke(app, ["data", "cache", "inspect", str(space / "cache"), "--json"]).output)
    assert report["complete"] and report["samples"] == {"ok": 18, "bad": 0, "missing": 0, "random_frames": 0}
    assert report["components"]["autoencoder"]["name"] == "wfvae" and report["bytes"]["per_sample"] > 0
    texts = report["text_states"]
    assert texts["storage"] == "trimmed" and texts["padded_length"] == 64 and texts["mean_length"] < 64
    assert 0 < texts["bytes"]["stored"] < texts["bytes"]["padded"] and report["readable"]

    # a cache of an older format: refused (require) or passed over (auto), with the rebuild command
    old = tmp_path / "old"
    shutil.copytree(space / "cache", old)
    manifest = json.loads((old / "manifest.json").read_text())
    manifest["spec"]["version"] = 1
    (old / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ConfigError, match="version 1 and this osctl reads") as caught:
        setup_training(_checked(space, [f"data.cache.dir={old}", "data.cache.mode=require"]), default_registry(),
                       TrainOptions())
    assert "--overwrite" in caught.value.hint
    assert "version 1" in setup_training(_checked(space, [f"data.cache.dir={old}"]), default_registry(),
                                         TrainOptions()).plan.as_dict()["data cache"]
    assert "rebuild it" in runner.invoke(app, ["data", "cache", "inspect", str(old)]).output


def test_bad_media_are_counted_skipped_and_replaced_as_in_training(space, tmp_path):
    copy = tmp_path / "shapes"
    shutil.copytree(space / "shapes", copy)
    victim = sorted((copy / "videos").glob("*.mp4"))[0]
    victim.write_bytes(victim.read_bytes()[:400])
    data = [f"data.data={copy / 'data.txt'}", f"data.cache.dir={tmp_path / 'cache'}"]
    with pytest.raises(DataError, match=rf"1 bad sample.*max_bad_fraction 0.01.*{victim.name}: undecodable"):
        build_cache(_checked(space, data, "bad"), default_registry(), BuildOptions())
    summary = build_cache(_checked(space, [*data, "data.max_bad_fraction=0.2"], "bad"), default_registry(),
                          BuildOptions())
    assert (summary["ok"], summary["bad"]) == (17, 1) and victim.name in summary["bad_examples"][0]
    run = [*data, "data.max_bad_fraction=0.2", "train.max_steps=18"]  # one epoch: every sample is drawn
    fly, plain = _run(space, "bad-fly", [*run, "data.cache.mode=off"])
    cached, from_cache = _run(space, "bad-cached", [*run, "data.cache.mode=require"])
    assert from_cache.losses == plain.losses
    assert cached.data.stats() == fly.data.stats() and fly.data.stats()["bad_samples"] == 1


def test_a_full_disk_mid_shard_publishes_nothing_and_a_rerun_finishes_it(space, tmp_path, monkeypatch):
    from osctl.cache import store

    real_copy = store._copy
    calls = {"n": 0}

    def copy(source, target):
        calls["n"] += 1
        if calls["n"] == 3:
            target.write(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        real_copy(source, target)

    monkeypatch.setattr(store, "_copy", copy)
    checked = _checked(space, [f"data.cache.dir={tmp_path / 'cache'}"], "disk")
    with pytest.raises(StorageError, match="shard-000002"):
        build_cache(checked, default_registry(), BuildOptions())
    assert sorted(_shards(tmp_path / "cache")) == ["shard-000000.safetensors", "shard-000001.safetensors"]
    monkeypatch.setattr(store, "_copy", real_copy)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        summary = build_cache(checked, default_registry(), BuildOptions())
    finally:
        torch.set_num_threads(threads)
    assert summary["shards"] == {"total": 5, "built": 3, "skipped": 2} and summary["complete"]
    assert _shards(tmp_path / "cache") == _shards(space / "cache")
    assert not [p for p in (tmp_path / "cache" / "shards").iterdir() if p.name.startswith(".")]


KILL_HOOK = """
import os, signal
if os.environ.get("RANK") == "1":
    from osctl.cache import store
    add = store.ShardWriter.add
    shards = set()

    def killing_add(self, item):
        add(self, item)
        shards.add(self.meta["shard"])
        if len(shards) == 2:  # one sample into this rank's second shard: kill -9
            os.kill(os.getpid(), signal.SIGKILL)

    store.ShardWriter.add = killing_add
"""


@pytest.mark.multiprocess
def test_two_processes_build_the_same_shards_and_finish_after_a_rank_is_killed(space, tmp_path):
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(KILL_HOOK)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "plugins")])}
    command = [sys.executable, "-m", "osctl", "data", "cache", "--recipe", str(space / "recipe.yaml"),
               "--set", f"train.output_dir={tmp_path / 'out'}", "--set", f"data.cache.dir={tmp_path / 'cache'}",
               "--nproc-per-node", "2", "--json"]
    killed = subprocess.run(command, env={**env, "PYTHONPATH": f"{hook}{os.pathsep}{env['PYTHONPATH']}"},
                            capture_output=True, text=True, timeout=600, cwd=tmp_path)
    # the survivor says so itself, unless the launcher stops it first: then the launcher names the killed rank
    named = "another rank failed or was killed" in killed.stderr or re.search(r"rank \d failed first \(exit -9\)",
                                                                              killed.stderr)
    assert killed.returncode != 0 and named, killed.stderr[-3000:]
    done = set(_shards(tmp_path / "cache"))
    assert done and len(done) < 5
    rerun = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    summary = json.loads(rerun.stdout)
    assert summary["complete"] and summary["world_size"] == 2 and summary["shards"]["skipped"] == len(done)
    assert _shards(tmp_path / "cache") == _shards(space / "cache")
    assert not [p for p in (tmp_path / "cache" / "shards").iterdir() if p.name.startswith(".")]


SP_WORKER = """
import json, sys
from pathlib import Path
from osctl.parallel import dist as pdist
from osctl.plugin_manager import default_registry
from osctl.recipe.load import load_recipe
from osctl.recipe.validate import check_recipe
from osctl.train.run import TrainOptions, run_training

registry = default_registry()
recipe, out, common = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:]
losses = {}
for mode in ("off", "require"):
    checked = check_recipe(load_recipe(recipe, [*common, f"data.cache.mode={mode}", f"train.output_dir={out / mode}"]),
                           registry)
    losses[mode] = run_training(checked, registry, TrainOptions()).losses
if pdist.init_distributed().is_main:
    (out / "losses.json").write_text(json.dumps(losses))
pdist.shutdown(0)
"""


@pytest.mark.multiprocess
def test_sequence_parallel_ranks_train_from_the_cache_as_they_train_on_the_fly(space, tmp_path):
    sp = ["parallel.sp_size=2", "parallel.train_sp_batch_size=1", "parallel.strategy=ddp",
          f"data.cache.dir={tmp_path / 'cache'}", "train.max_steps=4"]
    # the index of a 2-rank sequence-parallel run snaps frames to whole latent frames per rank: its own cache
    build_cache(_checked(space, sp, "sp-build"), default_registry(), BuildOptions(world_size=2))
    worker = tmp_path / "worker.py"
    worker.write_text(SP_WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "plugins")])}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           str(worker), str(space / "recipe.yaml"), str(tmp_path), *sp],
                          env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    losses = json.loads((tmp_path / "losses.json").read_text())
    assert losses["require"] == losses["off"] and len(losses["off"]) == 4
