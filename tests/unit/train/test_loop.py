"""The training loop on a tiny model: it learns, checkpoints atomically and resumes exactly."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from osctl.plugin_manager import default_registry
from osctl.recipe.load import load_recipe
from osctl.recipe.validate import check_recipe
from osctl.train import checkpoint as ckpt
from osctl.train.run import TrainOptions, run_training
from tests.train_helpers import SyntheticClips, write_tiny_recipe


def _run(tmp_path: Path, out: Path, overrides: list[str] | None = None, source_state=None):
    recipe = write_tiny_recipe(tmp_path, out, tmp_path / "cache")
    registry = default_registry()
    checked = check_recipe(load_recipe(recipe, overrides or []), registry)
    text_encoder = registry.build("text_encoder", "tiny_t5", checked.components["text_encoder"])
    source = SyntheticClips(lambda caps: text_encoder.tokenize(caps), batch_size=2)
    return run_training(checked, registry, TrainOptions(data_source=source))


def test_loss_decreases_when_overfitting(tmp_path):
    result = _run(tmp_path, tmp_path / "out", ["train.max_steps=40", "train.checkpointing_steps=100",
                                               "data.num_workers=0"])
    first, last = sum(result.losses[:5]) / 5, sum(result.losses[-5:]) / 5
    assert last < 0.7 * first, (first, last)


def test_checkpoint_layout_and_limits(tmp_path):
    out = tmp_path / "out"
    result = _run(tmp_path, out, ["train.checkpoints_total_limit=1"])
    assert result.final_step == 6
    names = sorted(p.name for p in out.iterdir() if p.name.startswith("checkpoint"))
    assert names == ["checkpoint-6"]
    final = out / "checkpoint-6"
    for part in ("model/config.json", "model/diffusion_pytorch_model.safetensors", "model_ema/config.json",
                 "model_ema/ema.json", "training_state/optimizer.pt", "training_state/lr_scheduler.pt",
                 "training_state/ema-rank-0.pt", "rng/rank-0.pt", "data/rank-0.json", "trainer_state.json",
                 "recipe.yaml", "manifest.json"):
        assert (final / part).is_file(), part
    manifest = ckpt.read_json(final / "manifest.json")
    assert {f["path"] for f in manifest["files"]} >= {"model/diffusion_pytorch_model.safetensors", "recipe.yaml"}
    assert not list(out.glob(".checkpoint-*"))


def test_resume_is_exact(tmp_path):
    straight = _run(tmp_path / "a", tmp_path / "a" / "out") if (tmp_path / "a").mkdir() is None else None
    (tmp_path / "b").mkdir()
    first = _run(tmp_path / "b", tmp_path / "b" / "out", ["train.max_steps=3"])
    second = _run(tmp_path / "b", tmp_path / "b" / "out", ["train.resume_from_checkpoint=latest"])
    assert first.losses + second.losses == straight.losses
    a = load_file(tmp_path / "a" / "out" / "checkpoint-6" / "model" / "diffusion_pytorch_model.safetensors")
    b = load_file(tmp_path / "b" / "out" / "checkpoint-6" / "model" / "diffusion_pytorch_model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    a = load_file(tmp_path / "a" / "out" / "checkpoint-6" / "model_ema" / "diffusion_pytorch_model.safetensors")
    b = load_file(tmp_path / "b" / "out" / "checkpoint-6" / "model_ema" / "diffusion_pytorch_model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_partial_checkpoint_is_never_picked(tmp_path):
    out = tmp_path / "out"
    _run(tmp_path, out, ["train.max_steps=3"])
    # a save killed half-way leaves a partial folder and maybe a checkpoint without manifest
    ckpt.prepare_partial(out, 6)
    broken = out / "checkpoint-9"
    broken.mkdir()
    (broken / "trainer_state.json").write_text("{}")
    (out / "checkpoint-x-bak").mkdir()
    assert ckpt.latest_checkpoint(out) == out / "checkpoint-3"


def test_changed_recipe_is_refused_on_resume(tmp_path):
    from osctl.errors import UsageError

    out = tmp_path / "out"
    _run(tmp_path, out, ["train.max_steps=3"])
    with pytest.raises(UsageError, match=r"diffusion\.snr_gamma"):
        _run(tmp_path, out, ["train.resume_from_checkpoint=latest", "diffusion.snr_gamma=2.0"])
    result = _run(tmp_path, out, ["train.resume_from_checkpoint=latest", "train.learning_rate=5e-4"])
    assert result.final_step == 6


@pytest.mark.parametrize("failure", ["enospc", "torch-writer"])
def test_a_full_disk_during_a_save_names_the_checkpoint_and_removes_the_partial_folder(tmp_path, monkeypatch, failure):
    import errno
    import os

    from osctl import errors
    from osctl.errors import StorageError
    from osctl.train.state import TrainState

    real_save = TrainState.save

    def save(self, folder):
        if self.step < 2:
            return real_save(self, folder)
        folder.mkdir(parents=True, exist_ok=True)
        if failure == "enospc":
            (folder / "rank-0.pt").write_bytes(b"half written")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        (folder / "rank-0.pt").write_bytes(b"half written")
        monkeypatch.setattr(errors, "free_bytes", lambda path: 0)  # the disk is full, and torch's writer says:
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 757248 vs 757140")

    monkeypatch.setattr(TrainState, "save", save)
    out = tmp_path / "out"
    with pytest.raises(StorageError) as caught:
        _run(tmp_path, out, ["train.max_steps=2", "train.checkpointing_steps=1"])
    message = caught.value.message
    assert message.startswith(f"cannot save checkpoint {out / 'checkpoint-2'}: the disk is full"), message
    assert "unfinished checkpoint folder was removed" in caught.value.hint
    assert not ckpt.partial_dir(out, 2).exists() and not (out / "checkpoint-2").exists()
    assert ckpt.latest_checkpoint(out) == out / "checkpoint-1"
