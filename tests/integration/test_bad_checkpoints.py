"""Damaged and crafted checkpoint and weights files: refused with one sentence naming them, and no code runs.

Every pickled file osctl reads when it resumes a run (optimizer, LR scheduler, scaler, EMA, RNG, DCP
metadata and items, DeepSpeed model/optimizer states) or loads weights (``train.pretrained``, ``sample
--model-path``) is replaced by a payload whose unpickling would create a marker file: the command must
exit 1 with ``error: <that file> ...`` and no traceback, and the marker must not exist. The manifest is
resealed after planting (an attacker can do that too), so each file really reaches its reader.

The single-strategy cases resume a copy of the session's tiny checkpoint through the CLI in this process;
fsdp and deepspeed run in one subprocess each (they need a process group), both started at once.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from osctl.cli import app
from osctl.plugin_manager import default_registry
from osctl.train.checkpoint import write_manifest
from tests.ckpt_helpers import copy_tree, trained_run, write_malicious_pt
from tests.train_helpers import SyntheticClips

runner = CliRunner()
WORKER = Path(__file__).with_name("bad_checkpoint_worker.py")
REFUSED = "needs arbitrary unpickling (it refers to posix.system), so it was refused and nothing in it ran"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return trained_run(tmp_path_factory)


@pytest.fixture(autouse=True)
def synthetic_data(monkeypatch):
    """``osctl train`` reads the tiny recipe's synthetic clips instead of a sample index."""
    import osctl.data.stream.loader

    def source(checked: Any, registry: Any, info: Any, *, layout: Any, dp_rank: int) -> Any:
        text_encoder = registry.build("text_encoder", "tiny_t5", checked.components["text_encoder"])
        return SyntheticClips(text_encoder.tokenize, dp_rank=dp_rank, dp_size=layout.dp_size), {}

    monkeypatch.setattr(osctl.data.stream.loader, "build_batch_source", source)


def error_of(result: Any) -> str:
    """The one error sentence a failed command printed, and nothing else (terminal wrapping folded)."""
    assert result.exit_code == 1, result.output
    text = " ".join(result.output.split())
    assert text.startswith("error: ") and text.count("error: ") == 1, result.output
    assert "Traceback" not in text, result.output
    return text.split(" hint: ")[0]


def resume_crafted(run: Any, tmp_path: Path, plant: Any, *, reseal: bool = True, sets: tuple[str, ...] = ()) -> Any:
    """``osctl train --resume-from-checkpoint latest`` on a copy of the tiny checkpoint after ``plant(copy)``."""
    out = tmp_path / "out"
    checkpoint = copy_tree(run.checkpoint, out / run.checkpoint.name)
    plant(checkpoint)
    if reseal:
        write_manifest(checkpoint)
    args = ["train", "--recipe", str(checkpoint / "recipe.yaml"), "--resume-from-checkpoint", "latest",
            "--set", f"train.output_dir={out}", "--set", "train.max_steps=2"]
    for value in sets:
        args += ["--set", value]
    return runner.invoke(app, args), checkpoint


# --- single / ddp state files ----------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["training_state/optimizer.pt", "training_state/lr_scheduler.pt",
                                  "training_state/scaler.pt", "training_state/ema-rank-0.pt", "rng/rank-0.pt"])
def test_state_file_payload_is_refused(run, tmp_path, name):
    marker = tmp_path / "PWNED"
    sets = ("train.mixed_precision=fp16",) if name.endswith("scaler.pt") else ()  # only fp16 reads scaler.pt
    result, checkpoint = resume_crafted(run, tmp_path, lambda c: write_malicious_pt(c / name, marker), sets=sets)
    assert error_of(result).startswith(f"error: {checkpoint / name} {REFUSED}; a training checkpoint never needs")
    assert not marker.exists()


def test_truncated_state_file_is_named(run, tmp_path):
    def truncate(checkpoint: Path) -> None:
        path = checkpoint / "training_state" / "optimizer.pt"
        path.write_bytes(path.read_bytes()[:-300])

    result, checkpoint = resume_crafted(run, tmp_path, truncate)
    assert error_of(result).startswith(f"error: {checkpoint / 'training_state/optimizer.pt'} cannot be read as a "
                                       "torch file (")
    assert "it is damaged" in error_of(result)


