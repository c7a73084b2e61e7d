"""The Wan family through the command line: `plugins list`, `ckpt inspect` of released and trained folders,
`ckpt convert --to diffusers-pipeline` (dry run and refusals) and `train --dry-run` of the released presets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from osctl.cli import app
from tests.train_helpers import SyntheticClips, write_tiny_recipe
from tests.wan_helpers import ensure_wan_plugins, tiny_pipeline, wan_registry

runner = CliRunner()


@pytest.fixture(autouse=True)
def _wan_plugins(monkeypatch, tmp_path):
    ensure_wan_plugins(monkeypatch, tmp_path / "site")


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """(pipeline folder, checkpoint-1) of a Wan 2.2 two-expert model trained for one step."""
    from osctl.recipe.load import load_recipe
    from osctl.recipe.validate import check_recipe
    from osctl.train.run import TrainOptions, run_training

    tmp = tmp_path_factory.mktemp("wan-trained")
    pipe = tiny_pipeline(tmp / "pipe", preset="tiny-a14b")
    recipe = tmp / "wan.yaml"
    recipe.write_text(f"pipeline_path: {pipe}\nmodel: {{name: wan}}\nautoencoder: {{name: wan_vae}}\n"
                      "text_encoder: {name: t5, max_length: 32}\ndata: {num_frames: 9, hw_stride: 16}\n"
                      "diffusion: {objective: flow_matching, flow_shift: 3.0}\n"
                      f"train: {{output_dir: {tmp / 'out'}, max_steps: 1, train_batch_size: 2, mixed_precision: fp32}}\n"
                      "parallel: {strategy: single}\n"
                      "sample: {sample_method: UniPCMultistep, sampler_options: {flow_shift: 3.0}, dtype: fp32}\n")
    registry = wan_registry()
    checked = check_recipe(load_recipe(recipe), registry)
    text = registry.build("text_encoder", "t5", checked.components["text_encoder"])
    run_training(checked, registry, TrainOptions(data_source=SyntheticClips(text.tokenize, frames=9, size=32)))
    return pipe, tmp / "out" / "checkpoint-1"


def test_plugins_list_shows_the_wan_family():
    result = runner.invoke(app, ["plugins", "list", "--json"])
    assert result.exit_code == 0, result.output
    names = {(c["kind"], c["name"]) for c in json.loads(result.stdout)["components"]}
    assert {("model", "wan"), ("autoencoder", "wan_vae"), ("sampler", "UniPCMultistep")} <= names


def test_inspect_names_a_pipeline_folder_and_its_components(trained):
    pipe, _ = trained
    result = runner.invoke(app, ["ckpt", "inspect", str(pipe), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["format"] == "diffusers-pipeline" and report["integrity"]["ok"]
    pipeline = report["pipeline"]
    assert pipeline["class_name"] == "WanPipeline" and pipeline["settings"]["boundary_ratio"] == 0.875
    loaders = {name: (c["loads_with"] or {}).get("name") for name, c in pipeline["components"].items()}
    assert loaders == {"transformer": "wan", "transformer_2": "wan", "vae": "wan_vae", "text_encoder": "t5",
                       "tokenizer": None, "scheduler": None}
    assert report["architecture"]["class_name"] == "WanTransformer3DModel"
    assert set(report["weights"]["modules"]) == {"transformer", "transformer_2"}
    human = runner.invoke(app, ["ckpt", "inspect", str(pipe)])
    assert "WanPipeline (boundary_ratio 0.875" in human.stdout and "AutoencoderKLWan" in human.stdout


def test_inspect_a_two_expert_checkpoint_describes_both_parts(trained):
    _, checkpoint = trained
    result = runner.invoke(app, ["ckpt", "inspect", str(checkpoint), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["architecture"]["loads_with"]["name"] == "wan"
    assert set(report["parts"]) == {"transformer", "transformer_2"}
    assert report["weights"]["parameters"] == sum(p["parameters"] for p in report["parts"].values())
    assert report["ema"]["present"] and report["ema"]["parameters"] == report["weights"]["parameters"]


def test_convert_to_diffusers_pipeline_dry_run_and_refusals(trained, tmp_path):
    _, checkpoint = trained
    out = tmp_path / "exported"
    dry = runner.invoke(app, ["ckpt", "convert", str(checkpoint), "--to", "diffusers-pipeline", "-o", str(out),
                              "--dry-run", "--json"])
    assert dry.exit_code == 0, dry.output
    planned = {f["path"] for f in json.loads(dry.stdout)["files"]}
    assert planned == {"transformer/", "transformer_2/", "vae/", "text_encoder/", "tokenizer/", "scheduler/",
                       "model_index.json"}
    assert not out.exists()
    written = runner.invoke(app, ["ckpt", "convert", str(checkpoint), "--to", "diffusers-pipeline", "-o", str(out)])
    assert written.exit_code == 0, written.output
    assert (out / "model_index.json").is_file() and "hard-linked" in written.stdout
    again = runner.invoke(app, ["ckpt", "convert", str(checkpoint), "--to", "diffusers-pipeline", "-o", str(out)])
    assert again.exit_code == 2 and "already exists" in again.output


def test_convert_to_diffusers_pipeline_refuses_a_model_without_a_pipeline(tmp_path):
    from osctl.plugin_manager import default_registry
    from osctl.recipe.load import load_recipe
    from osctl.recipe.validate import check_recipe
    from osctl.train.run import TrainOptions, run_training

    recipe = write_tiny_recipe(tmp_path, tmp_path / "out", tmp_path / "cache")
    registry = default_registry()
    checked = check_recipe(load_recipe(recipe, ["train.max_steps=1"]), registry)
    text = registry.build("text_encoder", "tiny_t5", checked.components["text_encoder"])
    run_training(checked, registry, TrainOptions(data_source=SyntheticClips(text.tokenize)))
    result = runner.invoke(app, ["ckpt", "convert", str(tmp_path / "out" / "checkpoint-1"), "--to",
                                 "diffusers-pipeline", "-o", str(tmp_path / "x")])
    assert result.exit_code == 2
    assert "needs a model from a diffusers family" in result.output and "opensora_v1_3" in result.output


def test_a_pipeline_path_of_another_family_is_refused_naming_its_class(tmp_path):
    other = tmp_path / "ltx"
    other.mkdir()
    (other / "model_index.json").write_text(json.dumps({"_class_name": "LTXPipeline",
                                                        "transformer": ["diffusers", "LTXVideoTransformer3DModel"]}))
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"pipeline_path: {other}\nmodel: {{name: wan}}\nautoencoder: {{name: wan_vae}}\n"
                      "diffusion: {objective: flow_matching}\nsample: {sample_method: UniPCMultistep}\n")
    result = runner.invoke(app, ["recipe", "validate", str(recipe)])
    assert result.exit_code == 2
    assert "LTXPipeline (transformer LTXVideoTransformer3DModel), not a Wan pipeline" in result.output
    wrong = tmp_path / "w.yaml"
    wrong.write_text(f"pipeline_path: {other}\n")  # the default model plugin cannot be filled from a pipeline
    result = runner.invoke(app, ["recipe", "validate", str(wrong)])
    assert result.exit_code == 2 and "cannot be loaded from a diffusers pipeline" in result.output
