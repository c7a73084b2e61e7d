"""Bad inputs of every kind through the real commands: one sentence, the documented exit code, nothing touched.

Each case prepares a folder (a small dataset, recipes, prompt files), may simulate a failing disk with
a monkeypatch, runs one ``osctl`` command in-process (Typer's ``CliRunner``) and checks that

- the exit code is the documented one (1: the command ran and found a problem or could not store its
  output; 2: bad input: flags, recipes, files, an output folder that cannot be written);
- exactly one ``error:`` line was printed, naming the file, key or value at fault (the ``says`` parts);
- no ``Traceback``, no ``internal error``, no numpy warning;
- nothing was written or deleted in the case's folder (a snapshot of every path, size and mtime).

``data validate`` cases find problems in the data instead: they run with ``--json`` and name the
finding codes they expect. A few cases run in a real process (the markup of a path, an error on a
non-zero rank). Other suites cover damaged checkpoints/pickles (``test_bad_checkpoints.py``) and
multi-process launch failures; they are not repeated here.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from osctl.cli import app
from tests.train_helpers import TINY_RECIPE

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "recipes" / "demo.yaml"
runner = CliRunner()

VIDEO = {"cap": "a clip", "resolution": {"height": 128, "width": 128}, "num_frames": 48, "fps": 24}


def _dataset(root: Path, records: list[Any] | None = None, *, name: str = "anno.json", raw: bytes | None = None) -> Path:
    """``root/data.txt`` listing ``root/media,<name>``; media files exist for every record path."""
    media = root / "media"
    media.mkdir(parents=True, exist_ok=True)
    if records is None:
        records = [{**VIDEO, "path": f"v{i}.mp4"} for i in range(4)]
    for record in records:
        if isinstance(record, dict) and isinstance(record.get("path"), str):
            (media / record["path"]).parent.mkdir(parents=True, exist_ok=True)
            (media / record["path"]).touch()
    (root / name).write_bytes(raw if raw is not None else json.dumps(records).encode())
    (root / "data.txt").write_text(f"media,{name}\n")
    return root / "data.txt"


def _tiny_recipe(root: Path, extra: str = "") -> Path:
    """The tiny training recipe (pixel autoencoder, tiny text encoder), outputs under ``root``."""
    path = root / "tiny.yaml"
    path.write_text(TINY_RECIPE.format(out=root / "out", cache=root / "cache") + extra)
    return path


def _write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


def _index(root: Path) -> Path:
    """A built sample index in ``root/idx`` (the pair a failed rebuild must leave as it was)."""
    data_txt = _dataset(root)
    result = runner.invoke(app, ["data", "bucket", str(data_txt), "--recipe", str(DEMO), "--set",
                                 "train.train_batch_size=1", "--out", str(root / "idx")])
    assert result.exit_code == 0, result.output
    return data_txt


def _fail_with(code: int, target: str) -> Callable[[pytest.MonkeyPatch, Path], None]:
    """A patch making ``target`` (``module.attr``) raise ``OSError(code)`` like a failing disk."""
    module, attr = target.rsplit(".", 1)

    def patch(monkeypatch: pytest.MonkeyPatch, root: Path) -> None:
        def fail(*args: Any, **kwargs: Any) -> Any:
            raise OSError(code, os.strerror(code), str(root / "somewhere" / ".tmp-file"))

        monkeypatch.setattr(f"{module}.{attr}", fail)

    return patch


@dataclass
class Case:
    """One bad input: how to set it up, the command, the exit code and what the sentence must name."""

    id: str
    prepare: Callable[[Path], list[str]]  # builds the inputs under the case folder, returns the command line
    code: int
    says: tuple[str, ...] = ()  # parts of the one error line ("{root}" is the case folder)
    findings: tuple[str, ...] = ()  # data validate --json: the finding codes expected (and no others)
    patch: Callable[[pytest.MonkeyPatch, Path], None] | None = None
    env: dict[str, str] = field(default_factory=dict)
    new: tuple[str, ...] = ()  # paths (relative to the case folder) a failing command may leave, e.g. empty folders


def _validate(records: list[Any] | None = None, **kwargs: Any) -> Callable[[Path], list[str]]:
    return lambda root: ["data", "validate", str(_dataset(root, records, **kwargs)), "--json"]


def _bucket(*extra: str, records: list[Any] | None = None, **kwargs: Any) -> Callable[[Path], list[str]]:
    """``data bucket`` of a small data set with the demo recipe, its batch lowered so an epoch has batches."""
    return lambda root: ["data", "bucket", str(_dataset(root, records, **kwargs)), "--recipe", str(DEMO),
                         "--set", "train.train_batch_size=1", "--out", str(root / "idx"),
                         *[e.format(root=root) for e in extra]]


def _recipe(text: str, *extra: str, name: str = "r.yaml") -> Callable[[Path], list[str]]:
    return lambda root: ["recipe", "validate", str(_write(root / name, text)), *extra]


def _prompts(content: str | bytes, name: str = "p.jsonl", *extra: str) -> Callable[[Path], list[str]]:
    return lambda root: ["sample", "--recipe", str(_tiny_recipe(root)), "--prompts", str(_write(root / name, content)),
                         "-o", str(root / "samples"), *extra]


DEEP = b"[" * 200_000 + b"]" * 200_000
ABSURD = [
    {**VIDEO, "path": "a.mp4", "num_frames": 1e30},
    {**VIDEO, "path": "b.mp4", "resolution": {"height": 1e25, "width": 128}},
    {**VIDEO, "path": "c.mp4", "resolution": {"height": 128, "width": 1e308}},
    {**VIDEO, "path": "d.mp4", "fps": 1e308},
    {**VIDEO, "path": "e.mp4", "fps": 1e-300},
    {**VIDEO, "path": "f.mp4", "cut": [1e17, 1e17 + 48]},
    {**VIDEO, "path": "g.mp4", "crop": [0, 1e300, 0, 64]},
]
GOOD_PROMPTS = '{"prompt": "a red circle"}\n{"prompt": "a blue square", "seed": 3}\n'

CASES = [
    # ---- command-line values and paths holding rich markup
    Case("markup-data-txt-path", lambda root: ["data", "validate", str(root / "nope[/x]" / "data.txt")], 2,
         ("nope[/x]/data.txt", "does not exist")),
    Case("markup-recipe-path", lambda root: ["recipe", "validate", str(root / "a[/b].yaml")], 2,
         ("a[/b].yaml", "does not exist")),
    Case("markup-set-value", _recipe("train:\n  max_steps: 3\n", "--set", "train.max_steps=[/oops]"), 2,
         ("--set train.max_steps=[/oops]", "train.max_steps")),
    Case("markup-recipe-file-with-error", _recipe("train:\n  learnin_rate: 1\n", name="x[/y]z.yaml"), 2,
         ("x[/y]z.yaml:2: train.learnin_rate: unknown key",)),
    Case("markup-plugin-hint-keeps-extra", _recipe("train:\n  trackers: [tensorboard]\n"), 2,
         ("r.yaml:2", 'pip install -c constraints.txt "osctl[tensorboard]"'),
         patch=lambda mp, root: mp.setattr("osctl.registry.module_available", lambda name: name != "tensorboard")),
    Case("rank-error-with-gloo-brackets", _recipe("{}\n"), 1,
         ("rank 1: internal error: RuntimeError: [/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:553] "
          "Connection closed by peer [10.0.0.2]:41234",),
         patch=lambda mp, root: mp.setattr("osctl.recipe.load.load_recipe", _raise(RuntimeError(
             "[/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:553] Connection closed by peer [10.0.0.2]:41234"))),
         env={"WORLD_SIZE": "2", "RANK": "1"}),
    Case("rank-usage-error", lambda root: ["recipe", "validate", str(root / "[bold]missing.yaml")], 2,
         ("rank 3: recipe file", "[bold]missing.yaml does not exist"), env={"WORLD_SIZE": "4", "RANK": "3"}),
    # ---- recipes
    Case("extends-a-folder", lambda root: (root / "base").mkdir() or _recipe("extends: base\n")(root), 2,
         ("`extends: base`", "which is a folder")),
    Case("extends-missing", _recipe("extends: gone.yaml\n"), 2, ("`extends: gone.yaml`", "does not exist")),
    Case("yaml-syntax", _recipe("train:\n  max_steps: [1\n"), 2, ("r.yaml:3:1: YAML syntax error",)),
    Case("recipe-not-a-mapping", _recipe("- 1\n- 2\n"), 2, ("a recipe must be a mapping",)),
    Case("plugin-option-unknown-key-line", _recipe("model:\n  name: opensora_v1_3\n  preset: tiny\n\n  bogus: 1\n"), 2,
         ("r.yaml:5: model.bogus: unknown key",)),
    Case("plugin-option-wrong-type-line", _recipe("model:\n  name: opensora_v1_3\n  num_layers: many\n"), 2,
         ("r.yaml:3: model.num_layers", "'many'")),
    Case("tracker-option-line", _recipe("train:\n  trackers:\n  - name: tensorboard\n    flush_sec: 3\n"), 2,
         ("r.yaml:4: train.trackers.0.flush_sec: unknown key; did you mean 'flush_secs'?",)),
    Case("unknown-plugin-line", _recipe("model:\n  preset: tiny\n  name: nope\n"), 2,
         ("r.yaml:3: model: unknown model 'nope'",)),
    Case("strategy-extra-missing", _recipe("parallel:\n  strategy: deepspeed\n"), 2,
         ("r.yaml:2: parallel.strategy: the strategy 'deepspeed' needs the Python package 'deepspeed'",
          'pip install -c constraints.txt "osctl[deepspeed]"'),
         patch=lambda mp, root: mp.setitem(sys.modules, "deepspeed", None)),
    Case("set-unknown-key", _recipe("{}\n", "--set", "train.learnig_rate=1"), 2,
         ("train has no key 'learnig_rate'; did you mean 'train.learning_rate'?",)),
    Case("set-into-a-value", _recipe("train:\n  max_steps: 3\n", "--set", "train.max_steps.x=1"), 2,
         ("--set train.max_steps.x=1: train.max_steps is a value, not a section",)),
    Case("extends-cycle", lambda root: _write(root / "b.yaml", "extends: r.yaml\n") and _recipe("extends: b.yaml\n")(root),
         2, ("recipe `extends` forms a cycle: {root}/r.yaml -> {root}/b.yaml -> {root}/r.yaml",)),
    # ---- data.txt and annotation files
    Case("data-txt-empty", lambda root: ["data", "validate", str(_write(root / "data.txt", "")), "--json"], 1,
         findings=("datatxt_empty",)),
    Case("data-txt-a-folder", lambda root: (root / "d.txt").mkdir() or ["data", "validate", str(root / "d.txt")], 2,
         ("d.txt is a folder",)),
    Case("data-txt-binary", lambda root: ["data", "validate", str(_write(root / "data.txt", b"\xff\xfe\x00bin"))], 2,
         ("data.txt is not UTF-8 text",)),
    Case("annotation-nested-200k-deep", _validate(raw=DEEP), 1, findings=("file_unreadable",)),
    Case("annotation-jsonl-nested-deep", _validate(raw=DEEP + b"\n", name="anno.jsonl"), 1,
         findings=("file_unreadable",)),
    Case("annotation-absurd-numbers", _validate(ABSURD), 1, findings=("out_of_range",)),
    Case("annotation-not-json", _validate(raw=b"\x00\x01garbage"), 1, findings=("json_syntax",)),
    Case("annotation-deep-pickle", _validate(raw=b"(" * 200_000 + b"l" * 200_000 + b".", name="anno.pkl"), 1,
         findings=("not_an_object",)),
    Case("annotation-garbage-parquet", _validate(raw=b"PAR1garbage", name="anno.parquet"), 1,
         findings=("file_unreadable",)),
    Case("data-txt-unknown-suffix", lambda root: ["data", "validate", str(_write(root / "data.txt", "media,a.csv\n")),
                                                  "--json"], 1, findings=("datatxt_malformed",)),
    Case("bucket-recipe-missing", lambda root: ["data", "bucket", str(_dataset(root)), "--recipe", str(root / "no.yaml")],
         2, ("recipe file {root}/no.yaml does not exist",)),
    Case("bucket-empty-data-txt", lambda root: ["data", "bucket", str(_write(root / "data.txt", "# nothing\n")),
                                                "--recipe", str(DEMO), "--out", str(root / "idx")], 1,
         ("data.txt lists no annotation files",)),
    Case("bucket-deep-annotation", _bucket(raw=DEEP), 1, ("anno.json: values are nested too deeply",)),
    Case("bucket-nothing-survives", _bucket(records=ABSURD), 1,
         ("no sample survived the rules (invalid_record 7)",)),
    # ---- output folders and failing disks
    Case("bucket-out-is-a-file", lambda root: _write(root / "idx", "not a folder") and _bucket()(root), 2,
         ("cannot write the sample index to {root}/idx: {root}/idx is a file, not a folder",)),
    Case("bucket-out-below-a-file", lambda root: _write(root / "f", "x") and _bucket("--out", "{root}/f/idx")(root), 2,
         ("{root}/f is a file, not a folder",)),
    Case("bucket-report-is-a-folder", lambda root: (root / "rep").mkdir() or _bucket("--report", "{root}/rep")(root),
         2, ("cannot write the report {root}/rep: it is a folder where a file is needed",)),
    Case("bucket-out-read-only", lambda root: (root / "idx").mkdir() or _bucket()(root), 2,
         ("cannot write the sample index to {root}/idx: it is on a read-only file system",),
         patch=_fail_with(errno.EROFS, "osctl.utils.atomic.tempfile.mkstemp")),
    Case("bucket-out-permission", lambda root: (root / "idx").mkdir() or _bucket()(root), 2,
         ("cannot write the sample index to {root}/idx: permission denied",),
         patch=_fail_with(errno.EACCES, "osctl.utils.atomic.tempfile.mkstemp")),
    Case("bucket-disk-full-keeps-previous-index", lambda root: _index(root) and _bucket()(root), 1,
         ("cannot write the sample index to {root}/idx: the disk is full",),
         patch=_fail_with(errno.ENOSPC, "osctl.data.index.atomic_write_text")),
    Case("bucket-disk-full-new-index", _bucket(), 1, ("cannot write the sample index to {root}/idx: the disk is full",),
         patch=_fail_with(errno.ENOSPC, "osctl.data.index.atomic_write_text"), new=("idx",)),
    Case("bucket-quota", lambda root: _index(root) and _bucket()(root), 1, ("the disk quota is used up",),
         patch=_fail_with(errno.EDQUOT, "osctl.data.index.pa.ipc.new_file")),
    Case("train-output-dir-is-a-file", lambda root: _write(root / "out", "x") and
         ["train", "--recipe", str(_tiny_recipe(root))], 2,
         ("train.output_dir: cannot write into {root}/out: it is a file, not a folder",)),
    Case("train-output-dir-below-a-file", lambda root: _write(root / "f", "x") and
         ["train", "--recipe", str(_tiny_recipe(root)), "--set", f"train.output_dir={root}/f/out"], 2,
         ("train.output_dir: cannot write into {root}/f/out: {root}/f is a file, not a folder",)),
    Case("train-output-dir-read-only", lambda root: ["train", "--recipe", str(_tiny_recipe(root))], 2,
         ("train.output_dir: cannot write into {root}/out: {root} is not writable",),
         patch=lambda mp, root: mp.setattr("osctl.utils.output_dir.writable", lambda folder: False)),
    Case("sample-output-dir-is-a-file", lambda root: _write(root / "samples", "x") and _prompts(GOOD_PROMPTS)(root), 2,
         ("sample.output_dir: cannot write into {root}/samples: it is a file, not a folder",)),
    Case("sample-output-dir-read-only", _prompts(GOOD_PROMPTS), 2,
         ("cannot write sample.output_dir {root}/samples: it is on a read-only file system",),
         patch=_fail_with(errno.EROFS, "osctl.utils.output_dir.tempfile.mkstemp"), new=("samples",)),
    Case("synth-out-is-a-file", lambda root: ["data", "synth", "shapes", str(_write(root / "shapes", "x"))], 2,
         ("{root}/shapes exists and is not a folder",)),
    Case("eval-missing-samples", lambda root: ["eval", "shapes", str(root / "none")], 2,
         ("{root}/none is not a folder",)),
    Case("sample-sp-single-frame", lambda root: ["sample", "--recipe", str(_tiny_recipe(root)), "-p", "x", "--sp",
                                                 "--num-frames", "1", "-o", str(root / "samples")], 2,
         ("--sp splits the time axis and needs --num-frames > 1",)),
    # ---- prompt files (every line is checked before the first video)
    Case("prompts-seed-2-70-on-line-3", _prompts(GOOD_PROMPTS + '{"prompt": "late", "seed": 1180591620717411303424}\n'),
         2, ("p.jsonl:3: seed must be an integer from 0 to 2**63 - 1", "got 1180591620717411303424")),
    Case("prompts-negative-seed", _prompts('{"prompt": "x", "seed": -1}\n'), 2, ("p.jsonl:1: seed must be",)),
    Case("prompts-bad-size", _prompts(GOOD_PROMPTS + '{"prompt": "x", "height": 18}\n'), 2,
         ("p.jsonl:3: height must be a multiple of 8 (autoencoder stride 4 x patch size 2), got 18; use 16 or 24",)),
    Case("prompts-nan-guidance", _prompts('{"prompt": "x", "guidance_scale": NaN}\n'), 2,
         ("p.jsonl:1: guidance_scale must be a finite number >= 0, got nan",)),
    Case("prompts-boolean-steps", _prompts('{"prompt": "x", "num_sampling_steps": true}\n'), 2,
         ("p.jsonl:1: num_sampling_steps must be an integer",)),
    Case("prompts-string-height", _prompts('{"prompt": "x", "height": "16"}\n'), 2,
         ("p.jsonl:1: height must be an integer from 1 to 65536, got '16'",)),
    Case("prompts-deeply-nested", _prompts(b'{"prompt": ' + b"[" * 100_000 + b"]" * 100_000 + b"}\n"), 2,
         ("p.jsonl:1: values are nested too deeply",)),
    Case("prompts-binary-nul", _prompts(b"a cat\x00\x01\x02 on a mat\n", "p.txt"), 2,
         ("--prompts {root}/p.txt is a binary file (it contains NUL bytes)",)),
    Case("prompts-not-utf8", _prompts(b"a cat\n\xff\xfe garbage\n", "p.txt"), 2,
         ("--prompts {root}/p.txt is not UTF-8 text (line 2",)),
    Case("prompts-a-folder", lambda root: (root / "pp").mkdir() or
         [*_prompts(GOOD_PROMPTS)(root)[:4], str(root / "pp"), "-o", str(root / "samples")], 2,
         ("--prompts {root}/pp is a folder",)),
    Case("prompts-unknown-key", _prompts('{"prompt": "x", "sed": 3}\n'), 2, ("p.jsonl:1: unknown key 'sed'",)),
]


def _raise(exc: BaseException) -> Callable[..., Any]:
    def fail(*args: Any, **kwargs: Any) -> Any:
        raise exc

    return fail


def snapshot(folder: Path) -> dict[str, tuple[bool, int, int]]:
    """Every path below ``folder`` with (is a folder, size, modification time); a folder's own times change
    when temporary files come and go in it, so only its existence counts."""
    out = {}
    for path in sorted(folder.rglob("*")):
        stat = path.lstat()
        is_dir = path.is_dir()
        out[str(path.relative_to(folder))] = (is_dir, 0 if is_dir else stat.st_size, 0 if is_dir else stat.st_mtime_ns)
    return out


def check_one_sentence(text: str, says: tuple[str, ...], root: Path) -> str:
    """The single ``error:`` line of ``text``, after checking it names every part of ``says``."""
    assert "Traceback" not in text and "RuntimeWarning" not in text, text
    errors = [line for line in text.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, text
    line = errors[0]
    assert "internal error" not in line or "RuntimeError: [/pytorch" in line, text
    for part in says:
        assert part.format(root=root) in line, (part.format(root=root), text)
    return line


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "case"
    root.mkdir()
    args = case.prepare(root)
    before = snapshot(root)
    if case.patch is not None:
        case.patch(monkeypatch, root)
    result = runner.invoke(app, args, env=case.env or None)
    assert result.exit_code == case.code, result.output
    if case.findings:
        payload = json.loads(result.stdout)
        assert {f["code"] for f in payload["findings"]} == set(case.findings), payload["findings"]
        assert all(f["message"] for f in payload["findings"])
        assert "Traceback" not in result.output and "internal error" not in result.output
    else:
        line = check_one_sentence(result.stderr, case.says, root)
        assert line.endswith((".", "?", "41234")), line
    after = snapshot(root)
    created = {path for path in set(after) - set(before) if path not in case.new}
    assert not created, created
    assert {k: v for k, v in after.items() if k in before} == before  # nothing changed, nothing deleted


def test_absurd_numbers_name_the_file_record_and_field(tmp_path: Path) -> None:
    result = runner.invoke(app, ["data", "validate", str(_dataset(tmp_path, ABSURD)), "--json"])
    findings = json.loads(result.stdout)["findings"]
    assert {(f["file"], f["index"], f["field"]) for f in findings} == {
        ("anno.json", 0, "num_frames"), ("anno.json", 1, "resolution.height"), ("anno.json", 2, "resolution.width"),
        ("anno.json", 3, "fps"), ("anno.json", 4, "fps"), ("anno.json", 5, "cut"), ("anno.json", 6, "crop")}


def test_bucket_drops_absurd_records_with_a_reason_and_no_numpy_warning(tmp_path: Path) -> None:
    good = [{**VIDEO, "path": f"ok{i}.mp4"} for i in range(20)]
    data_txt = _dataset(tmp_path, ABSURD + good)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # an overflow in the rules would fail the command
        result = runner.invoke(app, ["data", "bucket", str(data_txt), "--recipe", str(DEMO), "--out",
                                     str(tmp_path / "idx"), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["reasons"]["invalid_record"] == len(ABSURD)
    assert "RuntimeWarning" not in result.output


def test_validate_table_prints_data_with_brackets_literally(tmp_path: Path) -> None:
    records = [{**VIDEO, "path": "clips[/x]/[bold]a.mp4"}]
    data_txt = _dataset(tmp_path, records)
    (tmp_path / "media" / "clips[/x]" / "[bold]a.mp4").unlink()  # reported as missing, path shown as is
    result = runner.invoke(app, ["data", "validate", str(data_txt)])
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output and "[/x]" in result.stdout and "[bold]a.mp4" in result.stdout


def test_readme_sampling_example_resolves_default_component_names(tmp_path: Path) -> None:
    """`osctl sample --model-path M --ae-path V --text-encoder-name-1 T --prompt P` (README): no section loses its
    default name; what fails now is the model folder that does not exist, not the recipe."""
    result = runner.invoke(app, ["sample", "--model-path", str(tmp_path / "M"), "--ae-path", str(tmp_path / "V"),
                                 "--text-encoder-name-1", str(tmp_path / "T"), "--prompt", "P",
                                 "-o", str(tmp_path / "out")])
    assert "field required" not in result.output, result.output
    assert "Traceback" not in result.output and "internal error" not in result.output
    assert str(tmp_path / "M") in result.output  # the missing model folder is what is reported


def _osctl(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "plugins")]), **(env or {})}
    return subprocess.run([sys.executable, "-m", "osctl", *args], capture_output=True, text=True, env=full_env,
                          cwd=cwd, timeout=120)


def test_real_process_prints_markup_in_paths_as_plain_text(tmp_path: Path) -> None:
    done = _osctl("data", "validate", str(tmp_path / "nope[/x]" / "data.txt"))
    assert done.returncode == 2
    check_one_sentence(done.stderr, ("nope[/x]/data.txt does not exist",), tmp_path)


def test_real_process_on_a_non_zero_rank_prefixes_its_error(tmp_path: Path) -> None:
    recipe = _write(tmp_path / "r.yaml", "model:\n  name: opensora_v1_3\n  bogus: [/oops]\n")
    done = _osctl("recipe", "validate", str(recipe), env={"WORLD_SIZE": "2", "RANK": "1"})
    assert done.returncode == 2
    line = check_one_sentence(done.stderr, ("rank 1: ", "r.yaml:3: model.bogus: unknown key"), tmp_path)
    assert line.startswith("error: rank 1: ")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_real_read_only_output_folder(tmp_path: Path) -> None:
    data_txt = _dataset(tmp_path)
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        result = runner.invoke(app, ["data", "bucket", str(data_txt), "--recipe", str(DEMO), "--out", str(locked)])
        assert result.exit_code == 2, result.output
        check_one_sentence(result.stderr, (f"cannot write the sample index to {locked}: permission denied",), tmp_path)
        assert not list(locked.iterdir())
    finally:
        locked.chmod(0o755)
