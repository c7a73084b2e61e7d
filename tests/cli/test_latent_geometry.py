"""One owner of the latent geometry: a fake autoencoder with strides 8x16x16 under a model with 1x1x1 patches
(tests/fixtures/osctl_coarse) runs through `data bucket`, the loader and `sample`'s size checks, and the
recipe check refuses plugins that declare no geometry or whose channels do not fit."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from osctl.cli import app
from osctl.geometry import LatentGeometry

runner = CliRunner()
COARSE = LatentGeometry(stride_t=8, stride_hw=16, latent_channels=4, patch_t=1, patch_hw=1)
RECIPE = """\
autoencoder: {name: coarse}
model: {name: flat}
text_encoder: {name: tiny_t5}
data:
  num_frames: 33
  train_fps: 16
  min_frames: 9
  drop_short_ratio: 0.0
  max_hxw: 65536
  hw_stride: 16
  group_data: true
  min_bucket_batches: 0
sample: {num_frames: 17, height: 64, width: 96}
"""
# frame counts that snap to 33, 25, 17 and 9 under an 8x temporal stride (5 is too short: 9 at least)
FRAMES = (100, 30, 20, 12, 5)


@pytest.fixture
def coarse(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):  # type: ignore[no-untyped-def]
    """The ``osctl_coarse`` test plugin installed as a distribution, and a data set with a recipe for it."""
    from osctl.plugin_manager import reset_caches
    from tests.plugin_helpers import FIXTURES, install_fake_distribution

    install_fake_distribution(monkeypatch, tmp_path / "site", "osctl-coarse", {"osctl_coarse": "osctl_coarse"},
                              FIXTURES / "osctl_coarse" / "osctl_coarse.py")
    records: list[dict[str, Any]] = [
        {"path": f"v{i}-{n}.mp4", "cap": f"clip {i}", "num_frames": n, "fps": 16, "resolution": size}
        for i, size in enumerate(({"height": 720, "width": 1280}, {"height": 480, "width": 480}))
        for n in FRAMES
    ] + [{"path": "i.jpg", "cap": "a photo", "resolution": {"height": 600, "width": 800}}]
    (tmp_path / "anno.json").write_text(json.dumps(records))
    (tmp_path / "data.txt").write_text(f"{tmp_path / 'media'},anno.json\n")
    (tmp_path / "r.yaml").write_text(RECIPE)
    yield tmp_path
    reset_caches()


def _bucket(root: Path, *extra: str) -> Any:
    return runner.invoke(app, ["data", "bucket", str(root / "data.txt"), "-r", str(root / "r.yaml"),
                               "-o", str(root / "index"), "--json", *extra])


def test_data_bucket_snaps_frames_to_8k_plus_1_and_sizes_to_multiples_of_16(coarse: Path) -> None:
    result = _bucket(coarse)
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["kept"] == 9 and out["reasons"]["too_short"] == 2
    assert {b["t"] for b in out["buckets"]} == {33, 25, 17, 9, 1}  # 4k+1 frames (29, 21, 13) would be v1.3's
    for b in out["buckets"]:
        assert (b["t"] - 1) % 8 == 0 and b["h"] % 16 == 0 and b["w"] % 16 == 0
        assert b["latent_tokens"] == COARSE.tokens(b["t"], b["h"], b["w"]) == \
            ((b["t"] - 1) // 8 + 1) * (b["h"] // 16) * (b["w"] // 16)
    meta = json.loads((coarse / "index" / "index.json").read_text())
    assert meta["settings"]["geometry"] == COARSE.as_dict()  # an index built for other strides is stale
    checked = runner.invoke(app, ["recipe", "validate", str(coarse / "r.yaml"), "--json"])
    assert checked.exit_code == 0 and json.loads(checked.stdout)["geometry"] == COARSE.as_dict()
    shown = runner.invoke(app, ["recipe", "validate", str(coarse / "r.yaml")])
    assert "latent geometry: autoencoder 8x16x16 (4 latent channels), patch 1x1x1: 8k+1 frames, sizes in multiples " \
           "of 16" in " ".join(shown.output.split())


@pytest.mark.parametrize(("setting", "message"), [
    ("data.num_frames=29", "data.num_frames: must be 8k+1 (the autoencoder compresses time 8x with a causal first "
                           "frame), got 29; use 25 or 33"),
    ("data.hw_stride=8", "data.hw_stride: 8 must be a multiple of the autoencoder stride x patch size (16 x 1 = 16)"),
    ("model.in_channels=8", "model 'flat' has in_channels 8 but autoencoder 'coarse' makes latents with 4 channels"),
    ("autoencoder.name=silent", "autoencoder.name: the autoencoder 'silent' (plugin osctl-coarse 0.1 (osctl_coarse)) "
                                "declares no latent geometry: its config class SilentConfig has no "
                                "autoencoder_geometry()"),
])
def test_data_bucket_and_recipe_check_refuse_what_the_geometry_cannot_train(coarse: Path, setting: str,
                                                                            message: str) -> None:
    for args in (["data", "bucket", str(coarse / "data.txt"), "-r", str(coarse / "r.yaml"), "-o", str(coarse / "i")],
                 ["recipe", "validate", str(coarse / "r.yaml")]):
        result = runner.invoke(app, [*args, "--set", setting])
        assert result.exit_code == 2, result.output
        assert message in " ".join(result.output.split()), result.output
        assert "Traceback" not in result.output
    assert not (coarse / "i").exists()


def test_the_loader_pads_and_reads_with_the_same_geometry(coarse: Path) -> None:
    """Force mode without group_data: mixed frame counts are padded to whole 16-pixel tokens, the latent mask
    has the 8x16x16 latent grid, and read-time sampling snaps to the bucket's 8k+1 frames."""
    from osctl.data.dry_run import plan_index
    from osctl.data.stream.dataset import SampleDataset
    from osctl.data.stream.loader import plan_stream
    from osctl.parallel.layout import ParallelLayout
    from osctl.plugin_manager import default_registry
    from osctl.recipe.load import load_recipe
    from osctl.recipe.validate import check_recipe

    sets = ["data.force_resolution=true", "data.max_height=64", "data.max_width=96", "data.group_data=false",
            f"data.data={coarse / 'data.txt'}", f"data.index_dir={coarse / 'index'}"]
    assert _bucket(coarse, *[arg for s in sets for arg in ("--set", s)]).exit_code == 0
    checked = check_recipe(load_recipe(coarse / "r.yaml", sets), default_registry())
    assert checked.geometry == COARSE
    layout = ParallelLayout.from_recipe(checked.loaded.recipe, world_size=1)
    index, settings, note = plan_index(checked.loaded.recipe, layout, checked.geometry)
    assert note == "up to date" and settings.geometry == COARSE  # the index data bucket wrote is fresh
    plan = plan_stream(checked.loaded.recipe, index, settings, note, layout=layout, dp_rank=0)
    pad = plan.pad
    assert pad is not None and (pad.frames, pad.height, pad.width) == (33, 64, 96)
    assert pad.latent_shape() == (5, 4, 6) and pad.valid_latents(17, 64, 96) == (3, 4, 6)
    assert plan.read.geometry == COARSE
    dataset = SampleDataset(index, plan.read)
    for sample in range(len(index)):
        t = index.sample(sample).shape[0]
        assert (t - 1) % 8 == 0 and len(dataset.frame_indices(sample, random.Random(sample))) == t
    from osctl.data.stream.dataset import Collate

    items = [{"pixel_values": torch.ones(3, t, 64, 96), "text": "x", "sample": i, "ticket": (i, 0, i), "events": []}
             for i, t in enumerate((33, 17))]
    mask = Collate(None, pad=pad, global_batch=2)(items)["latent_mask"]
    assert mask.shape == (2, 5, 4, 6) and mask[0].all() and mask[1].sum() == 3 * 4 * 6


