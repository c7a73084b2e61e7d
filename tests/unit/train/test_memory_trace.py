"""The memory plan's activation trace runs each kind of transformer block twice and replays the rest: the
trace must equal the one that runs every block, for blocks that differ by a setting (v1.3's alternating
Skiparse modes) and for a diffusers family's identical blocks."""

from __future__ import annotations

from typing import Any

import pytest
import torch

import osctl.train.activations as memory
from osctl.plugin_manager import default_registry

CASES = [("opensora_v1_3", {"preset": "2B/122"}, 8, 4096), ("wan", {"preset": "wan2.1-t2v-1.3b"}, 16, 4096)]


def _trace(model: torch.nn.Module, channels: int, text_dim: int) -> Any:
    return memory.trace_activations(model, batch=1, latent=(3, 8, 8), channels=channels, text_tokens=16,
                                    text_dim=text_dim, dtype=torch.float32)


@pytest.mark.parametrize(("name", "config", "channels", "text_dim"), CASES, ids=[c[0] for c in CASES])
def test_replayed_blocks_trace_like_every_block_run(name, config, channels, text_dim, monkeypatch) -> None:
    model = default_registry().build("model", name, config, meta=True)
    blocks = memory.block_modules(model)
    assert len(blocks) >= 28
    inside: list[int] = []  # a block that runs calls its first submodule; a replayed one does not
    for block in blocks:
        next(block.children()).register_forward_pre_hook(lambda *_: inside.append(1))
    replayed = _trace(model, channels, text_dim)
    ran = len(inside)
    monkeypatch.setattr(memory._BlockReplays, "wrap", lambda self, block, index, trace: block.forward)
    every = _trace(model, channels, text_dim)
    assert (replayed.outside, replayed.blocks, replayed.block_inputs, replayed.largest, replayed.attention) == \
        (every.outside, every.blocks, every.block_inputs, every.largest, every.attention)
    kinds = {memory._block_kind(block) for block in blocks}
    assert len(inside) - ran == len(blocks) and ran <= 2 * len(kinds) < len(blocks)
    assert all("forward" not in vars(block) for block in blocks)  # the class's forward is back


def test_a_block_kind_follows_plain_settings_and_parameters() -> None:
    model = default_registry().build("model", "opensora_v1_3", {"preset": "2B/122"}, meta=True)
    blocks = memory.block_modules(model)
    kinds = [memory._block_kind(block) for block in blocks]
    modes = [block.skiparse for block in blocks]
    assert len(set(kinds)) == len(set(modes)) > 1  # one kind per Skiparse mode, whatever the blocks' objects
    blocks[3].requires_grad_(False)
    assert memory._block_kind(blocks[3]) != kinds[3]


FAMILY_PRESETS = [("opensora_v1_3", "2B/122"), ("wan", "wan2.1-t2v-1.3b"), ("wan", "wan2.2-t2v-a14b"),
                  ("cogvideox", "cogvideox-5b"), ("ltx_video", "ltx-video-2b"), ("hunyuan_video", "hunyuan-video")]


@pytest.mark.parametrize(("name", "preset"), FAMILY_PRESETS, ids=[f"{n}-{p}" for n, p in FAMILY_PRESETS])
def test_every_family_names_its_repeated_blocks(name, preset) -> None:
    """FSDP shards, offload streams, the fp8 base casts and the memory plan counts the blocks that
    ``_no_split_modules`` names; a family whose diffusers class names none (LTX-Video) must name its own."""
    model = default_registry().build("model", name, {"preset": preset}, meta=True)
    blocks = memory.block_modules(model)
    layers = sum(getattr(t, "config", {}).get("num_layers", 0) + getattr(t, "config", {}).get("num_single_layers", 0)
                 for t in [getattr(model, n) for n in getattr(model, "transformer_names", ())]) or \
        model.config.num_layers
    assert len([b for b in blocks if "Block" in type(b).__name__]) == layers


