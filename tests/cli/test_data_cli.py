"""`osctl data validate` and `osctl data bucket` through the command line (exit codes, JSON, tables, files)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from osctl.cli import app

VIDEO = {"cap": "a clip", "resolution": {"height": 720, "width": 1280}, "num_frames": 100, "fps": 16}
IMAGE = {"cap": "a photo", "resolution": {"height": 720, "width": 1280}}
RECIPE = "data:\n  num_frames: 29\n  train_fps: 16\n  max_hxw: 262144\n  group_data: true\n"

runner = CliRunner()


def _dataset(tmp_path: Path, records: list[Any], *, touch: bool = True) -> Path:
    media = tmp_path / "media"
    media.mkdir(exist_ok=True)
    for record in records:
        if touch and isinstance(record, dict) and "path" in record:
            (media / record["path"]).touch()
    (tmp_path / "anno.json").write_text(json.dumps(records))
    data_txt = tmp_path / "data.txt"
    data_txt.write_text(f"{media},anno.json\n")
    (tmp_path / "recipe.yaml").write_text(RECIPE)
    return data_txt


def _clean(n: int = 6) -> list[Any]:
    return [{**VIDEO, "path": f"v{i}.mp4"} for i in range(n)] + [{**IMAGE, "path": f"i{i}.jpg"} for i in range(n)]


def test_validate_clean_data(tmp_path: Path) -> None:
    result = runner.invoke(app, ["data", "validate", str(_dataset(tmp_path, _clean()))])
    assert result.exit_code == 0, result.output
    assert "Checked 1 annotation file with 12 records" in result.output
    assert "no problems found" in result.output
    assert "media_missing" in result.output  # the summary lists every check, passed ones included


def test_validate_reports_problems_with_examples(tmp_path: Path) -> None:
    records = [*_clean(2), {**VIDEO, "path": "nofps.mp4", "fps": None}, {**IMAGE, "path": "x.gif"}, {**IMAGE, "path": "gone.jpg"}]
    data_txt = _dataset(tmp_path, records)
    (tmp_path / "media" / "gone.jpg").unlink()
    result = runner.invoke(app, ["data", "validate", str(data_txt)])
    assert result.exit_code == 1
    out = result.output
    assert "missing_fps" in out and "unknown_extension" in out and "media_missing" in out
    assert "anno.json:4 fps: a video needs `fps`" in out
    assert "3 error(s)" in out


def test_validate_json_schema(tmp_path: Path) -> None:
    records = [*_clean(1), {**VIDEO, "path": "v0.mp4"}, {"path": "nocap.jpg", "resolution": {"height": 1, "width": 1}}]
    result = runner.invoke(app, ["data", "validate", str(_dataset(tmp_path, records)), "--json"])
    assert result.exit_code == 1
    payload = json.loads(result.stdout)
    assert payload["schema"] == "osctl.data.validate/1" and payload["ok"] is False and payload["probe"] is False
    assert payload["totals"] == {"files": 1, "records": 4, "errors": 1, "warnings": 1,
                                 "by_code": {"missing_caption": {"error": 1}, "duplicate_path": {"warning": 1}}}
    assert payload["files"] == [{"file": "anno.json", "format": "json", "records": 4, "problem": None}]
    assert sorted(payload["findings"], key=lambda f: f["code"]) == [
        {"severity": "warning", "code": "duplicate_path", "file": "anno.json", "index": 2, "field": "path",
         "message": f"{tmp_path / 'media' / 'v0.mp4'} is also listed at anno.json:0"},
        {"severity": "error", "code": "missing_caption", "file": "anno.json", "index": 3, "field": "cap",
         "message": "the record has no `cap`"},
    ]


def test_validate_usage_error(tmp_path: Path) -> None:
    result = runner.invoke(app, ["data", "validate", str(tmp_path / "missing.txt")])
    assert result.exit_code == 2
    assert "does not exist" in result.output


def test_bucket_writes_index_report_and_tables(tmp_path: Path) -> None:
    records = [*_clean(6), {**VIDEO, "path": "long.mp4", "num_frames": 5000}, {**IMAGE, "path": "sq.jpg", "resolution": {"height": 512, "width": 512}}]
    data_txt = _dataset(tmp_path, records)
    report = tmp_path / "reports" / "drops.jsonl"
    report.parent.mkdir()
    result = runner.invoke(app, ["data", "bucket", str(data_txt), "--recipe", str(tmp_path / "recipe.yaml"),
                                 "--out", str(tmp_path / "idx"), "--report", str(report)])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "kept 12 samples in 2 bucket(s)" in out
    assert "29x384x672" in out and "1x384x672" in out and "8064" in out  # latent tokens of 29x384x672
    assert "too_long" in out and "minority_bucket" in out
    assert "fewer than 4 x global batch 1 = 4 samples" in out
    assert (tmp_path / "idx" / "samples.arrow").is_file() and (tmp_path / "idx" / "index.json").is_file()
    lines = [json.loads(line) for line in report.read_text().splitlines()]
    assert len(lines) == len(records)
    assert set(lines[0]) == {"file", "index", "kept", "reason", "bucket", "frame_indices"}
    assert lines[0]["kept"] is True and lines[0]["bucket"] == "29x384x672" and len(lines[0]["frame_indices"]) == 29
    assert lines[6] == {"file": "anno.json", "index": 6, "kept": True, "reason": "kept", "bucket": "1x384x672",
                        "frame_indices": [0]}
    assert lines[12]["reason"] == "too_long" and lines[12]["bucket"] is None
    assert lines[13] == {"file": "anno.json", "index": 13, "kept": False, "reason": "minority_bucket",
                         "bucket": "1x512x512", "frame_indices": [0]}


def test_bucket_json_and_world_size(tmp_path: Path) -> None:
    data_txt = _dataset(tmp_path, _clean(8))
    result = runner.invoke(app, ["data", "bucket", str(data_txt), "-r", str(tmp_path / "recipe.yaml"), "--json",
                                 "--world-size", "2", "--set", "data.min_bucket_batches=1",
                                 "--set", f"train.output_dir={tmp_path / 'run'}"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["schema"] == "osctl.data.bucket/1"
    assert payload["index"] == str(tmp_path / "run" / "index" / "samples.arrow")
    assert payload["records"] == 16 and payload["kept"] == 16 and payload["reasons"] == {"kept": 16}
    assert payload["batch"]["global_batch"] == 2 and payload["batch"]["world_size"] == 2
    assert payload["minority"] == {"threshold": 2, "records": 0, "buckets": [],
                                   "rule": "buckets with fewer than 1 x global batch 2 = 2 samples are dropped"}
    assert [(b["key"], b["count"], b["batches"], b["lost"]) for b in payload["buckets"]] == [
        ("1x384x672", 8, 4, 0), ("29x384x672", 8, 4, 0)]
    assert payload["batches_per_epoch"] == 8 and payload["samples_lost"] == 0
    assert len(payload["fingerprint"]) == 64


def test_stale_index_is_detected(tmp_path: Path) -> None:
    import dataclasses

    from osctl.data.bucket import BucketSettings
    from osctl.data.index import StaleIndexError, open_index
    from osctl.plugin_manager import default_registry
    from osctl.recipe.load import load_recipe
    from osctl.recipe.validate import recipe_geometry

    data_txt = _dataset(tmp_path, _clean(6))
    args = ["data", "bucket", str(data_txt), "-r", str(tmp_path / "recipe.yaml"), "-o", str(tmp_path / "idx")]
    assert runner.invoke(app, args).exit_code == 0
    loaded = load_recipe(tmp_path / "recipe.yaml", [])
    settings = BucketSettings.from_recipe(loaded.recipe, geometry=recipe_geometry(loaded, default_registry()))
    assert len(open_index(tmp_path / "idx", data_txt=data_txt, settings=settings)) == 12
    other = dataclasses.replace(settings, geometry=dataclasses.replace(settings.geometry, patch_hw=1))
    with pytest.raises(StaleIndexError, match=r"geometry\.patch_hw was 2 when the index was built and is 1 now"):
        open_index(tmp_path / "idx", data_txt=data_txt, settings=other)  # built for another latent geometry
    (tmp_path / "anno.json").write_text(json.dumps(_clean(7)))
    with pytest.raises(StaleIndexError, match="changed"):
        open_index(tmp_path / "idx", data_txt=data_txt, settings=settings)
    assert runner.invoke(app, args).exit_code == 0  # rebuilding makes it fresh again
    assert len(open_index(tmp_path / "idx", data_txt=data_txt, settings=settings)) == 14


def test_rebuilding_reuses_the_recorded_digest_unless_rehash(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A second `data bucket` into the same folder takes the unchanged file's SHA-256 from the first index."""
    import osctl.data._fast.slices as slices
    import osctl.data.annotations as annotations
    import osctl.data.fingerprint as fingerprint

    monkeypatch.setattr(slices, "CHUNK_BYTES", 400)  # decoded in slices, so hashed after decoding
    monkeypatch.setattr(annotations, "hash_in_background", lambda digests: None)
    monkeypatch.setattr(fingerprint, "RACY_NS", 0)
    settled: list[str] = []
    real_settle = annotations.FileDigest.settle
    monkeypatch.setattr(annotations.FileDigest, "settle", lambda self, known: settled.append(known) or real_settle(self, known))
    data_txt = _dataset(tmp_path, _clean(6))
    args = ["data", "bucket", str(data_txt), "-r", str(tmp_path / "recipe.yaml"), "-o", str(tmp_path / "idx")]
    summary = tmp_path / "idx" / "index.json"
    assert runner.invoke(app, args).exit_code == 0 and settled == []
    first = json.loads(summary.read_text())["fingerprint"]
    assert runner.invoke(app, args).exit_code == 0
    assert settled == [first["annotations"][0]["sha256"]]
    assert runner.invoke(app, [*args, "--rehash"]).exit_code == 0
    assert len(settled) == 1  # --rehash hashed the file again
    assert json.loads(summary.read_text())["fingerprint"]["sha256"] == first["sha256"]


