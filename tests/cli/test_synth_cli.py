"""`osctl data synth shapes` through the command line (attached to a `data` group by `register`)."""

from __future__ import annotations

import json

import pytest
import typer
from typer.testing import CliRunner

from osctl.cli import OsctlGroup
from osctl.cli import synth as synth_cli

runner = CliRunner()


@pytest.fixture(scope="module")
def root() -> typer.Typer:
    """A root app with the real error boundary and a `data` group that our `register` extends."""
    app = typer.Typer(cls=OsctlGroup)
    data_app = typer.Typer(help="data commands")
    synth_cli.register(data_app)
    app.add_typer(data_app, name="data")
    return app


def test_synth_shapes_json_then_reuse(root, tmp_path):
    out = tmp_path / "shapes"
    args = ["data", "synth", "shapes", str(out), "--videos", "4", "--images", "2", "--seed", "3", "--json"]
    result = runner.invoke(root, args)
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["schema"] == "osctl.data.synth.shapes/1"
    assert set(payload) == {"schema", "out", "data_txt", "annotations", "held_out_prompts", "videos", "images",
                            "files", "bytes", "reused", "held_out", "seconds"}
    assert (payload["videos"], payload["images"], payload["reused"]) == (4, 2, False)
    assert payload["data_txt"] == str((out / "data.txt").resolve())
    assert ["red", "circle", "left"] in payload["held_out"]
    assert len(list((out / "videos").glob("*.mp4"))) == 4 and len(list((out / "images").iterdir())) == 2
    again = runner.invoke(root, args)
    assert again.exit_code == 0 and json.loads(again.stdout)["reused"] is True


def test_synth_shapes_human_output_and_no_hold_out(root, tmp_path):
    result = runner.invoke(root, ["data", "synth", "shapes", str(tmp_path / "d"), "--videos", "2", "--images", "0",
                                  "--no-hold-out"])
    assert result.exit_code == 0, result.output
    assert "shapes dataset" in result.stdout and "none (--no-hold-out)" in result.stdout
    assert "osctl data validate" in result.stdout
    manifest = json.loads((tmp_path / "d" / "synth.json").read_text())
    assert manifest["options"]["hold_out"] is False and manifest["held_out"] == []
    assert manifest["options"]["video_backgrounds"] == ["black"]


def test_synth_shapes_video_background_option(root, tmp_path):
    out = tmp_path / "g"
    result = runner.invoke(root, ["data", "synth", "shapes", str(out), "--videos", "2", "--images", "0",
                                  "--video-background", "grey", "--video-background", "black", "--json"])
    assert result.exit_code == 0, result.output
    records = json.loads((out / "annotations" / "videos.json").read_text())
    assert sorted(r["synth"]["background"] for r in records) == ["black", "grey"]
    assert json.loads((out / "synth.json").read_text())["options"]["video_backgrounds"] == ["grey", "black"]
    bad = runner.invoke(root, ["data", "synth", "shapes", str(tmp_path / "b"), "--video-background", "pink"])
    assert bad.exit_code == 2 and "'pink' is not a background" in bad.stderr


def test_synth_shapes_lane_spread_option(root, tmp_path):
    """--lane-spread 1 lets a moving shape cross anywhere; the default keeps it on the centre line."""
    lanes = {}
    for spread in ("0", "1"):
        out = tmp_path / f"lane{spread}"
        args = ["data", "synth", "shapes", str(out), "--videos", "8", "--images", "0", "--seed", "3", "--json"]
        result = runner.invoke(root, args + ([] if spread == "0" else ["--lane-spread", spread]))
        assert result.exit_code == 0, result.output
        assert json.loads((out / "synth.json").read_text())["options"]["lane_spread"] == float(spread)
        records = json.loads((out / "annotations" / "videos.json").read_text())
        lanes[spread] = [(r["synth"]["start"], r.get("crop") or [0, r["resolution"]["width"], 0, r["resolution"]["height"]],
                          r["synth"]["motion"]) for r in records if r["synth"]["motion"] != "still"]
    middle = [(c[2] + c[3]) / 2 if m in ("left", "right") else (c[0] + c[1]) / 2 for _, c, m in lanes["0"]]
    assert [s[1] if m in ("left", "right") else s[0] for s, _, m in lanes["0"]] == pytest.approx(middle, abs=0.01)
    assert [s[1] if m in ("left", "right") else s[0] for s, _, m in lanes["1"]] != pytest.approx(middle, abs=0.01)
    bad = runner.invoke(root, ["data", "synth", "shapes", str(tmp_path / "b"), "--lane-spread", "2"])
    assert bad.exit_code == 2


def test_synth_shapes_usage_errors_exit_2(root, tmp_path):
    assert runner.invoke(root, ["data", "synth", "shapes", str(tmp_path / "x"), "--videos", "-1"]).exit_code == 2
    assert runner.invoke(root, ["data", "synth", "shapes"]).exit_code == 2
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("x")
    result = runner.invoke(root, ["data", "synth", "shapes", str(busy), "--videos", "1"])
    assert result.exit_code == 2
    assert "not empty" in result.stderr and sorted(p.name for p in busy.iterdir()) == ["keep.txt"]
    result = runner.invoke(root, ["data", "synth", "shapes", str(tmp_path / "z"), "--videos", "0", "--images", "0"])
    assert result.exit_code == 2 and "empty dataset" in result.stderr


def test_synth_help_lists_the_options(root):
    result = runner.invoke(root, ["data", "synth", "shapes", "--help"])
    assert result.exit_code == 0
    for option in ("--videos", "--images", "--seed", "--hold-out", "--no-hold-out", "--force", "--json",
                   "--video-background", "--lane-spread"):
        assert option in result.stdout