def test_file_that_does_not_match_its_manifest_is_named(run, tmp_path):
    def truncate(checkpoint: Path) -> None:
        path = checkpoint / "rng" / "rank-0.pt"
        path.write_bytes(path.read_bytes()[:-1])

    result, checkpoint = resume_crafted(run, tmp_path, truncate, reseal=False)
    path = checkpoint / "rng" / "rank-0.pt"
    assert error_of(result).startswith(f"error: {path} is {path.stat().st_size} bytes but manifest.json records "
                                       f"{path.stat().st_size + 1}; the file is damaged")


def test_state_file_of_another_run_is_named(run, tmp_path):
    def replace(checkpoint: Path) -> None:
        torch.save({"state": {}, "param_groups": [{"params": [0], "lr": 1.0}]},
                   checkpoint / "training_state" / "optimizer.pt")

    result, checkpoint = resume_crafted(run, tmp_path, replace)
    assert error_of(result).startswith(f"error: {checkpoint / 'training_state/optimizer.pt'} does not hold the state "
                                       "this run expects (")


@pytest.mark.parametrize("name", ["trainer_state.json", "data/rank-0.json", "manifest.json"])
def test_damaged_json_file_is_named(run, tmp_path, name):
    def damage(checkpoint: Path) -> None:
        path = checkpoint / name
        path.write_text(path.read_text()[:-5])

    result, checkpoint = resume_crafted(run, tmp_path, damage, reseal=name != "manifest.json")
    message = error_of(result)
    assert message.startswith(f"error: cannot read {checkpoint / name}"), message
    assert "damaged" in message


# --- weights in ----------------------------------------------------------------------------------------

def _train_from(run: Any, tmp_path: Path, pretrained: Path) -> Any:
    return runner.invoke(app, ["train", "--recipe", str(run.checkpoint / "recipe.yaml"),
                               "--set", f"train.output_dir={tmp_path / 'out'}", "--set", f"train.pretrained={pretrained}"])


@pytest.mark.parametrize("name", ["evil.pt", "pytorch_model.bin"])
def test_pretrained_payload_is_refused(run, tmp_path, name):
    marker = tmp_path / "PWNED"
    evil = write_malicious_pt(tmp_path / name, marker)
    assert error_of(_train_from(run, tmp_path, evil)).startswith(f"error: {evil} {REFUSED}")
    assert not marker.exists() and not (tmp_path / "out").exists()


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_truncated_pretrained_weights_are_named(run, tmp_path, suffix):
    from safetensors.torch import load_file, save_file

    weights = load_file(run.checkpoint / "model" / "diffusion_pytorch_model.safetensors")
    path = tmp_path / f"weights{suffix}"
    if suffix == ".pt":
        torch.save(weights, path)
    else:
        save_file(weights, path)
    path.write_bytes(path.read_bytes()[:-1000])
    message = error_of(_train_from(run, tmp_path, path))
    assert message.startswith(f"error: {path} "), message
    assert ("truncated" if suffix == ".safetensors" else "it is damaged") in message
    assert "arbitrary unpickling" not in message