@pytest.mark.parametrize(("records", "extra", "code", "text"), [
    ([{"path": "x.jpg", "resolution": {"height": 1, "width": 1}}], [], 1, "no sample survived the rules"),
    (None, [], 1, "JSON syntax error"),
    (_clean(4), ["--set", "data.num_frames=30"], 2, "must be 4k+1"),
    (_clean(4), ["--world-size", "0"], 2, "world-size"),
    # an option the model plugin rejects: an error, not an index built on default strides
    (_clean(4), ["--set", "model.name=opensora_v1_3", "--set", "model.patch_size=1"], 2, "model.patch_size: unknown key"),
])
def test_bucket_failures(tmp_path: Path, records: Any, extra: list[str], code: int, text: str) -> None:
    data_txt = _dataset(tmp_path, records or [])
    if records is None:
        (tmp_path / "anno.json").write_text("[{]")
    result = runner.invoke(app, ["data", "bucket", str(data_txt), "-r", str(tmp_path / "recipe.yaml"),
                                 "-o", str(tmp_path / "idx"), *extra])
    assert result.exit_code == code, result.output
    assert text in result.output
    assert not (tmp_path / "idx" / "samples.arrow").exists()


@pytest.mark.parametrize("broken_data_txt", [True, False])
def test_bucket_reports_a_broken_recipe_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, broken_data_txt: bool) -> None:
    """The recipe is loaded while the annotations are decoded, yet its error still wins over data.txt's."""
    import osctl.data._fast.slices as slices

    monkeypatch.setattr(slices, "CHUNK_BYTES", 500)  # decoded in slices, by two processes
    monkeypatch.setattr(slices, "PARALLEL_MIN_BYTES", 0)
    data_txt = _dataset(tmp_path, _clean(60))
    if broken_data_txt:
        data_txt.write_text(data_txt.read_text() + "no comma here\n")
    for extra, text in ((["--set", "data.num_frames=30"], "must be 4k+1"), (["--set", "data.nope=1"], "nope")):
        result = runner.invoke(app, ["data", "bucket", str(data_txt), "-r", str(tmp_path / "recipe.yaml"),
                                     "-o", str(tmp_path / "idx"), "--workers", "2", *extra])
        assert result.exit_code == 2, result.output
        assert text in result.output and "no comma" not in result.output
        assert not (tmp_path / "idx").exists()
    result = runner.invoke(app, ["data", "bucket", str(data_txt), "-r", str(tmp_path / "recipe.yaml"),
                                 "-o", str(tmp_path / "idx"), "--workers", "2"])
    assert result.exit_code == (1 if broken_data_txt else 0), result.output
    assert ("no comma" in result.output) is broken_data_txt


