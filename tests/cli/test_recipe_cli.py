"""`osctl recipe show/validate`: shipped recipes are valid; bad recipes exit 2 with one clear sentence."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from osctl.cli import app

runner = CliRunner()
RECIPES = Path(__file__).resolve().parents[2] / "recipes"


@pytest.mark.parametrize("recipe", sorted(p.name for p in RECIPES.glob("*.yaml")))
def test_shipped_recipes_validate(recipe, monkeypatch, tmp_path):
    from tests.family_helpers import ensure_family_plugins

    ensure_family_plugins(monkeypatch, tmp_path / "site")  # until osctl is reinstalled with their entry points
    result = runner.invoke(app, ["recipe", "validate", str(RECIPES / recipe), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["valid"] is True


def test_show_resolves_extends_overrides_and_plugin_defaults():
    result = runner.invoke(app, ["recipe", "show", str(RECIPES / "480p.yaml"), "--set", "train.learning_rate=2e-5",
                                 "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    recipe = payload["recipe"]
    assert recipe["train"]["learning_rate"] == 2e-5
    assert recipe["data"]["num_frames"] == 93 and recipe["data"]["force_resolution"] is True
    assert recipe["diffusion"]["prediction_type"] == "v_prediction"  # from base/osp-v1.3.yaml
    assert recipe["model"]["name"] == "opensora_v1_3" and recipe["model"]["preset"] == "2B/122"
    assert "gradient_checkpointing" in recipe["model"]  # the plugin's own defaults are shown
    assert len(payload["fingerprint"]) == 64
    human = runner.invoke(app, ["recipe", "show", str(RECIPES / "480p.yaml")])
    assert human.exit_code == 0 and "learning_rate" in human.stdout


@pytest.mark.parametrize(
    ("text", "extra", "message"),
    [
        ("train:\n  learnin_rate: 1\n", [], "train.learnin_rate: unknown key; did you mean 'learning_rate'?"),
        ("train:\n  max_steps: many\n", [], "train.max_steps: input should be a valid integer"),
        ("data:\n  num_frames: 90\n", [], "data.num_frames: must be 4k+1"),
        ("extends: missing.yaml\n", [], "`extends: missing.yaml` points to"),
        ("data: [\n", [], "YAML syntax error"),
        ("{}\n", ["--set", "train.nope=1"], "--set train.nope=1: train has no key 'nope'"),
        ("model:\n  name: opensora_v1_3\n  sparse_nn: 2\n", [], "model.sparse_nn: unknown key; did you mean 'sparse_n'?"),
        ("model:\n  name: opensora_v13\n", [], "unknown model 'opensora_v13'"),
        ("sample:\n  sample_method: Euler\n", [], "sample.sample_method: unknown sampler 'Euler'"),
        ("data:\n  hw_stride: 24\n", [], "data.hw_stride: 24 must be a multiple of the autoencoder stride x patch size"),
        ("diffusion:\n  objective: flow_matching\n", [],
         "sample.sample_method: 'EulerAncestralDiscrete' samples ddpm models but diffusion.objective is 'flow_matching'"),
        ("sample:\n  sample_method: FlowMatchEulerDiscrete\n", [],
         "'FlowMatchEulerDiscrete' samples flow_matching models but diffusion.objective is 'ddpm'"),
    ],
)
def test_bad_recipes_exit_2(tmp_path, text, extra, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    result = runner.invoke(app, ["recipe", "validate", str(path), *extra])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output
    assert sum(line.startswith("error:") for line in result.output.splitlines()) == 1


def test_warning_when_both_pretrained_and_resume(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("train:\n  pretrained: weights.safetensors\n  resume_from_checkpoint: latest\n")
    result = runner.invoke(app, ["recipe", "validate", str(path)])
    assert result.exit_code == 0
    assert "resuming restores the checkpoint's weights" in result.output


def test_out_of_tree_plugin_selectable_from_a_recipe(hello_plugin, tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("refiner:\n  name: shout\n  exclaim: 3\n")
    result = runner.invoke(app, ["recipe", "show", str(path), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["recipe"]["refiner"] == {"name": "shout", "exclaim": 3}
    path.write_text("refiner:\n  name: shout\n  exclaim: -1\n")
    result = runner.invoke(app, ["recipe", "validate", str(path)])
    assert result.exit_code == 2 and "refiner.exclaim" in result.output


def test_flow_matching_recipe_with_a_flow_sampler_is_valid(tmp_path):
    path = tmp_path / "flow.yaml"
    path.write_text("diffusion:\n  objective: flow_matching\nsample:\n  sample_method: FlowMatchEulerDiscrete\n")
    result = runner.invoke(app, ["recipe", "validate", str(path)])
    assert result.exit_code == 0, result.output
