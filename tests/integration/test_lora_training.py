"""LoRA fine-tuning of the tiny v1.3 model on one process: only the adapter learns, checkpoints hold it alone
(in diffusers' LoRA format), a resumed run continues bit for bit, and validation samples with the adapter."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from tests.integration.train_worker import run_job, setup

pytestmark = pytest.mark.slow

LORA = ["train.lora={rank: 2, alpha: 4}"]
STEPS = ["train.max_steps=4", "train.checkpointing_steps=2"]


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def test_only_the_adapter_learns_and_the_base_stays_bitwise(tmp_path):
    from osctl.train.loop import train

    parts = setup({"name": "lora", "sets": [*LORA, *STEPS], "batch": 2}, tmp_path, 0, 1)
    module = parts.strategy.module
    before = {n: p.detach().clone() for n, p in module.named_parameters()}
    trainable = {n for n, p in module.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_" in n for n in trainable)
    assert {id(p) for g in parts.strategy.optimizer.param_groups for p in g["params"]} == \
        {id(p) for n, p in module.named_parameters() if n in trainable}
    assert len(parts.ema.shadow) == len(trainable)
    train(parts)
    for name, param in module.named_parameters():
        if name in trainable:
            continue
        assert torch.equal(param, before[name]), name  # the base: bit for bit
    assert any(not torch.equal(module.get_parameter(n), before[n]) for n in trainable if ".lora_B." in n)

    # the checkpoint holds the adapter in diffusers' format (keys, LoraConfig metadata) and no model/
    checkpoint = parts.output_dir / "checkpoint-4"
    assert not (checkpoint / "model").exists()
    with safe_open(checkpoint / "adapter" / "pytorch_lora_weights.safetensors", "pt") as handle:
        keys = set(handle.keys())
        meta = handle.metadata()
    assert keys and all(k.startswith("transformer.") and (".lora_A.weight" in k or ".lora_B.weight" in k) for k in keys)
    config = json.loads(meta["lora_adapter_metadata"])
    assert config["transformer.r"] == 2 and config["transformer.lora_alpha"] == 4
    assert json.loads(meta["osctl_adapter"])["base_fingerprint"].startswith("sha256:")
    assert (checkpoint / "adapter_ema" / "pytorch_lora_weights.safetensors").is_file()


def test_checkpoint_is_a_small_fraction_of_a_full_one(tmp_path):
    """Rank 1 on the tiny preset widened to 4 heads (0.7 M parameters): at the preset's 0.2 M the files every
    checkpoint has (RNG states, recipe, manifest: about 20 kB) alone are 0.5 % of a full checkpoint."""
    wider = ["model.num_attention_heads=4", *STEPS]
    lora = run_job({"kind": "train", "name": "lora", "sets": ["train.lora={rank: 1}", *wider], "batch": 2}, tmp_path)
    full = run_job({"kind": "train", "name": "full", "sets": wider, "batch": 2}, tmp_path)
    small, big = (folder_bytes(Path(run["out"]) / "checkpoint-4") for run in (lora, full))
    assert small <= 0.05 * big, (small, big)


def test_resume_continues_bit_for_bit(tmp_path):
    straight = run_job({"kind": "train", "name": "straight", "sets": [*LORA, *STEPS], "batch": 2}, tmp_path)
    first = run_job({"kind": "train", "name": "first", "sets": [*LORA, *STEPS, "train.max_steps=2"], "batch": 2},
                    tmp_path)
    resumed = run_job({"kind": "train", "name": "resumed", "dir": "first", "batch": 2,
                       "sets": [*LORA, *STEPS, "train.resume_from_checkpoint=latest"]}, tmp_path)
    assert first["losses"] + resumed["losses"] == straight["losses"]
    for kind in ("adapter", "adapter_ema"):
        files = [Path(run["out"]) / "checkpoint-4" / kind / "pytorch_lora_weights.safetensors"
                 for run in (straight, resumed)]
        tensors = [load_file(file) for file in files]
        assert tensors[0].keys() == tensors[1].keys()
        assert all(torch.equal(tensors[0][k], tensors[1][k]) for k in tensors[0])


def test_resume_refuses_another_base(tmp_path):
    from osctl.errors import ConfigError

    run_job({"kind": "train", "name": "first", "sets": [*LORA, *STEPS, "train.max_steps=2"], "batch": 2}, tmp_path)
    with pytest.raises(ConfigError, match="was trained on base"):
        run_job({"kind": "train", "name": "other", "dir": "first", "batch": 2,  # another seed: another base
                 "sets": [*LORA, *STEPS, "train.resume_from_checkpoint=latest",
                          "train.seed=8"]}, tmp_path)


def test_validation_samples_with_the_adapter(tmp_path):
    sets = [*LORA, "train.max_steps=2", "train.checkpointing_steps=2", "train.validation_steps=2",
            'train.validation_prompts=["a red ball"]']
    run = run_job({"kind": "train", "name": "val", "sets": sets, "batch": 2}, tmp_path)
    for label in ("model", "model_ema"):
        assert [p.name for p in (Path(run["out"]) / "validation" / "step-2" / label).iterdir()] == \
            ["0000-a-red-ball.mp4"]
