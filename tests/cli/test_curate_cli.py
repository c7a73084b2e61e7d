"""`osctl data import | split-scenes | caption | score` through the command line (CliRunner, real error boundary)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from osctl.cli import OsctlGroup
from osctl.cli import curate as curate_cli
from tests.curate_helpers import ensure_curation_plugins, moving_square, three_scene_clip

runner = CliRunner()


@pytest.fixture(scope="module")
def root() -> typer.Typer:
    """A root app with the real error boundary and a `data` group that our `register` extends."""
    app = typer.Typer(cls=OsctlGroup)
    data_app = typer.Typer(help="data commands")
    curate_cli.register(data_app)
    app.add_typer(data_app, name="data")
    return app


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("cli") / "src"
    three_scene_clip(folder / "three.mp4", (16, 16))
    moving_square(folder / "square.mp4", speed=2)
    (folder / "square.txt").write_text("a white square moving right")
    (folder / "broken.mp4").write_text("not a video")
    return folder


@pytest.fixture
def plugins(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    ensure_curation_plugins(monkeypatch, tmp_path / "site")


def _json(result: object) -> dict:
    assert result.exit_code == 0, result.output  # type: ignore[attr-defined]
    return json.loads(result.stdout)  # type: ignore[attr-defined]


def test_import_json_then_human_rerun(root: typer.Typer, source: Path, tmp_path: Path) -> None:
    out = tmp_path / "imported"
    payload = _json(runner.invoke(root, ["data", "import", str(source), "-o", str(out), "-w", "2", "--json"]))
    assert payload["schema"] == "osctl.data.import/1"
    assert set(payload) == {"schema", "out", "data_txt", "annotations", "source", "source_kind", "files", "written",
                            "skipped", "warnings", "probed", "reused", "engine", "workers", "seconds", "problems"}
    assert (payload["files"], payload["written"], payload["skipped"], payload["probed"]) == (3, 2, 1, 3)
    assert [(Path(p["path"]).name, p["code"]) for p in payload["problems"]] == [("broken.mp4", "unreadable")]
    again = runner.invoke(root, ["data", "import", str(source), "-o", str(out)])
    assert again.exit_code == 0, again.output
    assert "probed 0, reused 3" in again.stdout and "broken.mp4" in again.stdout
    assert f"osctl data validate {out / 'data.txt'} --probe" in again.stdout.replace("\n", "")


def test_import_errors_exit_codes(root: typer.Typer, tmp_path: Path) -> None:
    bad = runner.invoke(root, ["data", "import", str(tmp_path), "-o", str(tmp_path / "o"), "--captions", "sidecar"])
    assert bad.exit_code == 2 and "is not a caption source" in bad.stderr
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "a.mp4").write_bytes(b"")
    nothing = runner.invoke(root, ["data", "import", str(tmp_path / "junk"), "-o", str(tmp_path / "o2")])
    assert nothing.exit_code == 1 and "none of the 1 files" in nothing.stderr
    ray_address = runner.invoke(root, ["data", "import", str(tmp_path / "junk"), "-o", str(tmp_path / "o3"),
                                       "--address", "auto"])
    assert ray_address.exit_code == 2 and "--address names a Ray cluster; add --engine ray" in ray_address.stderr


def test_split_scenes_then_score(root: typer.Typer, source: Path, tmp_path: Path, plugins: None) -> None:
    imported = _json(runner.invoke(root, ["data", "import", str(source), "-o", str(tmp_path / "i"), "--json"]))
    scenes = _json(runner.invoke(root, ["data", "split-scenes", imported["data_txt"], "-o", str(tmp_path / "s"),
                                        "--json"]))
    assert scenes["schema"] == "osctl.data.split-scenes/1" and (scenes["records"], scenes["written"]) == (2, 3)
    scored = _json(runner.invoke(root, ["data", "score", scenes["data_txt"], "-o", str(tmp_path / "sc"),
                                        "--set", "motion.pairs=2", "--set", "tech.frames=2", "-w", "2", "--json"]))
    assert scored["schema"] == "osctl.data.score/1" and (scored["worked"], scored["errors"]) == (3, 0)
    records = json.loads(Path(scored["annotations"][0]).read_text())
    assert all(isinstance(r["motion"], float) and isinstance(r["tech"], float) for r in records)
    square = next(r for r in records if r["path"] == "square.mp4")
    assert square["motion"] > 0.005


def test_score_and_caption_usage_errors(root: typer.Typer, source: Path, tmp_path: Path, plugins: None) -> None:
    imported = _json(runner.invoke(root, ["data", "import", str(source), "-o", str(tmp_path / "i"), "--json"]))
    data_txt = imported["data_txt"]
    unknown = runner.invoke(root, ["data", "score", data_txt, "-o", str(tmp_path / "o"), "--scorer", "moton"])
    assert unknown.exit_code == 2 and "unknown scorer 'moton'" in unknown.stderr and "Did you mean 'motion'" in unknown.stderr
    bad_set = runner.invoke(root, ["data", "score", data_txt, "-o", str(tmp_path / "o"), "--set", "pairs=2"])
    assert bad_set.exit_code == 2 and "name the scorer, e.g. --set motion.pairs=8" in bad_set.stderr
    bad_value = runner.invoke(root, ["data", "score", data_txt, "-o", str(tmp_path / "o"), "--set", "motion.pairs=0"])
    assert bad_value.exit_code == 2 and "scorer motion.pairs" in bad_value.stderr
    no_model = runner.invoke(root, ["data", "caption", data_txt, "-o", str(tmp_path / "o")])
    assert no_model.exit_code == 2 and "captioner vlm.model: Field required" in no_model.stderr
    no_aesthetic = runner.invoke(root, ["data", "score", data_txt, "-o", str(tmp_path / "o"), "--scorer", "aesthetic"])
    assert no_aesthetic.exit_code == 2 and "needs a local model" in no_aesthetic.stderr


def test_caption_fills_missing_captions_with_a_local_model(root: typer.Typer, source: Path, tmp_path: Path,
                                                           plugins: None) -> None:
    from osctl_builtin.curation.vlm import TINY_WORDS, build_tiny_vlm

    model = build_tiny_vlm(tmp_path / "blip")
    imported = _json(runner.invoke(root, ["data", "import", str(source), "-o", str(tmp_path / "i"), "--json"]))
    args = ["data", "caption", imported["data_txt"], "-o", str(tmp_path / "c"), "--set", f"model={model}",
            "--set", "max_new_tokens=6", "-w", "1", "--json"]
    payload = _json(runner.invoke(root, args))
    assert payload["schema"] == "osctl.data.caption/1" and (payload["worked"], payload["untouched"]) == (1, 1)
    records = {r["path"]: r for r in json.loads(Path(payload["annotations"][0]).read_text())}
    assert records["square.mp4"]["cap"] == "a white square moving right"  # kept: it had one
    assert records["three.mp4"]["cap"] and set(records["three.mp4"]["cap"].split()) <= set(TINY_WORDS)
    again = _json(runner.invoke(root, args))
    assert (again["worked"], again["reused"]) == (0, 1)
    assert Path(again["annotations"][0]).read_text() == Path(payload["annotations"][0]).read_text()
