"""The frozen base in less memory: bf16/fp8 storage (``train.base_dtype``) and block offload (``train.offload``)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.integration.train_worker import run_job, setup

pytestmark = pytest.mark.slow

LORA = ["train.lora={rank: 4, alpha: 4, init: random}", "train.max_steps=3", "train.checkpointing_steps=3"]
#: |loss(fp8 base) - loss(bf16 base)| of one step on the tiny model, relative to the loss (measured on CPU:
#: 2e-5 for fp8_e4m3, 1.3e-3 for fp8_e5m2, 1.4e-5 for bf16 against fp32)
FP8_LOSS_TOLERANCE = 0.01


def first_step_loss(tmp_path: Path, name: str, sets: list[str]) -> tuple[float, dict[str, int]]:
    from osctl.train.frozen_base import frozen_bytes
    from osctl.train.loop import micro_step

    parts = setup({"name": name, "sets": [*LORA, *sets], "batch": 2}, tmp_path, 0, 1)
    loss = micro_step(parts, next(iter(parts.data)), sync=True, scale=1.0)
    parts.strategy.optimizer_step()
    return loss, frozen_bytes(parts.strategy.module)


def test_fp8_storage_halves_the_base_and_keeps_the_loss(tmp_path):
    fp32, bytes32 = first_step_loss(tmp_path, "fp32", [])
    bf16, bytes16 = first_step_loss(tmp_path, "bf16", ["train.base_dtype=bf16"])
    fp8, bytes8 = first_step_loss(tmp_path, "fp8", ["train.base_dtype=fp8_e4m3"])
    e5m2, _ = first_step_loss(tmp_path, "e5m2", ["train.base_dtype=fp8_e5m2"])
    assert bytes16["bfloat16"] == 2 * bytes8["float8_e4m3fn"]  # the block linears: half the bytes of bf16
    assert bytes32["float32"] - bytes16["float32"] == 2 * bytes16["bfloat16"]
    assert abs(bf16 - fp32) <= 0.01 * fp32
    for loss in (fp8, e5m2):
        assert abs(loss - bf16) <= FP8_LOSS_TOLERANCE * bf16, (loss, bf16)


def test_low_precision_base_trains_and_only_with_lora(tmp_path):
    from osctl.errors import ConfigError

    run = run_job({"kind": "train", "name": "fp8", "sets": [*LORA, "train.base_dtype=fp8_e4m3"], "batch": 2}, tmp_path)
    assert len(run["losses"]) == 3 and all(loss == loss for loss in run["losses"])
    with pytest.raises(ConfigError, match=r"train\.base_dtype: applies to the frozen base of a LoRA run; set train\.lora"):
        run_job({"kind": "train", "name": "full", "sets": ["train.base_dtype=bf16"], "batch": 2}, tmp_path)


@pytest.mark.parametrize("checkpointing", [False, True])
def test_offloaded_blocks_stream_in_and_the_step_is_unchanged(tmp_path, checkpointing):
    sets = [*LORA, f"train.gradient_checkpointing={str(checkpointing).lower()}"]
    plain = run_job({"kind": "train", "name": "plain", "sets": sets, "batch": 2}, tmp_path)
    parts = setup({"name": "offload", "sets": [*sets, "train.offload={blocks: 3}"], "batch": 2}, tmp_path, 0, 1)
    offloader = parts.strategy.module._osctl_offloader  # blocks 1..3 of the 4
    assert len(offloader.blocks) == 3 and not any(offloader.is_onloaded(b) for b in range(3))
    seen: list[bool] = []

    def check(*_: object) -> None:  # entering model block 2: its weights are in, as copies; block 1's are gone
        block = offloader.blocks[1]
        copies = all(p.data.untyped_storage().data_ptr() != h.untyped_storage().data_ptr()
                     for p, h in zip(block.params, block.homes, strict=True))
        seen.append(offloader.is_onloaded(1) and not offloader.is_onloaded(0) and copies)

    hook = parts.strategy.module.transformer_blocks[2].register_forward_pre_hook(check)
    from osctl.train.loop import train

    result = train(parts)
    hook.remove()
    assert seen and all(seen)
    assert offloader.onloads == 3 * 3 * 2  # 3 steps x 3 blocks x (forward + backward)
    assert not any(offloader.is_onloaded(b) for b in range(3))  # released after backward
    assert all(p.numel() == 0 for b in offloader.blocks for p in b.params)
    state = parts.strategy.module.state_dict()  # exports and validation see the host copies
    assert all(v.numel() for v in state.values())
    assert result.losses == plain["losses"]  # fp32: bit for bit
    ours = load_file(parts.output_dir / "checkpoint-3" / "adapter" / "pytorch_lora_weights.safetensors")
    theirs = load_file(Path(plain["out"]) / "checkpoint-3" / "adapter" / "pytorch_lora_weights.safetensors")
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)


def test_a_lean_loaded_offload_run_keeps_the_offloaded_weights_in_host_memory(tmp_path, monkeypatch):
    """LoRA + offload from ``train.pretrained`` safetensors, loaded lean (meta build, filled from the file): the
    offloaded blocks' weights are read into host memory (never the device), the offloader keeps them in one host
    buffer per block of exactly their size, holding the file's values; offloading comes before the strategy's
    move, which sees each offloaded weight only as an empty placeholder; and the run trains bit for bit like the
    one without offload."""
    import osctl.train.lean_load as lean_load
    from osctl.plugin_manager import default_registry
    from osctl.recipe.load import load_recipe
    from osctl.recipe.validate import check_recipe
    from osctl.train.loop import train
    from tests.move_helpers import ParameterMoves
    from tests.train_helpers import write_tiny_recipe

    registry = default_registry()
    base = check_recipe(load_recipe(write_tiny_recipe(tmp_path, tmp_path / "o", tmp_path / "c")), registry)
    torch.manual_seed(11)
    weights = registry.build("model", base.loaded.recipe.model.name, base.components["model"])
    with torch.no_grad():
        for param in weights.parameters():  # values a fresh build would not have
            param.add_(0.05 * torch.randn_like(param))
    file = tmp_path / "base.safetensors"
    save_file({k: v.contiguous() for k, v in weights.state_dict().items()}, file)
    sets = [*LORA, f"train.pretrained={file}"]
    plain = run_job({"kind": "train", "name": "plain", "sets": sets, "batch": 2}, tmp_path)

    made: list[dict[str, torch.Tensor]] = []  # the tensors the loader made for the host keys, kept alive
    materialise = lean_load.materialise

    def recording(model, plan, **kwargs):
        report = materialise(model, plan, **kwargs)
        state = model.state_dict()
        made.append({key: state[key] for key in kwargs.get("host_keys", ())})
        return report

    monkeypatch.setattr(lean_load, "materialise", recording)
    with ParameterMoves() as moves:
        parts = setup({"name": "offload", "sets": [*sets, "train.offload={blocks: 3}"], "batch": 2}, tmp_path, 0, 1)
    notes = [value for key, value in parts.plan.lines if key == "note"]
    assert any(n.startswith("model built on the meta device") for n in [*notes, *plain["notes"]])
    assert len(made) == 1 and made[0]
    host = made[0]
    offloader = parts.strategy.module._osctl_offloader
    params = [p for block in offloader.blocks for p in block.params]
    homes = [h for block in offloader.blocks for h in block.homes]
    assert len(homes) == len(host)  # every weight the loader put in host memory, and only those
    assert all(tensor.device.type == "cpu" for tensor in host.values())
    saved = load_file(file)
    assert all(torch.equal(tensor, saved[key]) for key, tensor in host.items())
    state = parts.strategy.module.state_dict()  # an offloaded weight shows its home (under peft's name if adapted)

    def shown(key: str) -> torch.Tensor:
        layer, name = key.rsplit(".", 1)
        return state[key] if key in state else state[f"{layer}.base_layer.{name}"]

    assert all(torch.equal(shown(key), saved[key]) for key in host)
    for block in offloader.blocks:  # one buffer per block, of exactly its weights (aligned, whole pages)
        assert {h.untyped_storage().data_ptr() for h in block.homes} == {block.slab.buffer.untyped_storage().data_ptr()}
        assert block.slab.buffer.numel() < sum(h.numel() * h.element_size() for h in block.homes) + \
            256 * len(block.homes) + 4096
    assert all(p.numel() == 0 for p in params)
    moved = moves.sizes_moved(params)
    assert len(moved) == len(params) and set(moved) == {0}  # the strategy's move took placeholders only

    result = train(parts)
    assert result.losses == plain["losses"]  # fp32: bit for bit
    ours = load_file(parts.output_dir / "checkpoint-3" / "adapter" / "pytorch_lora_weights.safetensors")
    theirs = load_file(Path(plain["out"]) / "checkpoint-3" / "adapter" / "pytorch_lora_weights.safetensors")
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in theirs)