def test_deepspeed_loading_peaks_by_stage_and_weights(tmp_path) -> None:
    """ZeRO-2 (or weights the lean path does not take) gets the whole float32 model on each device before the engine
    partitions it; ZeRO-3 from safetensors partitions block by block as it reads: this process's partitions plus
    one float32 block. Other strategies have no loading peak of their own."""
    from types import SimpleNamespace

    from safetensors.torch import save_file

    from osctl.train.memory import deepspeed_loading_peak

    class Block(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.proj = torch.nn.Linear(32, 32)

    class Net(torch.nn.Module):
        _no_split_modules = ["Block"]

        def __init__(self) -> None:
            super().__init__()
            self.blocks = torch.nn.ModuleList(Block() for _ in range(4))
            self.head = torch.nn.Linear(32, 2)

    model = Net()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp_path / "w.safetensors")
    whole, block = sum(p.numel() * 4 for p in model.parameters()), (32 * 32 + 32) * 4

    def recipe(stage: int, pretrained: str | None) -> SimpleNamespace:
        return SimpleNamespace(train=SimpleNamespace(pretrained=pretrained, offload=None),
                               parallel=SimpleNamespace(zero_stage=stage), model=SimpleNamespace(options={}))

    lean = str(tmp_path / "w.safetensors")
    peak = lambda stage, weights, world=2, strategy="deepspeed": deepspeed_loading_peak(  # noqa: E731
        recipe(stage, weights), model, strategy=strategy, world_size=world, frozen_components=100)
    assert peak(2, lean)[0] == 100 + whole and "moves the whole float32 model" in peak(2, lean)[1]
    assert peak(3, None)[0] == 100 + whole  # a fresh preset: the engine partitions the built model
    assert peak(3, lean)[0] == 100 + -(-whole // 2) + block and "block by block" in peak(3, lean)[1]
    assert peak(3, lean, strategy="fsdp") == (0, "")


def test_a_loading_peak_above_every_step_decides_the_verdict() -> None:
    """DeepSpeed gets the whole float32 model on each device before it partitions it: when that is more than any
    step needs, the plan shows it, judges the launch by it and says what loads in less."""
    from types import SimpleNamespace

    from osctl.train.memory import GiB, MemoryPlan, StepMemory

    step = StepMemory(bucket=(9, 64, 64), tokens=100, weights={"float32": 2 * GiB})
    recipe = SimpleNamespace(train=SimpleNamespace(lora=None))
    plan = MemoryPlan(per_bucket=[step], device_bytes=3 * GiB, device_load_peak=5 * GiB,
                      device_load_note="DeepSpeed moves the whole float32 model to each device")
    lines = dict(plan.lines(recipe))
    assert plan.peak == 5 * GiB and not plan.fits()
    assert lines["device memory while loading"].startswith("5.00 GB (DeepSpeed moves the whole float32 model")
    assert lines["memory verdict"].startswith("does not fit: loading needs 5.00 GB per process (DeepSpeed moves")
    assert "parallel.strategy: fsdp" in lines["memory verdict"] and "parallel.zero_stage: 3" in lines["memory verdict"]
    roomy = MemoryPlan(per_bucket=[step], device_bytes=6 * GiB, device_load_peak=5 * GiB)
    assert roomy.fits() and dict(roomy.lines(recipe))["memory verdict"] == "fits in 6.00 GB (1.00 GB to spare)"
    below = MemoryPlan(per_bucket=[step], device_bytes=3 * GiB, device_load_peak=1 * GiB)
    assert below.fits() and "device memory while loading" not in dict(below.lines(recipe))


def test_offload_loading_holds_the_offloaded_blocks_frozen_weights_and_a_chunk(tmp_path) -> None:
    """``train.offload`` loading lean on a GPU: host RAM while loading is the offloaded blocks' frozen weights (in
    ``train.base_dtype``: they are read into host memory, where they stay) plus the larger of a chunk and a block;
    nothing more with no block offloaded, and the whole model where the run loads on the CPU."""
    from types import SimpleNamespace

    from safetensors.torch import save_file

    from osctl.train.memory import host_loading

    class Block(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.proj = torch.nn.Linear(16, 16)
            self.norm = torch.nn.LayerNorm(16)

    class Net(torch.nn.Module):
        _no_split_modules = ["Block"]

        def __init__(self) -> None:
            super().__init__()
            self.embed = torch.nn.Linear(8, 16)
            self.blocks = torch.nn.ModuleList(Block() for _ in range(4))

    model = Net()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp_path / "w.safetensors")
    model.requires_grad_(False)
    model.embed.requires_grad_(True)  # stands in for the adapter: trainable, stays on the device
    chunk = (tmp_path / "w.safetensors").stat().st_size  # a small file: the chunk is all of it
    train = SimpleNamespace(pretrained=str(tmp_path / "w.safetensors"), lora=SimpleNamespace(rank=4),
                            base_dtype="bf16", offload=SimpleNamespace(blocks="auto"))
    recipe = SimpleNamespace(train=train, model=SimpleNamespace(options={}))
    per_block = 16 * 16 * 2 + 3 * 16 * 4  # the linear's weight in bf16; its bias and the norm's two in float32
    peak, note = host_loading(recipe, model, strategy="single", offload_blocks=3)
    assert peak == 3 * per_block + chunk
    assert note.startswith("3 offloaded blocks' frozen weights read into host memory") and " with base_dtype bf16;" in note
    assert host_loading(recipe, model, strategy="ddp", offload_blocks=3)[0] == peak
    assert host_loading(recipe, model, strategy="single", offload_blocks=0)[0] == chunk  # all to the device
    whole = sum(p.numel() * 4 for p in model.parameters()) - 4 * 16 * 16 * 2  # block linears' weights in bf16
    assert host_loading(recipe, model, strategy="single", device_type="cpu", offload_blocks=3)[0] == whole + chunk