def test_bucket_with_relative_paths_writes_the_index_where_train_reads_it(tmp_path, monkeypatch):
    """`make demo` runs with relative paths: the index must land in <output_dir>/index, not nested."""
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["data", "synth", "shapes", "d", "--videos", "3", "--images", "1"])
    assert result.exit_code == 0, result.output
    recipe = Path("r.yaml")
    recipe.write_text("data: {num_frames: 9, train_fps: 8, min_frames: 5, drop_short_ratio: 0.0, max_hxw: 1024, "
                      "hw_stride: 8, group_data: true, min_bucket_batches: 0}\n"
                      "autoencoder: {name: pixel, spatial_stride: 2, temporal_stride: 1}\n"
                      "model: {name: opensora_v1_3, preset: tiny, in_channels: 12, out_channels: 12}\n"
                      "train: {output_dir: out/train}\n")
    result = runner.invoke(app, ["data", "bucket", "d/data.txt", "--recipe", str(recipe)])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / "train" / "index" / "samples.arrow").is_file()
    from osctl.data.index import open_index

    assert len(open_index(Path("out/train/index"))) == 4


@pytest.mark.parametrize(("args", "skip"), [
    (["data", "validate", "data.txt"], True), (["--debug", "data", "bucket", "--recipe", "r.yaml"], True),
    (["data", "synth", "out"], False), (["data", "--help"], False), (["plugins", "list"], False),
    (["hello", "world"], False), ([], False),
])
def test_builtin_data_commands_skip_plugin_discovery(args: list[str], skip: bool) -> None:
    from osctl.cli import _builtin_data_command

    assert _builtin_data_command(args) is skip


