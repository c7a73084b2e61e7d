"""The CogVideoX, LTX-Video and HunyuanVideo families through the command line and the data path: `plugins list`, `ckpt inspect`
of their released folders, `ckpt convert --to diffusers-pipeline` of a trained LTX-Video, and an LTX-Video recipe's
buckets (8k+1 frames, sizes in multiples of 32) as `data bucket` reports them and the loader reads them."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from osctl.cli import app
from osctl.geometry import LatentGeometry
from tests.conftest import REPO_ROOT
from tests.family_helpers import (
    ensure_family_plugins,
    family_registry,
    tiny_cogvideox_pipeline,
    tiny_hunyuan_pipeline,
    tiny_ltx_pipeline,
)

runner = CliRunner()
LTX = LatentGeometry(stride_t=8, stride_hw=32, latent_channels=128, patch_t=1, patch_hw=1)


@pytest.fixture(autouse=True)
def _family_plugins(monkeypatch, tmp_path):
    ensure_family_plugins(monkeypatch, tmp_path / "site")


def test_plugins_list_shows_the_families():
    result = runner.invoke(app, ["plugins", "list", "--json"])
    assert result.exit_code == 0, result.output
    names = {(c["kind"], c["name"]) for c in json.loads(result.stdout)["components"]}
    assert {("model", "cogvideox"), ("autoencoder", "cogvideox_vae"), ("model", "ltx_video"),
            ("autoencoder", "ltx_vae"), ("model", "hunyuan_video"), ("autoencoder", "hunyuan_vae"),
            ("text_encoder", "hunyuan_text"), ("sampler", "CogVideoXDPM")} <= names


@pytest.mark.parametrize(("family", "pipeline_class", "model", "vae"), [
    ("cogvideox", "CogVideoXPipeline", "cogvideox", "cogvideox_vae"),
    ("ltx", "LTXPipeline", "ltx_video", "ltx_vae"),
    ("hunyuan", "HunyuanVideoPipeline", "hunyuan_video", "hunyuan_vae"),
])
def test_inspect_names_a_family_pipeline_folder_and_its_components(tmp_path, family, pipeline_class, model, vae):
    write = {"cogvideox": tiny_cogvideox_pipeline, "ltx": tiny_ltx_pipeline, "hunyuan": tiny_hunyuan_pipeline}[family]
    pipe = write(tmp_path / family)
    result = runner.invoke(app, ["ckpt", "inspect", str(pipe), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["format"] == "diffusers-pipeline" and report["integrity"]["ok"]
    assert report["pipeline"]["class_name"] == pipeline_class
    loaders = {name: (c["loads_with"] or {}).get("name") for name, c in report["pipeline"]["components"].items()}
    text = {"text_encoder": "t5", "tokenizer": None} if family != "hunyuan" else {
        "text_encoder": "hunyuan_text", "tokenizer": None, "text_encoder_2": None, "tokenizer_2": None}
    assert loaders == {"transformer": model, "vae": vae, **text, "scheduler": None}
    assert report["architecture"]["loads_with"]["name"] == model


def test_a_trained_ltx_video_converts_to_a_pipeline_diffusers_loads(tmp_path):
    """`ckpt convert --to diffusers-pipeline`: LTXPipeline.from_pretrained(OUT) holds the trained transformer, the
    VAE with its statistics and the flow sampler with LTX's dynamic shifting."""
    from diffusers import DiffusionPipeline

    from osctl.recipe.load import load_recipe
    from osctl.recipe.validate import check_recipe
    from osctl.train.run import TrainOptions, run_training
    from tests.train_helpers import SyntheticClips

    pipe = tiny_ltx_pipeline(tmp_path / "pipe")
    recipe = tmp_path / "ltx.yaml"
    recipe.write_text(f"extends: {REPO_ROOT / 'recipes' / 'base' / 'ltx-video.yaml'}\npipeline_path: {pipe}\n"
                      "model: {gradient_checkpointing: false}\ntext_encoder: {max_length: 32}\n"
                      "data: {num_frames: 9, hw_stride: 32}\n"
                      f"train: {{output_dir: {tmp_path / 'out'}, max_steps: 1, train_batch_size: 2, "
                      "learning_rate: 1.0e-3, mixed_precision: fp32}\nparallel: {strategy: single}\n")
    registry = family_registry()
    checked = check_recipe(load_recipe(recipe), registry)
    text = registry.build("text_encoder", "t5", checked.components["text_encoder"])
    run_training(checked, registry, TrainOptions(data_source=SyntheticClips(text.tokenize, frames=9, size=64)))
    out = tmp_path / "exported"
    result = runner.invoke(app, ["ckpt", "convert", str(tmp_path / "out" / "checkpoint-1"), "--to",
                                 "diffusers-pipeline", "-o", str(out), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["verified"]["tensors"] > 0
    loaded = DiffusionPipeline.from_pretrained(out)
    assert type(loaded).__name__ == "LTXPipeline" and loaded.scheduler.config.use_dynamic_shifting
    trained = registry.build("model", "ltx_video", {"path": str(tmp_path / "out" / "checkpoint-1" / "model")})
    assert all(torch.equal(a, b) for a, b in zip(loaded.transformer.state_dict().values(),
                                                 trained.transformer.state_dict().values(), strict=True))
    original = DiffusionPipeline.from_pretrained(pipe)
    assert torch.equal(loaded.vae.latents_std, original.vae.latents_std)
    assert not torch.equal(loaded.transformer.proj_in.weight, original.transformer.proj_in.weight)


# -- data: an LTX-Video recipe's buckets --------------------------------------------------------------------------

# source clips: (frames at 30 fps, height, width); 121 frames at 24 fps need 5 s of video
CLIPS = [(300, 720, 1280), (300, 1080, 1920), (200, 480, 640), (150, 512, 512), (120, 720, 1280), (60, 1080, 1920)]


@pytest.fixture
def ltx_data(tmp_path: Path) -> Path:
    records: list[dict[str, Any]] = [
        {"path": f"clip{i}.mp4", "cap": f"clip {i}", "num_frames": n, "fps": 30, "resolution": {"height": h, "width": w}}
        for i, (n, h, w) in enumerate(CLIPS * 3)
    ]
    (tmp_path / "anno.json").write_text(json.dumps(records))
    (tmp_path / "data.txt").write_text(f"{tmp_path / 'media'},anno.json\n")
    return tmp_path


SETS = ["data.force_resolution=false", "data.resolution_mode=area", "data.max_hxw=393216", "data.min_hxw=147456",
        "data.min_frames=17", "data.drop_short_ratio=0.0", "data.group_data=true", "data.min_bucket_batches=0"]


def test_an_ltx_video_recipe_buckets_8k_plus_1_frames_and_sizes_in_multiples_of_32(ltx_data: Path, monkeypatch):
    """`data bucket` with recipes/ltx-video.yaml (areas up to 768 x 512, clips of any length): every bucket is 8k+1
    frames (never v1.3's 4k+1 alone) and a multiple of 32 in both sizes, its tokens the LTX geometry's; the loader
    reads the index as up to date with the same geometry, and reads each sample's bucket frame count."""
    from osctl.data.dry_run import plan_index
    from osctl.data.stream.dataset import SampleDataset
    from osctl.data.stream.loader import plan_stream
    from osctl.parallel.layout import ParallelLayout
    from osctl.plugin_manager import default_registry
    from osctl.recipe.load import load_recipe
    from osctl.recipe.validate import check_recipe

    monkeypatch.setenv("HF_HUB_CACHE", str(ltx_data / "hub"))  # the released pipeline is not here: plans use presets
    sets = [*SETS, f"data.data={ltx_data / 'data.txt'}", f"data.index_dir={ltx_data / 'index'}"]
    result = runner.invoke(app, ["data", "bucket", str(ltx_data / "data.txt"), "-r",
                                 str(REPO_ROOT / "recipes" / "ltx-video.yaml"), "-o", str(ltx_data / "index"),
                                 "--json", *[arg for s in sets for arg in ("--set", s)]])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["kept"] == len(CLIPS) * 3
    frames = {b["t"] for b in report["buckets"]}
    # 10, 6.7, 5, 4 and 2 s of source video at 24 fps, snapped down to 8k+1 frames (4k+1 would allow 117, 93, 45)
    assert frames == {121, 113, 89, 41}
    # 16:9, 4:3 and 1:1 sources at the largest area up to 768 x 512 in multiples of 32 (v1.3's 16 would allow 464 x 816)
    assert {(b["h"], b["w"]) for b in report["buckets"]} == {(448, 832), (480, 640), (512, 512)}
    for bucket in report["buckets"]:
        assert bucket["h"] % 32 == 0 and bucket["w"] % 32 == 0
        assert bucket["h"] * bucket["w"] <= 393216
        assert bucket["latent_tokens"] == LTX.tokens(bucket["t"], bucket["h"], bucket["w"])

    checked = check_recipe(load_recipe(REPO_ROOT / "recipes" / "ltx-video.yaml", sets), default_registry())
    assert checked.geometry == LTX
    layout = ParallelLayout.from_recipe(checked.loaded.recipe, world_size=1)
    index, settings, note = plan_index(checked.loaded.recipe, layout, checked.geometry)
    assert note == "up to date" and settings.geometry == LTX
    plan = plan_stream(checked.loaded.recipe, index, settings, note, layout=layout, dp_rank=0)
    assert plan.read.geometry == LTX and plan.pad is None  # group_data: one shape per batch
    dataset = SampleDataset(index, plan.read)
    shapes = {tuple(index.sample(i).shape) for i in range(len(index))}
    assert shapes == {(b["t"], b["h"], b["w"]) for b in report["buckets"]}
    for sample in range(len(index)):
        t = index.sample(sample).shape[0]
        assert len(dataset.frame_indices(sample, random.Random(sample))) == t


# -- plans of the released presets the shipped recipes do not name ------------------------------------------------

@pytest.mark.parametrize(("recipe", "sets", "model"), [
    ("cogvideox-5b.yaml", ["model.preset=cogvideox-2b", "pipeline_path=THUDM/CogVideoX-2b",
                           "sample.sample_method=CogVideoX"], "cogvideox: 1693.78 M parameters"),
    ("cogvideox-5b.yaml", ["model.preset=cogvideox1.5-5b", "pipeline_path=THUDM/CogVideoX1.5-5B",
                           "diffusion.snr_shift_scale=1.0", "data.num_frames=81", "data.min_frames=81",
                           "data.train_fps=16", "data.max_height=768", "data.max_width=1360"],
     "cogvideox: 5570.68 M parameters"),
], ids=["cogvideox-2b", "cogvideox1.5-5b"])
def test_train_dry_run_plans_the_released_presets_on_the_meta_device(recipe, sets, model, tmp_path, monkeypatch):
    from tests.integration.test_offline_plans import write_long_clips

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    data = write_long_clips(tmp_path / "data", count=8)
    result = runner.invoke(app, ["train", "--recipe", str(REPO_ROOT / "recipes" / recipe), "--dry-run", "--json",
                                 "--set", f"data.data={data}", *[a for s in sets for a in ("--set", s)]])
    assert result.exit_code == 0, result.output
    plan = json.loads(result.stdout)
    assert plan["model"].startswith(model) and "GB per process" in plan["memory with frozen components"]
    assert plan["text encoder"].startswith("t5: 4.76 B parameters") and "missing weights model.path" in plan