def test_sample_model_folder_with_a_payload_bin_is_refused(run, tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text((run.checkpoint / "model" / "config.json").read_text())
    marker = tmp_path / "PWNED"
    evil = write_malicious_pt(folder / "diffusion_pytorch_model.bin", marker)
    result = runner.invoke(app, ["sample", "--recipe", str(run.checkpoint / "recipe.yaml"), "--model-path", str(folder),
                                 "-p", "a clip", "-o", str(tmp_path / "samples")])
    assert error_of(result).startswith(f"error: {evil} {REFUSED}; model weights never need that")
    assert not marker.exists()


# --- an interrupted save -------------------------------------------------------------------------------

def test_inspect_names_an_interrupted_save(run, tmp_path):
    partial = copy_tree(run.checkpoint, tmp_path / ".checkpoint-4.partial")
    for name in ("rng", "data"):  # killed before the RNG states were written
        for path in sorted((partial / name).iterdir()):
            path.unlink()
        (partial / name).rmdir()
    for name in ("trainer_state.json", "recipe.yaml", "manifest.json"):
        (partial / name).unlink()
    result = runner.invoke(app, ["ckpt", "inspect", str(partial)])
    assert result.exit_code == 1, result.output
    text = " ".join(result.output.split())
    assert "incomplete osctl training checkpoint (its save was interrupted)" in text
    assert "Open-Sora-Plan" not in text and "integrity ok" not in text
    assert (f"error: {partial} is the unfinished save of checkpoint-4 (the run stopped while writing it); it is not "
            "resumable and may miss files — use a complete checkpoint-N.") in text
    report = json.loads(runner.invoke(app, ["ckpt", "inspect", str(partial), "--json"]).stdout)
    assert report["format"] == "osctl-checkpoint" and not report["integrity"]["ok"]


# --- fsdp and deepspeed: one subprocess each -----------------------------------------------------------

ENGINE_CASES = {
    "fsdp": {"metadata": ("training_state/dcp/.metadata",
                          "refers to posix.system, which a DCP metadata file never needs; refused, nothing ran."),
             "bytes_item": ("training_state/dcp/__0_0.distcp", f"(item 'optimizer.param_groups.0.lr') {REFUSED}"),
             "distcp_truncated": ("training_state/dcp/__0_0.distcp", "is truncated: it has"),
             "lr_scheduler": ("training_state/lr_scheduler.pt", REFUSED)},
    "deepspeed": {"optim_states": ("training_state/deepspeed/global_step1/zero_pp_rank_0_mp_rank_00_optim_states.pt",
                                   REFUSED),
                  "model_states": ("training_state/deepspeed/global_step1/mp_rank_00_model_states.pt", REFUSED),
                  "optim_truncated": ("training_state/deepspeed/global_step1/zero_pp_rank_0_mp_rank_00_optim_states.pt",
                                      "cannot be read as a torch file (")},
}
INSTALLED = [name for name in ENGINE_CASES if name in default_registry().names("strategy")]


@pytest.fixture(scope="module")
def engine_results(tmp_path_factory) -> dict[str, dict[str, Any]]:
    """Run the worker for every installed engine strategy, all at once; their results by strategy."""
    root = tmp_path_factory.mktemp("engines")
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1",
           "TORCH_EXTENSIONS_DIR": str(root / "torch_extensions")}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    procs = {name: subprocess.Popen([sys.executable, str(WORKER), name, str(root / name)], env=env, text=True,
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for name in INSTALLED}
    results = {}
    for name, proc in procs.items():
        output, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, output[-5000:]
        results[name] = json.loads((root / name / "results.json").read_text())
    return results


@pytest.mark.slow
@pytest.mark.parametrize("strategy,case", [(s, c) for s in INSTALLED for c in ENGINE_CASES[s]])
def test_engine_state_payload_or_damage_is_refused(engine_results, strategy, case):
    found = engine_results[strategy][case]
    name, expected = ENGINE_CASES[strategy][case]
    assert found["exit_code"] == 1, found["output"]
    assert "Traceback" not in found["output"], found["output"]
    message = " ".join(found["output"].split())
    assert message.startswith(f"error: {Path(found['checkpoint']) / name} "), message
    assert expected in message
    assert not Path(found["marker"]).exists()


@pytest.mark.slow
@pytest.mark.parametrize("strategy", INSTALLED)
def test_engine_state_intact_copy_resumes(engine_results, strategy):
    """The same copies without damage resume and train on (DeepSpeed's real loss scaler is admitted)."""
    found = engine_results[strategy]["intact"]
    assert found["exit_code"] == 0, found["output"]
    assert "finished at step 2" in found["output"]


@pytest.mark.slow
@pytest.mark.skipif("deepspeed" not in INSTALLED, reason="deepspeed is not installed")
def test_stale_cpu_adam_build_lock_is_removed_before_building(engine_results):
    found = engine_results["deepspeed"]["stale_lock"]
    assert found["removed"], found
