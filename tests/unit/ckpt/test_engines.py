"""Engine state: FSDP/DCP folders and DeepSpeed ZeRO folders are described and consolidate to the right weights."""

from __future__ import annotations

import json
import os
import pickle
import shutil

import pytest
import torch
from safetensors.torch import load_file

from osctl.ckpt.convert import ConvertOptions, convert
from osctl.ckpt.detect import detect
from osctl.ckpt.inspect import inspect_path
from osctl.errors import DataError
from osctl.plugin_manager import default_registry
from tests.ckpt_helpers import copy_tree, listing, make_dcp, make_deepspeed_checkpoints, trained_run


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return trained_run(tmp_path_factory)


@pytest.fixture(scope="module")
def dcp_folder(run, tmp_path_factory):
    ema = {k: run.ema.get(k, v) for k, v in run.model.items()}
    return make_dcp(tmp_path_factory.mktemp("dcp") / "state", run.model, ema=ema)


def _equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return set(a) == set(b) and all(a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a)


def test_dcp_folder_is_described(run, dcp_folder):
    report = inspect_path(dcp_folder)
    assert report["format"] == "dcp"
    assert report["engine"]["kind"] == "dcp" and report["engine"]["ranks"] == 1
    assert set(report["engine"]["groups"]) == {"model", "optim", "ema"}
    assert report["weights"]["parameters"] == sum(v.numel() for v in run.model.values())
    assert report["ema"]["present"]
    adam_bytes = sum(2 * v.numel() * 4 + 4 for v in run.model.values() if v.is_floating_point())  # m, v, step
    assert report["optimizer"]["present"] and report["optimizer"]["bytes"] == adam_bytes
    assert report["architecture"]["class_name"] == "OpenSoraT2V_v1_3"  # from the tensor names


def test_dcp_consolidates_to_the_model_and_ema(run, dcp_folder, tmp_path):
    out = tmp_path / "model"
    report = convert(dcp_folder, ConvertOptions(to="diffusers", output=out, config=run.checkpoint / "model"))
    assert report["verified"]["checksums"] and report["source"]["part"] == "model"
    assert _equal(load_file(out / "diffusion_pytorch_model.safetensors"), run.model)
    model = default_registry().build("model", "opensora_v1_3", {"path": str(out)})
    assert _equal(model.state_dict(), run.model)
    convert(dcp_folder, ConvertOptions(to="safetensors", output=tmp_path / "ema.safetensors", ema=True))
    assert _equal(load_file(tmp_path / "ema.safetensors"), {k: run.ema.get(k, v) for k, v in run.model.items()})


def test_osctl_checkpoint_with_only_dcp_state(run, dcp_folder, tmp_path):
    ckpt = copy_tree(run.checkpoint, tmp_path / "checkpoint-2")
    shutil.rmtree(ckpt / "model")
    shutil.copytree(dcp_folder, ckpt / "training_state" / "dcp")
    found = detect(ckpt)
    assert found.format == "osctl-checkpoint" and found.engine == ckpt / "training_state" / "dcp"
    report = inspect_path(ckpt)
    assert report["engine"]["kind"] == "dcp" and report["optimizer"]["group"] == "optim"
    assert not report["integrity"]["ok"]  # model/ was removed behind the manifest's back
    out = tmp_path / "out.safetensors"
    converted = convert(ckpt, ConvertOptions(to="safetensors", output=out))
    assert "no model/ folder: consolidated the engine state instead" in converted["notes"][0]
    assert _equal(load_file(out), run.model)


def test_dcp_metadata_may_not_run_code(run, dcp_folder, tmp_path):
    folder = copy_tree(dcp_folder, tmp_path / "dcp")
    marker = tmp_path / "PWNED"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    (folder / ".metadata").write_bytes(pickle.dumps(Evil()))
    with pytest.raises(DataError, match=r"\.metadata refers to posix\.system, which a DCP metadata file never needs"):
        inspect_path(folder)
    assert not marker.exists()


def test_dcp_missing_data_file(run, dcp_folder, tmp_path):
    folder = copy_tree(dcp_folder, tmp_path / "dcp")
    for data_file in folder.glob("*.distcp"):
        data_file.unlink()
    (folder / "keep.distcp").write_bytes(b"")  # still looks like DCP
    before = listing(tmp_path)
    with pytest.raises(DataError, match=r"__0_0\.distcp is missing; the DCP checkpoint is incomplete"):
        convert(folder, ConvertOptions(to="safetensors", output=tmp_path / "x.safetensors"))
    assert listing(tmp_path) == before


