"""`ckpt inspect` on real checkpoints: a tiny training run, the reference golden folders, single files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from osctl.ckpt.detect import detect
from osctl.ckpt.inspect import inspect_path, integrity_error
from osctl.errors import DataError, UsageError
from osctl.plugin_manager import default_registry
from osctl.recipe.load import load_recipe, recipe_hash
from tests.ckpt_helpers import copy_tree, trained_run


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return trained_run(tmp_path_factory)


def test_osctl_checkpoint_is_described(run):
    ckpt = run.checkpoint
    report = inspect_path(ckpt, verify_hashes=True)
    assert report["format"] == "osctl-checkpoint"
    assert report["global_step"] == 2
    assert report["architecture"]["class_name"] == "OpenSoraT2V_v1_3"
    assert report["architecture"]["loads_with"]["kind"] == "model"
    assert report["architecture"]["loads_with"]["name"] == "opensora_v1_3"
    assert report["architecture"]["recipe_section"] == {"model": {"name": "opensora_v1_3", "path": str(ckpt / "model")}}
    weights = report["weights"]
    assert weights["parameters"] == sum(t.numel() for t in run.model.values())
    assert weights["tensors"] == len(run.model)
    assert weights["dtypes"] == {"float32": {"tensors": len(run.model), "parameters": weights["parameters"]}}
    assert weights["modules"]["transformer_blocks"] == sum(
        t.numel() for k, t in run.model.items() if k.startswith("transformer_blocks."))
    assert sum(weights["modules"].values()) == weights["parameters"]
    assert report["ema"]["present"] and report["ema"]["path"] == "model_ema"
    assert report["ema"]["details"] == {"decay": 0.9, "optimization_step": 2, "start_step": 0}
    assert report["optimizer"] == {"present": True, "bytes": (ckpt / "training_state" / "optimizer.pt").stat().st_size,
                                   "files": ["training_state/optimizer.pt"]}
    state = json.loads((ckpt / "trainer_state.json").read_text())
    assert report["recipe"]["fingerprint"] == state["recipe_fingerprint"]
    assert report["training"]["strategy"] == "single" and report["training"]["world_size"] == 1
    integrity = report["integrity"]
    assert integrity["ok"] and integrity["hashes_verified"] and integrity["problems"] == []
    assert integrity["checked_files"] == len(json.loads((ckpt / "manifest.json").read_text())["files"])
    assert report["size_bytes"] == sum(p.stat().st_size for p in ckpt.rglob("*") if p.is_file())
    assert "tensors" not in report
    listed = inspect_path(ckpt, tensors=True)["tensors"]
    on_disk = load_file(ckpt / "model" / "diffusion_pytorch_model.safetensors")
    assert {t["name"]: (tuple(t["shape"]), t["dtype"]) for t in listed} == {
        k: (tuple(v.shape), "float32") for k, v in on_disk.items()}


def test_recipe_comparison(run):
    saved = run.checkpoint / "recipe.yaml"
    same = inspect_path(run.checkpoint, recipe=saved)["recipe"]
    assert same["same"] is True and same["shaping_changes"] == [] and same["other_changes"] == []
    assert same["given_fingerprint"] == recipe_hash(load_recipe(saved).resolved())
    changed = inspect_path(run.checkpoint, recipe=saved,
                           recipe_overrides=["train.learning_rate=0.5", "model.num_layers=2"])["recipe"]
    assert changed["same"] is False
    assert changed["shaping_changes"] == ["model.num_layers: None -> 2"]  # the preset fills it
    assert changed["other_changes"] == ["train.learning_rate: 0.001 -> 0.5"]


def test_manifest_catches_damage(run, tmp_path):
    ckpt = copy_tree(run.checkpoint, tmp_path / "checkpoint-2")
    weights = ckpt / "model" / "diffusion_pytorch_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # same size, different bytes: only the hash sees it
    weights.write_bytes(bytes(data))
    assert inspect_path(ckpt)["integrity"]["ok"]
    report = inspect_path(ckpt, verify_hashes=True)
    assert not report["integrity"]["ok"]
    assert integrity_error(report) == (f"{weights} does not match its SHA-256 in manifest.json; the file is damaged — "
                                       "restore it or use an earlier checkpoint.")
    optimizer = ckpt / "training_state" / "optimizer.pt"
    optimizer.write_bytes(optimizer.read_bytes()[:100])
    (ckpt / "rng" / "rank-0.pt").unlink()
    report = inspect_path(ckpt)
    problems = report["integrity"]["problems"]
    assert any(f"{optimizer} is 100 bytes but manifest.json records" in p for p in problems)
    assert any("rank-0.pt is listed in manifest.json but missing" in p for p in problems)
    assert integrity_error(report).startswith("2 files of ")


def test_truncated_weights_inside_a_checkpoint_still_report(run, tmp_path):
    ckpt = copy_tree(run.checkpoint, tmp_path / "checkpoint-2")
    weights = ckpt / "model" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    report = inspect_path(ckpt)
    assert "is 1000 bytes but manifest.json records" in integrity_error(report)
    assert any("is truncated" in note for note in report["notes"])


@pytest.mark.parametrize(("folder", "class_name", "kind", "name"), [
    ("dit/a1_sparse1d_n4/model", "OpenSoraT2V_v1_3", "model", "opensora_v1_3"),
    ("dit/a2_dense/model", "OpenSoraT2V_v1_3", "model", "opensora_v1_3"),
    ("vae/vae", "WFVAEModel", "autoencoder", "wfvae"),
])
def test_golden_folders_are_identified_and_load(golden, folder, class_name, kind, name):
    path = golden / folder
    report = inspect_path(path)
    assert report["format"] == "diffusers"
    arch = report["architecture"]
    assert (arch["class_name"], arch["loads_with"]["kind"], arch["loads_with"]["name"]) == (class_name, kind, name)
    on_disk = load_file(path / "diffusion_pytorch_model.safetensors")
    assert report["weights"]["parameters"] == sum(t.numel() for t in on_disk.values())
    built = default_registry().build(kind, name, {"path": str(path)})
    module = built.vae if kind == "autoencoder" else built
    state = module.state_dict()
    # the reference's tensor names are osctl's: every tensor of the folder lands in the model
    assert set(on_disk) <= set(state)
    assert all(torch.equal(state[k], on_disk[k]) for k in on_disk)


def test_single_safetensors_file_without_config_is_guessed(golden, tmp_path):
    src = golden / "dit" / "a1_sparse1d_n4" / "model" / "diffusion_pytorch_model.safetensors"
    alone = tmp_path / "weights.safetensors"
    alone.write_bytes(src.read_bytes())
    report = inspect_path(alone, tensors=True)
    assert report["format"] == "safetensors"
    assert report["architecture"]["class_name"] == "OpenSoraT2V_v1_3"
    assert report["architecture"]["source"] == "tensor names"
    assert report["metadata"] == {"format": "pt"}
    assert len(report["tensors"]) == report["weights"]["tensors"] == 687


def test_torch_training_file_with_ema_and_prefixes(tmp_path):
    weights = {"module.encoder.w": torch.ones(2, 3), "module.decoder.b": torch.zeros(4, dtype=torch.bfloat16)}
    ema = {k: v + 1 for k, v in weights.items()}
    path = tmp_path / "wfvae.ckpt"
    torch.save({"state_dict": weights, "ema_state_dict": ema, "optimizer": {"state": {0: {"m": torch.zeros(10)}}},
                "global_step": 1234, "epoch": 3}, path)
    report = inspect_path(path)
    assert report["format"] == "torch"
    assert report["weights"]["path"] == "wfvae.ckpt:state_dict"
    assert report["weights"]["modules"] == {"encoder": 6, "decoder": 4}
    assert report["ema"]["present"] and report["ema"]["path"] == "wfvae.ckpt:ema_state_dict"
    assert report["optimizer"] == {"present": True, "bytes": 40, "files": ["wfvae.ckpt:optimizer"]}
    assert report["global_step"] == 1234
    assert any("'module.' prefix" in note for note in report["notes"])


def test_sharded_folder_and_index_file(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"_class_name": "SomethingElse", "hidden": 3}))
    save_file({"a": torch.ones(2)}, str(folder / "diffusion_pytorch_model-00001-of-00002.safetensors"))
    save_file({"b": torch.ones(3)}, str(folder / "diffusion_pytorch_model-00002-of-00002.safetensors"))
    index = folder / "diffusion_pytorch_model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": {"a": "diffusion_pytorch_model-00001-of-00002.safetensors",
                                                "b": "diffusion_pytorch_model-00002-of-00002.safetensors"}}))
    report = inspect_path(index)
    assert report["format"] == "diffusers" and report["weights"]["parameters"] == 5
    assert report["architecture"]["class_name"] == "SomethingElse" and report["architecture"]["loads_with"] is None
    (folder / "diffusion_pytorch_model-00002-of-00002.safetensors").unlink()
    with pytest.raises(DataError, match=r"diffusion_pytorch_model-00002-of-00002\.safetensors listed in .* is missing"):
        inspect_path(folder)


def test_unknown_inputs(tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        detect(tmp_path / "nope")
    runs = tmp_path / "out"
    (runs / "checkpoint-2").mkdir(parents=True)
    (runs / "checkpoint-10").mkdir()
    with pytest.raises(DataError, match=r"holds training checkpoints \(checkpoint-2, checkpoint-10\): inspect one"):
        detect(runs)
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(DataError, match="neither safetensors nor a torch file"):
        detect(text)


def test_inspect_damaged_torch_file(tmp_path):
    path = tmp_path / "broken.pt"
    torch.save({"w": torch.ones(100)}, path)
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(DataError, match=r"broken\.pt cannot be read as a torch file .*; it is damaged"):
        inspect_path(path)


def test_detect_paths_inside_a_checkpoint(run):
    found = detect(run.checkpoint)
    assert found.model_dir == run.checkpoint / "model" and found.ema_dir == run.checkpoint / "model_ema"
    assert detect(run.checkpoint / "model_ema").format == "diffusers"
    assert Path(detect(run.checkpoint / "model").weights).name == "diffusion_pytorch_model.safetensors"


def test_unsealed_osctl_checkpoint_fails_integrity(run, tmp_path):
    partial = copy_tree(run.checkpoint, tmp_path / ".checkpoint-4.partial")
    (partial / "manifest.json").unlink()
    (partial / "trainer_state.json").unlink()
    report = inspect_path(partial)
    assert report["format"] == "osctl-checkpoint"
    assert integrity_error(report) == (f"{partial} is the unfinished save of checkpoint-4 (the run stopped while "
                                       "writing it); it is not resumable and may miss files — use a complete "
                                       "checkpoint-N.")
    sealed = copy_tree(run.checkpoint, tmp_path / "checkpoint-5")  # not a partial: the manifest is what is missing
    (sealed / "manifest.json").unlink()
    assert integrity_error(inspect_path(sealed)) == (f"{sealed / 'manifest.json'} is missing: the checkpoint was not "
                                                     "sealed (interrupted save?); use an earlier checkpoint.")