@pytest.mark.parametrize(("args", "prompts", "message"), [
    (["--num-frames", "13"], None,
     "sample.num_frames: must be 8k+1 (the autoencoder compresses time 8x with a causal first frame), got 13; "
     "use 9 or 17"),
    (["--height", "72"], None,
     "sample.height: must be a multiple of 16 (autoencoder stride 16 x patch size 1), got 72; use 64 or 80"),
    ([], '{"prompt": "a", "num_frames": 17}\n{"prompt": "b", "num_frames": 21}\n',
     "p.jsonl:2: num_frames must be 8k+1 (the autoencoder compresses time 8x with a causal first frame), got 21"),
])
def test_sample_refuses_sizes_the_geometry_cannot_make(coarse: Path, args: list[str], prompts: str | None,
                                                       message: str) -> None:
    """Checked before anything is built (the test plugin's components cannot be built at all)."""
    source = ["-p", "a cat"]
    if prompts is not None:
        (coarse / "p.jsonl").write_text(prompts)
        source = ["--prompts", str(coarse / "p.jsonl")]
    result = runner.invoke(app, ["sample", "--recipe", str(coarse / "r.yaml"), *source, "-o", str(coarse / "s"),
                                 *args])
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split()), result.output
    assert "Traceback" not in result.output


