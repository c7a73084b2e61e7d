"""`osctl eval shapes` through the command line: tables, JSON schema, exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from osctl.cli import OsctlGroup
from osctl.cli import eval as eval_cli
from osctl.synth.shapes import plan_dataset
from tests.shapes_helpers import write_noise_samples, write_shape_samples

runner = CliRunner()


@pytest.fixture(scope="module")
def root() -> typer.Typer:
    """A root app with the real error boundary and the `eval` group mounted as the lead will mount it."""
    app = typer.Typer(cls=OsctlGroup)
    app.add_typer(eval_cli.app, name="eval")
    return app


@pytest.fixture(scope="module")
def samples(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("samples")
    write_shape_samples(out, plan_dataset(6, 0, seed=0, hold_out=False), images=1)
    return out


def test_eval_shapes_json(root, samples):
    result = runner.invoke(root, ["eval", "shapes", str(samples), "--json", "--min-accuracy", "color=0.9",
                                  "--min-accuracy", "motion=0.8"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["schema"] == "osctl.eval.shapes/1"
    assert set(payload) == {"schema", "samples_dir", "settings", "totals", "prompts", "samples", "checks"}
    assert payload["totals"]["samples"] == 7
    for attribute in ("color", "shape", "motion"):
        assert payload["totals"][attribute]["accuracy"] == 1.0
    assert {a: payload["totals"][a]["chance"] for a in ("color", "shape", "motion")} == \
        {"color": 0.2, "shape": 0.3333, "motion": 0.2}
    assert payload["prompts"][0]["shape"]["chance"] == 0.3333
    assert set(payload["prompts"][0]) == {"prompt", "expected", "samples", "color", "shape", "motion",
                                          "most_common_prediction"}
    assert [c["ok"] for c in payload["checks"]] == [True, True]


def test_eval_shapes_human_tables(root, samples):
    result = runner.invoke(root, ["eval", "shapes", str(samples)])
    assert result.exit_code == 0, result.output
    assert "prompt adherence: 7 samples" in result.stdout and "per prompt" in result.stdout
    assert "1.000" in result.stdout
    rows = [[cell.strip() for cell in line.strip("│ ").split("│")] for line in result.stdout.splitlines()]
    summary = {row[0]: row[-1] for row in rows if row[0] in ("color", "shape", "motion")}
    assert summary == {"color": "0.200", "shape": "0.333", "motion": "0.200"}  # the chance column
    assert "color (chance 0.20)" in result.stdout and "shape (chance 0.33)" in result.stdout


def test_eval_shapes_exit_codes(root, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    result = runner.invoke(root, ["eval", "shapes", str(empty)])
    assert result.exit_code == 1 and "no samples" in result.stderr
    assert runner.invoke(root, ["eval", "shapes", str(tmp_path / "missing")]).exit_code == 2
    assert runner.invoke(root, ["eval", "shapes", str(empty), "--min-accuracy", "colour=1.5"]).exit_code == 2
    assert runner.invoke(root, ["eval", "shapes", str(empty), "--min-accuracy", "size=0.5"]).exit_code == 2
    noise = tmp_path / "noise"
    write_noise_samples(noise, 3, frames=5, size=(32, 32))
    result = runner.invoke(root, ["eval", "shapes", str(noise), "--json", "--min-accuracy", "color=0.5"])
    assert result.exit_code == 1
    payload = json.loads(result.stdout)  # the report is still printed before the check fails
    assert payload["totals"]["found"] == 0 and payload["checks"][0]["ok"] is False
    assert "color accuracy 0.0 < 0.5" in result.stderr
    human = runner.invoke(root, ["eval", "shapes", str(noise)])
    assert human.exit_code == 0 and "no object found" in human.stdout
