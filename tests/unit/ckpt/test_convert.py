"""`ckpt convert`: exact round trips from a real training checkpoint, casts, shards, safety and atomicity."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import osctl.ckpt.convert as convert_module
from osctl.ckpt.convert import ConvertOptions, convert, parse_size
from osctl.errors import CheckFailed, DataError, UsageError
from osctl.plugin_manager import default_registry
from osctl.train.weights import read_state_dict
from tests.ckpt_helpers import listing, trained_run, write_malicious_pt


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return trained_run(tmp_path_factory)


def _equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return set(a) == set(b) and all(a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a)


def test_checkpoint_to_diffusers_equals_the_training_model(run, tmp_path):
    out = tmp_path / "exported"
    report = convert(run.checkpoint, ConvertOptions(to="diffusers", output=out))
    assert report["verified"] == {"tensors": len(run.model), "names": True, "shapes": True, "dtypes": True,
                                  "checksums": True}
    assert [f["path"] for f in report["files"]] == ["config.json", "diffusion_pytorch_model.safetensors"]
    assert report["files"][1]["bytes"] == (out / "diffusion_pytorch_model.safetensors").stat().st_size
    assert _equal(load_file(out / "diffusion_pytorch_model.safetensors"), run.model)
    model = default_registry().build("model", "opensora_v1_3", {"path": str(out)})
    assert _equal(model.state_dict(), run.model)
    assert listing(tmp_path) == {"exported", "exported/config.json", "exported/diffusion_pytorch_model.safetensors"}


def test_checkpoint_ema_to_diffusers_equals_the_ema(run, tmp_path):
    out = tmp_path / "ema"
    report = convert(run.checkpoint, ConvertOptions(to="diffusers", output=out, ema=True))
    assert report["source"]["part"] == "model_ema"
    written = load_file(out / "diffusion_pytorch_model.safetensors")
    assert set(written) == set(run.model)
    for name, tensor in written.items():  # trainable tensors hold the EMA shadow, the rest the model's values
        assert torch.equal(tensor, run.ema.get(name, run.model[name])), name
    assert any(not torch.equal(run.ema[k], run.model[k]) for k in run.ema)  # the EMA really differs
    assert "decay" not in json.loads((out / "config.json").read_text())
    model = default_registry().build("model", "opensora_v1_3", {"path": str(out)})
    assert all(torch.equal(model.state_dict()[k], written[k]) for k in written)


@pytest.mark.parametrize(("dtype", "torch_dtype"), [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_dtype_casts(run, tmp_path, dtype, torch_dtype):
    out = tmp_path / dtype
    report = convert(run.checkpoint, ConvertOptions(to="diffusers", output=out, dtype=dtype))
    assert report["dtype"] == str(torch_dtype).removeprefix("torch.")
    written = load_file(out / "diffusion_pytorch_model.safetensors")
    assert _equal(written, {k: v.to(torch_dtype) for k, v in run.model.items()})
    back = tmp_path / "back.safetensors"
    convert(out, ConvertOptions(to="safetensors", output=back, dtype="fp32"))
    assert _equal(load_file(back), {k: v.to(torch_dtype).float() for k, v in run.model.items()})


def test_sharded_output_with_index_reloads_equal(run, tmp_path):
    out = tmp_path / "sharded"
    report = convert(run.checkpoint, ConvertOptions(to="diffusers", output=out, max_shard_size=parse_size("200kB")))
    shards = sorted(p.name for p in out.glob("diffusion_pytorch_model-*.safetensors"))
    assert len(shards) == 5 and shards[0] == "diffusion_pytorch_model-00001-of-00005.safetensors"
    index = json.loads((out / "diffusion_pytorch_model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(run.model) and set(index["weight_map"].values()) == set(shards)
    assert index["metadata"]["total_size"] == sum(v.numel() * 4 for v in run.model.values())
    assert all(p.stat().st_size <= 200_000 + 20_000 for p in out.glob("*-of-*.safetensors"))
    assert report["verified"]["checksums"]
    assert _equal(read_state_dict(out), run.model)
    model = default_registry().build("model", "opensora_v1_3", {"path": str(out)})
    assert _equal(model.state_dict(), run.model)
    single = tmp_path / "merged.safetensors"
    convert(out, ConvertOptions(to="safetensors", output=single))
    assert _equal(load_file(single), run.model)


def test_single_file_to_folder_and_pt_round_trip(run, tmp_path):
    file = tmp_path / "weights.safetensors"
    convert(run.checkpoint, ConvertOptions(to="safetensors", output=file))
    with pytest.raises(UsageError, match=r"carries no config\.json.*--config"):
        convert(file, ConvertOptions(to="diffusers", output=tmp_path / "folder"))
    report = convert(file, ConvertOptions(to="diffusers", output=tmp_path / "folder", config=run.checkpoint / "model"))
    assert report["config_source"] == str(run.checkpoint / "model" / "config.json")
    assert _equal(load_file(tmp_path / "folder" / "diffusion_pytorch_model.safetensors"), run.model)
    pt = tmp_path / "weights.pt"
    convert(tmp_path / "folder", ConvertOptions(to="pt", output=pt))
    assert _equal(torch.load(pt, weights_only=True), run.model)
    convert(pt, ConvertOptions(to="safetensors", output=tmp_path / "again.safetensors"))
    assert _equal(load_file(tmp_path / "again.safetensors"), run.model)


def test_default_output_names(run, tmp_path):
    src = tmp_path / "weights.safetensors"
    save_file({"a": torch.ones(2)}, str(src))
    assert convert(src, ConvertOptions(to="pt"))["output"] == str(tmp_path / "weights.pt")
    assert convert(src, ConvertOptions(to="safetensors", dry_run=True, max_shard_size=10))["output"] == str(
        tmp_path / "weights-safetensors")
    report = convert(run.checkpoint, ConvertOptions(to="diffusers", ema=True, dry_run=True))
    assert report["output"] == str(run.checkpoint.with_name("checkpoint-2-ema-diffusers"))


def test_dry_run_writes_nothing(run, tmp_path):
    before = listing(tmp_path)
    report = convert(run.checkpoint, ConvertOptions(to="diffusers", output=tmp_path / "x", dtype="bf16",
                                                    max_shard_size=300_000, dry_run=True))
    assert listing(tmp_path) == before
    assert report["dry_run"] and report["verified"] is None
    assert [f["path"] for f in report["files"]] == [
        "config.json", "diffusion_pytorch_model-00001-of-00002.safetensors",
        "diffusion_pytorch_model-00002-of-00002.safetensors", "diffusion_pytorch_model.safetensors.index.json"]
    assert report["bytes"] == sum(v.numel() * 2 for v in run.model.values())


def test_force_semantics(run, tmp_path):
    out = tmp_path / "out.safetensors"
    out.write_text("keep me")
    with pytest.raises(UsageError, match=r"out\.safetensors already exists; pass --force"):
        convert(run.checkpoint, ConvertOptions(to="safetensors", output=out))
    assert out.read_text() == "keep me"
    dry = convert(run.checkpoint, ConvertOptions(to="safetensors", output=out, dry_run=True))
    assert any("needs --force" in note for note in dry["notes"]) and out.read_text() == "keep me"
    report = convert(run.checkpoint, ConvertOptions(to="safetensors", output=out, force=True))
    assert report["replaced"] and _equal(load_file(out), run.model)
    folder = tmp_path / "folder"
    (folder / "old").mkdir(parents=True)
    convert(run.checkpoint, ConvertOptions(to="diffusers", output=folder, force=True))
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "diffusion_pytorch_model.safetensors"]
    assert listing(tmp_path) == {"out.safetensors", "folder", "folder/config.json",
                                 "folder/diffusion_pytorch_model.safetensors"}


def test_output_may_not_overlap_the_source(run, tmp_path):
    with pytest.raises(UsageError, match="overlaps the source"):
        convert(run.checkpoint, ConvertOptions(to="diffusers", output=run.checkpoint / "exported"))
    with pytest.raises(UsageError, match="overlaps the source"):
        convert(run.checkpoint / "model", ConvertOptions(to="diffusers", output=run.checkpoint, force=True))


def test_malicious_pickle_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "PWNED"
    for legacy in (False, True):
        evil = write_malicious_pt(tmp_path / f"evil{int(legacy)}.pt", marker, legacy=legacy)
        before = listing(tmp_path)
        with pytest.raises(DataError) as caught:
            convert(evil, ConvertOptions(to="safetensors", output=tmp_path / "out.safetensors"))
        assert caught.value.message == (
            f"{evil} needs arbitrary unpickling (it refers to posix.system), so it was refused and nothing in it ran; "
            "convert it with --trust-pickle only if you trust where it came from.")
        assert not marker.exists()
        assert listing(tmp_path) == before


def test_trust_pickle_allows_plain_objects(tmp_path):
    src = tmp_path / "old.pth"
    torch.save({"model": {"module.w": torch.arange(4.0)}, "args": argparse.Namespace(lr=1)}, src)
    with pytest.raises(DataError, match="needs arbitrary unpickling"):
        convert(src, ConvertOptions(to="safetensors"))
    report = convert(src, ConvertOptions(to="safetensors", trust_pickle=True))
    assert _equal(load_file(tmp_path / "old.safetensors"), {"w": torch.arange(4.0)})
    assert any("'module.' prefix" in note for note in report["notes"])


def test_reference_ckpt_layout_ema_and_prefixes(tmp_path):
    weights = {"module.encoder.conv.weight": torch.randn(2, 3), "module.decoder.conv.bias": torch.randn(2)}
    ema = {k: v * 0.5 for k, v in weights.items()}
    src = tmp_path / "wfvae.ckpt"
    torch.save({"state_dict": weights, "ema_state_dict": ema, "global_step": 5}, src)
    convert(src, ConvertOptions(to="safetensors", output=tmp_path / "ema.safetensors", ema=True))
    assert _equal(load_file(tmp_path / "ema.safetensors"), {k.removeprefix("module."): v for k, v in ema.items()})
    convert(src, ConvertOptions(to="safetensors", output=tmp_path / "raw.safetensors"))
    assert _equal(load_file(tmp_path / "raw.safetensors"), {k.removeprefix("module."): v for k, v in weights.items()})
    plain = tmp_path / "plain.pt"
    torch.save({"w": torch.ones(1)}, plain)
    with pytest.raises(UsageError, match="holds no EMA weights"):
        convert(plain, ConvertOptions(to="safetensors", ema=True))


@pytest.mark.parametrize("damage", ["truncate", "missing_shard", "wrong_index"])
def test_damaged_sources_write_nothing(run, tmp_path, damage):
    src = tmp_path / "src"
    convert(run.checkpoint, ConvertOptions(to="diffusers", output=src, max_shard_size=500_000))
    shard = src / "diffusion_pytorch_model-00002-of-00002.safetensors"
    index = src / "diffusion_pytorch_model.safetensors.index.json"
    if damage == "truncate":
        shard.write_bytes(shard.read_bytes()[:-7])
        expected = r"diffusion_pytorch_model-00002-of-00002\.safetensors is truncated"
    elif damage == "missing_shard":
        shard.unlink()
        expected = r"shard .*00002-of-00002\.safetensors listed in .*index\.json is missing"
    else:
        data = json.loads(index.read_text())
        name = next(k for k, v in data["weight_map"].items() if v == shard.name)
        data["weight_map"][name] = "diffusion_pytorch_model-00001-of-00002.safetensors"
        index.write_text(json.dumps(data))
        expected = r"index\.json is wrong"
    before = listing(tmp_path)
    with pytest.raises(DataError, match=expected):
        convert(src, ConvertOptions(to="safetensors", output=tmp_path / "out.safetensors"))
    assert listing(tmp_path) == before


def test_failed_verification_leaves_nothing(run, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise CheckFailed("verification of the written output failed: test; nothing was written.")

    monkeypatch.setattr(convert_module, "_verify", broken)
    with pytest.raises(CheckFailed):
        convert(run.checkpoint, ConvertOptions(to="diffusers", output=tmp_path / "deep" / "out"))
    assert listing(tmp_path) == set()


def test_bad_options(run, tmp_path):
    with pytest.raises(UsageError, match="--max-shard-size 'lots' is not a size"):
        parse_size("lots")
    assert parse_size("2GiB") == 2 * 2**30 and parse_size("5GB") == 5 * 10**9 and parse_size("123") == 123
    with pytest.raises(UsageError, match="one file but --max-shard-size asks for shards"):
        convert(run.checkpoint, ConvertOptions(to="safetensors", output=tmp_path / "a.safetensors", max_shard_size=10))
    with pytest.raises(UsageError, match="--dtype 'int8' is not supported"):
        convert(run.checkpoint, ConvertOptions(to="pt", dtype="int8"))
    with pytest.raises(UsageError, match="single set of weights with no separate EMA"):
        convert(run.checkpoint / "model", ConvertOptions(to="pt", ema=True))


def test_tied_weights_are_written_separately(tmp_path):
    shared = torch.randn(3, 3)
    src = tmp_path / "tied.pt"
    torch.save({"embed.weight": shared, "head.weight": shared}, src)
    convert(src, ConvertOptions(to="safetensors"))
    written = load_file(tmp_path / "tied.safetensors")
    assert torch.equal(written["embed.weight"], shared) and torch.equal(written["head.weight"], shared)


def test_written_folder_has_normal_permissions(run, tmp_path):
    out = tmp_path / "perm"
    convert(run.checkpoint, ConvertOptions(to="diffusers", output=out))
    assert Path(out).stat().st_mode & 0o755 == 0o755


def test_bin_diffusers_folder(run, tmp_path):
    folder = tmp_path / "legacy"
    folder.mkdir()
    (folder / "config.json").write_text((run.checkpoint / "model" / "config.json").read_text())
    torch.save(run.model, folder / "diffusion_pytorch_model.bin")
    from osctl.ckpt.inspect import inspect_path

    report = inspect_path(folder)
    assert report["format"] == "diffusers" and report["architecture"]["loads_with"]["name"] == "opensora_v1_3"
    assert report["weights"]["files"] == ["diffusion_pytorch_model.bin"]
    convert(folder, ConvertOptions(to="diffusers", output=tmp_path / "modern"))
    assert _equal(load_file(tmp_path / "modern" / "diffusion_pytorch_model.safetensors"), run.model)


def test_convert_and_training_export_write_the_same_shards(tmp_path):
    """One shard writer: ``ckpt convert`` and a checkpoint's ``model/`` folder split as diffusers'
    ``save_pretrained`` does (a tensor over the limit alone in its shard, the others packed around it)."""
    from osctl.train.export import save_model_folder

    state = {"a": torch.arange(10.0), "big": torch.arange(100.0), "c": torch.arange(10.0)}
    save_file(state, str(tmp_path / "source.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps({"_class_name": "OpenSoraT2V_v1_3"}))
    convert(tmp_path / "source.safetensors", ConvertOptions(to="diffusers", output=tmp_path / "converted",
                                                            max_shard_size=200))
    save_model_folder(tmp_path / "exported", {"_class_name": "OpenSoraT2V_v1_3"}, state, max_shard_bytes=200)
    index = json.loads((tmp_path / "exported" / "diffusion_pytorch_model.safetensors.index.json").read_text())
    assert index["weight_map"] == {"a": "diffusion_pytorch_model-00002-of-00002.safetensors",
                                   "big": "diffusion_pytorch_model-00001-of-00002.safetensors",
                                   "c": "diffusion_pytorch_model-00002-of-00002.safetensors"}
    weights = sorted(p.name for p in (tmp_path / "converted").iterdir() if p.name != "config.json")
    assert weights == sorted(p.name for p in (tmp_path / "exported").iterdir() if p.name != "config.json")
    for name in weights:
        assert (tmp_path / "converted" / name).read_bytes() == (tmp_path / "exported" / name).read_bytes(), name
