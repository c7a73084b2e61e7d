"""``train.offload`` before the strategy moves the model: one count decides which blocks stay in host memory, the
offloader keeps their weights in one exact-size host buffer per block, and the strategy's move then takes only the
rest. On a CPU box the device and the host are one memory, so the strategy's move is watched instead
(:class:`tests.move_helpers.ParameterMoves`): it must see each offloaded weight only as an empty placeholder."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from osctl.errors import ConfigError
from osctl.train.frozen_base import STORAGE_DTYPES, store_frozen_base
from osctl.train.offload import offload_blocks, offload_count, offloaded_keys
from osctl_builtin.strategies.torch_native import SingleStrategy
from tests.move_helpers import ParameterMoves

CPU = torch.device("cpu")


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(16, 16)
        self.norm = nn.LayerNorm(16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x + self.proj(x))


class Net(nn.Module):
    """Four repeated blocks (named by ``_no_split_modules``, as the families do) between two linears."""

    _no_split_modules = ["Block"]

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(8, 16)
        self.blocks = nn.ModuleList(Block() for _ in range(4))
        self.head = nn.Linear(16, 8)


def lora_like(base_dtype: str) -> Net:
    """A frozen base (block linears stored in ``base_dtype``) with a trainable head standing in for the adapter."""
    torch.manual_seed(0)
    model = Net()
    model.requires_grad_(False)
    model.head.requires_grad_(True)
    store_frozen_base(model, base_dtype, strategy="single")
    return model


def test_the_offloaded_keys_are_every_parameter_of_the_last_blocks():
    model = Net()
    assert offloaded_keys(model, 2) == {f"blocks.{i}.{name}" for i in (2, 3)
                                        for name in ("proj.weight", "proj.bias", "norm.weight", "norm.bias")}
    assert offloaded_keys(model, 0) == set()
    with pytest.raises(ConfigError, match="more than the model's 4 blocks; use at most 4"):
        offloaded_keys(model, 5)
    with pytest.raises(ConfigError, match="names no block classes"):
        offloaded_keys(nn.Sequential(nn.Linear(2, 2)), 1)


def test_the_count_is_decided_once_and_refuses_other_strategies():
    auto = SimpleNamespace(blocks="auto")
    assert offload_count(None, strategy="fsdp", auto_blocks=3) == 0  # no train.offload
    assert offload_count(SimpleNamespace(blocks=2), strategy="ddp", auto_blocks=3) == 2
    assert offload_count(auto, strategy="single", auto_blocks=3) == 3  # the memory plan's count
    assert offload_count(auto, strategy="single", auto_blocks=None) == 0  # no plan ran (device memory unknown)
    for strategy in ("fsdp", "deepspeed"):
        with pytest.raises(ConfigError, match=f"single or ddp strategy; the {strategy} strategy"):
            offload_count(SimpleNamespace(blocks=0), strategy=strategy, auto_blocks=None)


@pytest.mark.parametrize("base_dtype", ["fp32", "bf16"])
def test_the_strategy_moves_only_what_offload_leaves_on_the_device(base_dtype):
    """Offloaded before ``prepare``: the strategy's move sees each offloaded weight only as an empty placeholder
    (never its weights), in its home's dtype; each block's homes are views of one host buffer of exactly their
    size holding their values; copying a block in gives the home's dtype and shape."""
    model = lora_like(base_dtype)
    values = {name: p.detach().clone() for name, p in model.named_parameters()}
    held = {name: p.data for name, p in model.named_parameters()}  # keeps the storages alive: pointers stay unique
    offloaded = offloaded_keys(model, 2)
    note = offload_blocks(model, 2, device=CPU)
    assert note.startswith("offload: the frozen weights of 2/4 blocks")
    params = dict(model.named_parameters())
    strategy = SingleStrategy(mixed_precision="fp32", device=CPU)
    with ParameterMoves() as moves:
        strategy.prepare(model, optimizer_factory=lambda ps: torch.optim.AdamW([p for p in ps if p.requires_grad]),
                         lr_scheduler_factory=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0))
    moved = moves.sizes_moved([params[name] for name in offloaded])
    assert len(moved) == len(offloaded) == 8 and set(moved) == {0}  # Module.to took each, empty
    offloader = model._osctl_offloader
    buffers = []
    for block in offloader.blocks:  # one page-aligned buffer per block, of its weights' aligned sizes
        assert {h.untyped_storage().data_ptr() for h in block.homes} == {block.slab.buffer.untyped_storage().data_ptr()}
        sizes = sum(-(-h.numel() * h.element_size() // 256) * 256 for h in block.homes)
        assert block.slab.buffer.numel() == -(-sizes // 4096) * 4096 and block.slab.buffer.data_ptr() % 4096 == 0
        assert not block.slab.pinned  # page-locked only for a GPU
        buffers.append(block.slab.buffer.untyped_storage().data_ptr())
    assert len(set(buffers)) == 2
    assert not {b for b in buffers} & {held[name].untyped_storage().data_ptr() for name in offloaded}
    state = model.state_dict()  # shows each placeholder's home
    for name, param in model.named_parameters():
        if name in offloaded:
            assert param.numel() == 0 and param.dtype == state[name].dtype == values[name].dtype, name
            assert torch.equal(state[name], values[name]), name
        else:
            assert torch.equal(param.float(), values[name].float()), name
            assert param.dtype == (values[name].dtype if not param.requires_grad else torch.float32), name
    if base_dtype != "fp32":
        assert state["blocks.3.proj.weight"].dtype == STORAGE_DTYPES[base_dtype]
    offloader.onload(1)
    for param, home in zip(offloader.blocks[1].params, offloader.blocks[1].homes, strict=True):
        assert param.dtype == home.dtype and torch.equal(param, home)
        assert param.untyped_storage().data_ptr() != home.untyped_storage().data_ptr()  # a copy in, as on a GPU
