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


def test_chunked_loading_equals_whole_loading_with_its_report(tmp_path):
    """One tensor per chunk, over a sharded folder with a foreign key and a wrong shape in it."""
    source, target, whole = tiny_model(1), tiny_model(2), tiny_model(2)
    state = {k: v.contiguous() for k, v in source.state_dict().items()}
    name = next(k for k, v in state.items() if v.dim() == 2)
    state[name] = torch.zeros(3, 5)  # a wrong shape
    state["not.in.the.model"] = torch.ones(2)
    from osctl.ckpt.shards import plan_shards, write_shards

    (tmp_path / "model").mkdir()
    sizes = {k: v.numel() * v.element_size() for k, v in state.items()}
    write_shards(tmp_path / "model", "diffusion_pytorch_model",
                 plan_shards(sizes, "diffusion_pytorch_model", max(sizes.values())), state)
    assert len(list((tmp_path / "model").glob("*.safetensors"))) > 2
    one_by_one = load_into(target, tmp_path / "model", chunk_bytes=1)
    at_once = load_into(whole, tmp_path / "model", chunk_bytes=2**40)
    assert_same(target, whole)
    assert one_by_one.summary() == at_once.summary()
    assert one_by_one.unexpected == ["not.in.the.model"] and [m[0] for m in one_by_one.mismatched] == [name]
    assert one_by_one.loaded == len(state) - 2 and one_by_one.missing == []


PEAK_SCRIPT = """
import sys, torch
from osctl.train.weights import load_into

def status(key):
    return int(next(line for line in open("/proc/self/status") if line.startswith(key)).split()[1]) * 1024

torch.manual_seed(0)
model = torch.nn.Sequential(*[torch.nn.Linear(1024, 1024) for _ in range(48)])  # 48 x 4 MiB = 192 MiB
with open("/proc/self/clear_refs", "w") as handle:
    handle.write("5")  # the peak (VmHWM) starts again from here
before = status("VmRSS")
report = load_into(model, sys.argv[1], chunk_bytes=int(sys.argv[2]))
print(report.loaded, status("VmHWM") - before)
"""


def test_loading_needs_one_chunk_of_memory_besides_the_model(tmp_path):
    """Peak host memory while loading 192 MiB of safetensors weights into a built model: one chunk more, not a
    second copy of the model (measured in a fresh process; the kernel's peak counter is reset before loading)."""
    import subprocess
    import sys

    clear_refs = Path("/proc/self/clear_refs")
    if not (clear_refs.exists() and os.access(clear_refs, os.W_OK)):
        pytest.skip("needs Linux's /proc/self/clear_refs to reset the peak-memory counter")
    torch.manual_seed(1)
    model = torch.nn.Sequential(*[torch.nn.Linear(1024, 1024) for _ in range(48)])
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp_path / "w.safetensors")
    model_bytes = sum(v.numel() * v.element_size() for v in model.state_dict().values())
    chunk = 16 * 2**20
    out = subprocess.run([sys.executable, "-c", PEAK_SCRIPT, str(tmp_path / "w.safetensors"), str(chunk)],
                         capture_output=True, text=True, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    loaded, extra = map(int, out.stdout.split())
    assert loaded == 96
    assert extra < chunk * 2 + 16 * 2**20 < model_bytes / 3, f"loading took {extra / 2**20:.0f} MiB besides the model"
