"""`train.pretrained`: every supported file kind loads non-strictly with a report; pickled code never runs."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from osctl.errors import ConfigError, DataError
from osctl.plugin_manager import default_registry
from osctl.train.weights import load_into

TINY = {"preset": "tiny"}


def tiny_model(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return default_registry().build("model", "opensora_v1_3", TINY)


def assert_same(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("kind", ["safetensors", "folder", "pt", "pt_wrapped", "bin"])
def test_each_file_kind_loads_exactly(tmp_path, kind):
    source, target = tiny_model(1), tiny_model(2)
    state = {k: v.contiguous() for k, v in source.state_dict().items()}
    if kind == "safetensors":
        path = tmp_path / "w.safetensors"
        save_file(state, path)
    elif kind == "folder":
        path = tmp_path / "model"
        source.save_pretrained(path)
    elif kind == "pt":
        path = tmp_path / "w.pt"
        torch.save(state, path)
    elif kind == "pt_wrapped":
        path = tmp_path / "w.pth"
        torch.save({"state_dict": state, "step": 3}, path)
    else:
        path = tmp_path / "model"
        path.mkdir()
        torch.save(state, path / "diffusion_pytorch_model.bin")
    report = load_into(target, path)
    assert report.loaded == report.total == len(state)
    assert not (report.missing or report.unexpected or report.mismatched)
    assert_same(source, target)


def test_non_strict_load_reports_every_skipped_key(tmp_path):
    source, target = tiny_model(1), tiny_model(2)
    state = dict(source.state_dict())
    name = next(k for k in state if k.endswith("proj_out.weight"))
    state[name] = torch.zeros(3, 3)  # wrong shape
    removed = next(iter(state))
    del state[removed]
    state["extra.weight"] = torch.zeros(1)
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, path)
    report = load_into(target, path)
    assert report.unexpected == ["extra.weight"]
    assert [k for k, _, _ in report.mismatched] == [name]
    assert report.missing == [removed]
    assert report.loaded == report.total - 2
    assert "loaded" in report.summary() and any("shape mismatch" in line for line in report.details())


class _Evil:
    def __reduce__(self):
        return (os.system, (f"touch {Path(os.environ['OSCTL_EVIL_MARK'])}",))


def test_malicious_pickle_is_refused_not_executed(tmp_path, monkeypatch):
    mark = tmp_path / "pwned"
    monkeypatch.setenv("OSCTL_EVIL_MARK", str(mark))
    path = tmp_path / "evil.pt"
    torch.save({"weight": _Evil()}, path, pickle_module=pickle)
    with pytest.raises(DataError, match="needs arbitrary unpickling"):
        load_into(tiny_model(0), path)
    assert not mark.exists()


def test_missing_and_unknown_sources(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_into(tiny_model(0), tmp_path / "nope.safetensors")
    odd = tmp_path / "w.npz"
    odd.write_bytes(b"x")
    with pytest.raises(ConfigError, match="unknown weights format"):
        load_into(tiny_model(0), odd)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConfigError, match="holds no weights file"):
        load_into(tiny_model(0), empty)


def test_pretrained_in_a_training_run_is_reported(tmp_path):
    from osctl.recipe.load import load_recipe
    from osctl.recipe.validate import check_recipe
    from osctl.train.run import TrainOptions, setup_training
    from tests.train_helpers import SyntheticClips, write_tiny_recipe

    recipe = write_tiny_recipe(tmp_path, tmp_path / "out", tmp_path / "cache")
    registry = default_registry()
    first = check_recipe(load_recipe(recipe), registry)
    source = tiny_model(5)
    weights = tmp_path / "init.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, weights)
    checked = check_recipe(load_recipe(recipe, [f"train.pretrained={weights}"]), registry)
    te = registry.build("text_encoder", "tiny_t5", first.components["text_encoder"])
    parts = setup_training(checked, registry, TrainOptions(data_source=SyntheticClips(te.tokenize), dry_run=True))
    notes = [v for k, v in parts.plan.lines if k == "note"]
    assert any("loaded" in n and "init.safetensors" in n for n in notes), notes