@pytest.fixture(scope="module")
def deepspeed_dir(tmp_path_factory):
    return make_deepspeed_checkpoints(tmp_path_factory.mktemp("deepspeed"))


@pytest.mark.slow
@pytest.mark.parametrize("stage", [2, 3])
def test_zero_folder_is_described_and_consolidates(deepspeed_dir, tmp_path, stage):
    folder = deepspeed_dir / f"zero{stage}"
    expected = torch.load(folder / "expected.pt", weights_only=True)
    report = inspect_path(folder)
    assert report["format"] == "deepspeed"
    engine = report["engine"]
    assert (engine["tag"], engine["zero_stage"], engine["world_size"]) == ("global_step2", stage, 1)
    assert report["global_step"] == 2
    assert report["optimizer"]["bytes"] == sum(p.stat().st_size for p in (folder / "global_step2").glob("*optim_states.pt"))
    assert report["weights"]["parameters"] == sum(v.numel() for v in expected.values())
    assert inspect_path(folder / "global_step2")["engine"]["tag"] == "global_step2"  # the tag folder itself
    out = tmp_path / "merged.safetensors"
    result = convert(folder, ConvertOptions(to="safetensors", output=out))
    assert f"consolidated ZeRO-{stage} shards of 1 rank(s) into fp32 weights" in result["notes"]
    assert _equal(load_file(out), expected)
    assert "deepspeed" not in {p.name for p in tmp_path.iterdir()}


@pytest.mark.slow
def test_open_sora_plan_training_checkpoint(deepspeed_dir, golden, tmp_path):
    ckpt = tmp_path / "checkpoint-2"
    shutil.copytree(deepspeed_dir / "osp", ckpt)
    shutil.copytree(golden / "dit" / "a1_sparse1d_n4" / "model", ckpt / "model")
    shutil.copytree(golden / "dit" / "a1_sparse1d_n4" / "model", ckpt / "model_ema")
    config = json.loads((ckpt / "model_ema" / "config.json").read_text())
    config.update(decay=0.9999, optimization_step=2, update_after_step=0, use_ema_warmup=False)
    (ckpt / "model_ema" / "config.json").write_text(json.dumps(config))
    (ckpt / "random_states_0.pkl").write_bytes(pickle.dumps({"python": 1}))
    report = inspect_path(ckpt)
    assert report["format"] == "osp-training-checkpoint"
    assert report["global_step"] == 2
    assert report["architecture"]["loads_with"]["name"] == "opensora_v1_3"
    assert report["ema"]["present"] and report["ema"]["details"]["decay"] == 0.9999
    assert report["engine"]["kind"] == "deepspeed" and report["engine"]["tag"] == "pytorch_model"
    assert report["optimizer"]["present"]
    out = tmp_path / "ema"
    convert(ckpt, ConvertOptions(to="diffusers", ema=True, output=out))
    assert "decay" not in json.loads((out / "config.json").read_text())
    golden_weights = load_file(golden / "dit" / "a1_sparse1d_n4" / "model" / "diffusion_pytorch_model.safetensors")
    assert _equal(load_file(out / "diffusion_pytorch_model.safetensors"), golden_weights)
    shutil.rmtree(ckpt / "model")
    shutil.rmtree(ckpt / "model_ema")
    (ckpt / "model").mkdir()
    (ckpt / "model" / "config.json").write_text("{}")  # keeps the OSP layout recognisable without weights
    merged = tmp_path / "engine.safetensors"
    convert(ckpt / "pytorch_model", ConvertOptions(to="safetensors", output=merged))
    assert _equal(load_file(merged), torch.load(ckpt / "expected.pt", weights_only=True))


@pytest.mark.slow
def test_osctl_checkpoint_with_deepspeed_state(run, deepspeed_dir, tmp_path):
    ckpt = copy_tree(run.checkpoint, tmp_path / "checkpoint-2")
    shutil.copytree(deepspeed_dir / "zero2", ckpt / "training_state" / "deepspeed")
    report = inspect_path(ckpt)
    assert report["engine"]["kind"] == "deepspeed" and report["engine"]["zero_stage"] == 2
    assert report["engine"]["path"] == "training_state/deepspeed"
    assert report["optimizer"]["files"] == ["training_state/deepspeed/global_step2/zero_pp_rank_0_mp_rank_00_optim_states.pt"]
    assert report["integrity"]["unlisted"]  # the engine files were added after the manifest


