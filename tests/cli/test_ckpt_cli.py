"""`osctl ckpt inspect|convert` from the command line: output, JSON, exit codes, one-sentence errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from osctl.cli import app
from tests.ckpt_helpers import copy_tree, listing, trained_run, write_malicious_pt

runner = CliRunner()


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return trained_run(tmp_path_factory)


def ckpt(*args: str):
    return runner.invoke(app, ["ckpt", *map(str, args)])


def test_inspect_human_output(run):
    result = ckpt("inspect", run.checkpoint)
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    for fragment in ("osctl training checkpoint", "OpenSoraT2V_v1_3 — loads with model opensora_v1_3",
                     "global step 2", "EMA model_ema:", "optimizer", "training_state/optimizer.pt",
                     "integrity ok: ", "by module transformer_blocks"):
        assert fragment in text, fragment


def test_inspect_json_is_the_documented_schema(run):
    result = ckpt("inspect", run.checkpoint, "--json", "--tensors", "--verify-hashes")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["schema"] == "osctl.ckpt.inspect/1"
    assert set(report) >= {"path", "format", "description", "size_bytes", "file_count", "architecture", "weights",
                           "ema", "global_step", "training", "engine", "optimizer", "recipe", "integrity", "notes",
                           "tensors"}
    assert report["integrity"]["hashes_verified"] and report["integrity"]["ok"]
    assert {"name", "shape", "dtype", "file"} == set(report["tensors"][0])


def test_inspect_with_recipe(run):
    result = ckpt("inspect", run.checkpoint, "--recipe", run.checkpoint / "recipe.yaml", "--set", "train.seed=3")
    assert result.exit_code == 0, result.output
    assert "train.seed: 7 -> 3" in result.output
    missing = ckpt("inspect", run.checkpoint, "--recipe", run.checkpoint / "nope.yaml")
    assert missing.exit_code == 2 and "does not exist" in missing.output


def test_inspect_corrupted_manifest_file_exits_1(run, tmp_path):
    folder = copy_tree(run.checkpoint, tmp_path / "checkpoint-2")
    target = folder / "model_ema" / "diffusion_pytorch_model.safetensors"
    data = bytearray(target.read_bytes())
    data[-3] ^= 0x01
    target.write_bytes(bytes(data))
    assert ckpt("inspect", folder).exit_code == 0  # sizes still match
    result = ckpt("inspect", folder, "--verify-hashes")
    assert result.exit_code == 1
    assert f"error: {target} does not match its SHA-256 in manifest.json" in " ".join(result.output.split())


def test_convert_and_errors(run, tmp_path):
    out = tmp_path / "exported"
    result = ckpt("convert", run.checkpoint, "--to", "diffusers", "--ema", "--dtype", "bf16", "-o", out)
    assert result.exit_code == 0, result.output
    assert "verified 99 tensors read back" in " ".join(result.output.split())
    written = load_file(out / "diffusion_pytorch_model.safetensors")
    assert all(written[k].dtype == torch.bfloat16 for k in written)
    again = ckpt("convert", run.checkpoint, "--to", "diffusers", "-o", out)
    assert again.exit_code == 2 and "already exists; pass --force" in again.output
    forced = ckpt("convert", run.checkpoint, "--to", "diffusers", "-o", out, "--force", "--json")
    assert forced.exit_code == 0
    report = json.loads(forced.output)
    assert report["schema"] == "osctl.ckpt.convert/1" and report["replaced"] and report["dtype"] is None
    assert load_file(out / "diffusion_pytorch_model.safetensors")["proj_out.weight"].dtype == torch.float32


def test_convert_dry_run_writes_nothing(run, tmp_path):
    before = listing(tmp_path)
    result = ckpt("convert", run.checkpoint, "--to", "safetensors", "-o", tmp_path / "m", "--max-shard-size", "300kB",
                  "--dry-run")
    assert result.exit_code == 0, result.output
    assert "would write" in result.output and "nothing written (--dry-run)" in result.output
    assert "model-00001-of-00003.safetensors" in result.output
    assert listing(tmp_path) == before


@pytest.mark.parametrize("case", ["truncated", "missing_shard", "wrong_index", "malicious"])
def test_damaged_inputs_exit_1_with_one_sentence(run, tmp_path, case):
    src = tmp_path / "src"
    assert ckpt("convert", run.checkpoint, "--to", "diffusers", "-o", src, "--max-shard-size", "500kB").exit_code == 0
    shard = src / "diffusion_pytorch_model-00002-of-00002.safetensors"
    index = src / "diffusion_pytorch_model.safetensors.index.json"
    marker = tmp_path / "PWNED"
    if case == "truncated":
        shard.write_bytes(shard.read_bytes()[:-1])
        target, expected = src, f"{shard} is truncated: tensor"
    elif case == "missing_shard":
        shard.unlink()
        target, expected = src, f"shard {shard} listed in {index} is missing"
    elif case == "wrong_index":
        data = json.loads(index.read_text())
        data["weight_map"] = {k: "diffusion_pytorch_model-00001-of-00002.safetensors" for k in data["weight_map"]}
        index.write_text(json.dumps(data))
        target, expected = src, f"{index} is wrong"
    else:
        target = write_malicious_pt(tmp_path / "evil.pt", marker)
        expected = f"{target} needs arbitrary unpickling (it refers to posix.system), so it was refused"
    before = listing(tmp_path)
    for command in (["inspect", target], ["convert", target, "--to", "safetensors", "-o", tmp_path / "o.safetensors"]):
        result = ckpt(*command)
        assert result.exit_code == 1, result.output
        lines = [line for line in result.output.splitlines() if line.strip()]
        message = " ".join(result.output.split())
        assert message.startswith(f"error: {expected}"), message
        assert "Traceback" not in result.output and len(lines) <= 3  # one sentence (wrapped by the terminal)
    assert listing(tmp_path) == before
    assert not marker.exists()


def test_trust_pickle_warns(tmp_path):
    import argparse

    src = tmp_path / "old.pt"
    torch.save({"state_dict": {"w": torch.ones(2)}, "args": argparse.Namespace(a=1)}, src)
    result = ckpt("convert", src, "--to", "safetensors", "--trust-pickle")
    assert result.exit_code == 0, result.output
    assert "warning: --trust-pickle: pickled files will be unpickled with full Python semantics" in result.output


def test_usage_errors_exit_2(run, tmp_path):
    assert ckpt("inspect", tmp_path / "missing").exit_code == 2
    result = ckpt("convert", run.checkpoint, "--to", "onnx")
    assert result.exit_code == 2
    result = ckpt("convert", run.checkpoint, "--to", "safetensors", "--max-shard-size", "huge")
    assert result.exit_code == 2 and "is not a size" in result.output


def test_help_has_examples():
    for command in ("inspect", "convert"):
        result = ckpt(command, "--help")
        assert result.exit_code == 0 and "osctl ckpt " + command in result.output


def test_inspect_of_safetensors_never_imports_torch(golden):
    code = (
        "import sys\n"
        "from osctl.cli import app\n"
        "try:\n"
        f"    app(['ckpt', 'inspect', {str(golden / 'vae' / 'vae')!r}, '--json'], standalone_mode=False)\n"
        f"    app(['ckpt', 'inspect', {str(golden / 'dit' / 'a1_sparse1d_n4' / 'model' / 'diffusion_pytorch_model.safetensors')!r}],"
        " standalone_mode=False)\n"
        "finally:\n"
        "    print('TORCH-IMPORTED' if 'torch' in sys.modules else 'TORCH-FREE')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            cwd=Path(__file__).resolve().parents[2])
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("TORCH-FREE"), result.stdout[-500:]