def test_sample_size_checks_pass_8k_plus_1_and_split_latent_frames_under_sp(coarse: Path) -> None:
    from osctl.errors import UsageError
    from osctl.plugin_manager import default_registry
    from osctl.recipe.load import load_recipe
    from osctl.recipe.validate import check_recipe
    from osctl.sample.prompts import PromptSpec, expand_jobs
    from osctl.sample.run import check_job_sizes

    checked = check_recipe(load_recipe(coarse / "r.yaml", []), default_registry())
    jobs = expand_jobs([PromptSpec(0, "a"), PromptSpec(1, "b", {"num_frames": 33})], 0, 1)
    check_job_sizes(checked, jobs)  # 17 and 33 frames, 64 x 96
    check_job_sizes(checked, jobs, sp_world=3)  # 3 and 5 latent frames over 3 processes
    with pytest.raises(UsageError, match=re.escape("--sp over 4 processes needs at least 4 latent frames, but "
                                                   "sample.num_frames 17 gives 3 (the autoencoder compresses time 8x)")):
        check_job_sizes(checked, jobs, sp_world=4)


def test_channels_that_do_not_fit_are_refused_by_recipe_validate(tmp_path: Path) -> None:
    """The pixel autoencoder with strides 4x8 (3 x 8 x 4^2 = 384 channels) under a model with 192 input channels
    used to pass `recipe validate` and fail in `train` with a RuntimeError inside the first step."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text("autoencoder: {name: pixel, spatial_stride: 4, temporal_stride: 8}\n"
                      "model: {name: opensora_v1_3, preset: tiny, in_channels: 192, out_channels: 192}\n"
                      "data: {num_frames: 17, hw_stride: 8, max_height: 16, max_width: 16}\n")
    result = runner.invoke(app, ["recipe", "validate", str(recipe)])
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    assert ("model 'opensora_v1_3' has in_channels 192 but autoencoder 'pixel' makes latents with 384 channels; "
            "model 'opensora_v1_3' has out_channels 192 but autoencoder 'pixel' makes latents with 384 channels") in text
    assert "Traceback" not in result.output
    fixed = runner.invoke(app, ["recipe", "validate", str(recipe), "--set", "autoencoder.temporal_stride=4"])
    assert fixed.exit_code == 0, fixed.output  # 3 x 4 x 4^2 = 192 channels


def test_no_geometry_default_or_old_fact_is_left_in_the_core() -> None:
    """The v1.3 numbers belong to the plugins that own them: the core names none of the old ad-hoc facts, and
    no stride, patch or frame rule is written into it as a default."""
    core = Path(__file__).resolve().parents[2] / "osctl"
    # (the pixel autoencoder's own options are named spatial_stride/temporal_stride: recipe text may say them)
    banned = ["AE_STRIDE_T", "_latent_geometry", "_component_fact", "latent_tokens(", ".spatial_stride",
              ".temporal_stride", "spatial_stride(", "temporal_stride(", "spatial_patch_size",
              "temporal_patch_size", "stride_t: int = 4",
              "stride_hw: int = 8", '"stride_hw": 8', '"stride_t": 4', "patch_hw=2", '"patch_hw", 2',
              '"patch_hw": 2', "stride_t=4", "stride_hw=8", "(num_frames - 1) % 4", "(self.num_frames - 1) % 4",
              "must be 4k+1"]
    found = [f"{path.relative_to(core.parent)}: {word}" for path in sorted(core.rglob("*.py"))
             for word in banned if word in path.read_text(encoding="utf-8")]
    assert found == []