def test_data_commands_as_a_process_flush_everything_and_keep_exit_codes(tmp_path: Path) -> None:
    """The console entry leaves data commands with os._exit: output, files and exit codes must be intact."""
    import subprocess
    import sys

    records = [*_clean(300), {**VIDEO, "path": "missing.mp4"}]
    data_txt = _dataset(tmp_path, records)
    (tmp_path / "media" / "missing.mp4").unlink()

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "osctl", "data", *args], capture_output=True, text=True,
                              cwd=tmp_path, timeout=120)

    found = run("validate", str(data_txt), "--json")
    assert found.returncode == 1, found.stderr
    report = json.loads(found.stdout)
    assert report["totals"]["records"] == len(records) and report["totals"]["by_code"] == {"media_missing": {"error": 1}}
    built = run("bucket", str(data_txt), "--recipe", str(tmp_path / "recipe.yaml"), "--out", str(tmp_path / "index"))
    assert built.returncode == 0, built.stderr
    assert built.stdout.rstrip().endswith("samples.arrow") and (tmp_path / "index" / "samples.arrow").is_file()
    again = run("bucket", str(data_txt), "--recipe", str(tmp_path / "recipe.yaml"), "--out", str(tmp_path / "index"))
    assert again.returncode == 0, again.stderr  # the replaced index is deleted before the process ends
    assert sorted(p.name for p in (tmp_path / "index").iterdir()) == ["index.json", "samples.arrow"]
    bad = run("validate", str(tmp_path / "none.txt"))
    assert bad.returncode == 2 and "does not exist" in bad.stderr


def test_bucket_without_the_models_plugin_refuses_instead_of_guessing_the_geometry(tmp_path: Path) -> None:
    """The frame rule and the token counts depend on the model's and the autoencoder's geometry: without the
    plugin that declares it there is no index (no v1.3 strides assumed)."""
    data_txt = _dataset(tmp_path, _clean(4))
    result = runner.invoke(app, ["data", "bucket", str(data_txt), "-r", str(tmp_path / "recipe.yaml"),
                                 "-o", str(tmp_path / "idx"), "--set", "model.name=not_installed_here"])
    assert result.exit_code == 2, result.output
    assert "model: unknown model 'not_installed_here'" in result.output
    assert not (tmp_path / "idx").exists()
    built = runner.invoke(app, ["data", "bucket", str(data_txt), "-r", str(tmp_path / "recipe.yaml"),
                                "-o", str(tmp_path / "idx"), "--json"])
    assert built.exit_code == 0, built.output
    bucket = next(b for b in json.loads(built.stdout)["buckets"] if b["t"] > 1)
    assert (bucket["key"], bucket["latent_tokens"]) == ("29x384x672", 8 * 24 * 42)  # WF-VAE 4x8x8, patches 1x2x2