def test_dcp_chunks_of_sharded_parameters_are_placed_at_their_offsets(tmp_path):
    """FSDP saves one chunk per rank; the consolidated tensor puts each at its offset (and misses none)."""
    import io
    from types import SimpleNamespace

    from osctl.ckpt.engines import DCPCheckpoint, DCPItem, load_dcp

    full = torch.arange(24.0).reshape(4, 6)
    chunks = []
    for rank, rows in enumerate(((0, 1), (1, 3))):  # ranks own rows [0:1] and [1:4]
        start, length = rows[0], rows[1]
        blob = io.BytesIO()
        torch.save(full[start:start + length].clone(), blob)
        path = tmp_path / f"__{rank}_0.distcp"
        path.write_bytes(b"pad" + blob.getvalue())
        info = SimpleNamespace(relative_path=path.name, offset=3, length=len(blob.getvalue()), transform_descriptors=None)
        chunks.append(((start, 0), (length, 6), info))
    item = DCPItem("model.w", "model", "w", (4, 6), "float32", chunks)
    checkpoint = DCPCheckpoint(folder=tmp_path, items=[item], files=sorted(tmp_path.glob("*.distcp")), ranks=2)
    assert torch.equal(load_dcp(checkpoint, "model")["w"], full)
    item.chunks = chunks[:1]
    with pytest.raises(DataError, match=r"the chunks of 'model\.w' cover 6 of 24 elements; a rank's shard is missing"):
        load_dcp(checkpoint, "model")


def test_dcp_ema_without_buffers_takes_them_from_the_model(run, tmp_path):
    model = {**run.model, "pos_buffer": torch.arange(5)}  # a non-trainable tensor the EMA does not track
    folder = make_dcp(tmp_path / "dcp", model, ema=run.ema)
    out = tmp_path / "ema.safetensors"
    report = convert(folder, ConvertOptions(to="safetensors", output=out, ema=True))
    assert any("1 tensors the EMA does not track" in note for note in report["notes"])
    written = load_file(out)
    assert set(written) == set(model)
    assert torch.equal(written["pos_buffer"], model["pos_buffer"])
    assert all(torch.equal(written[k], v) for k, v in run.ema.items())


def test_fsdp_wrapper_class_name_is_repaired(run, tmp_path):
    ckpt = copy_tree(run.checkpoint, tmp_path / "checkpoint-2")
    config_path = ckpt / "model" / "config.json"
    config = json.loads(config_path.read_text())
    config["_class_name"] = "FSDPOpenSoraT2V_v1_3"  # what a config written from an FSDP2-wrapped module says
    config_path.write_text(json.dumps(config))
    arch = inspect_path(ckpt)["architecture"]
    assert arch["class_name"] == "OpenSoraT2V_v1_3" and arch["recorded_class_name"] == "FSDPOpenSoraT2V_v1_3"
    assert arch["loads_with"]["name"] == "opensora_v1_3" and "recipe_section" not in arch
    out = tmp_path / "fixed"
    report = convert(ckpt, ConvertOptions(to="diffusers", output=out))
    assert json.loads((out / "config.json").read_text())["_class_name"] == "OpenSoraT2V_v1_3"
    assert any("FSDP wrapper" in note for note in report["notes"])
    model = default_registry().build("model", "opensora_v1_3", {"path": str(out)})
    assert _equal(model.state_dict(), run.model)


@pytest.mark.slow
def test_zero_consolidation_never_unpickles_code(deepspeed_dir, tmp_path):
    from tests.ckpt_helpers import write_malicious_pt

    folder = copy_tree(deepspeed_dir / "zero2", tmp_path / "zero2")
    marker = tmp_path / "PWNED"
    optim = next((folder / "global_step2").glob("*optim_states.pt"))
    write_malicious_pt(optim, marker)
    before = listing(tmp_path)
    with pytest.raises(DataError, match=r"optim_states\.pt needs arbitrary unpickling \(it refers to posix\.system\)"):
        convert(folder, ConvertOptions(to="safetensors", output=tmp_path / "out.safetensors"))
    assert not marker.exists() and listing(tmp_path) == before
