"""Sharded lean loading (``parallel.strategy: fsdp``): the model is sharded on the meta device and each rank fills
only its own shards from the files; every local shard must hold exactly its rows of the stored tensor."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

pytestmark = [pytest.mark.multiprocess]

REPO = Path(__file__).resolve().parents[3]

#: one rank: build empty, shard and fill through the fsdp strategy, then compare every local shard and buffer
#: with the rows torch.chunk gives this rank (FSDP2's dim-0 split: 5 rows -> 3 + 2, 1 row -> 1 + 0)
RANK_SCRIPT = """
import sys, torch, torch.distributed as dist
from pathlib import Path
from torch import nn
from safetensors.torch import load_file
from osctl.parallel.dist import shutdown
from osctl.train.lean_load import fill_shards, parameters_on_meta, plan_lean_load
from osctl_builtin.strategies.fsdp import FSDPStrategy

class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(3, 5)
        self.b = nn.Linear(5, 1)
        self.register_buffer("scale", torch.zeros(4))                              # persistent: from the file
        self.register_buffer("table", torch.arange(6.0) * 0.5, persistent=False)   # computed at build

class Model(nn.Module):
    _no_split_modules = ["Block"]
    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList([Block(), Block()])
        self.head = nn.Linear(1, 7)

dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
folder = Path(sys.argv[1])
full = load_file(folder / "w.safetensors")
with parameters_on_meta():
    model = Model()
plan = plan_lean_load(model, [(folder / "w.safetensors", "")], source="w")
assert plan is not None
strategy = FSDPStrategy(mixed_precision="fp32", device=torch.device("cpu"))
strategy.prepare_empty(model, lambda m: fill_shards(m, plan, chunk_bytes=1),
                       optimizer_factory=lambda params: torch.optim.SGD(params, lr=0.1),
                       lr_scheduler_factory=lambda optimizer: None)
for name, param in model.named_parameters():
    expected = full[name].chunk(world)[rank] if rank < len(full[name].chunk(world)) else full[name][:0]
    assert torch.equal(param.to_local(), expected), (rank, name)
    assert torch.equal(param.full_tensor(), full[name]), (rank, name)
for block in model.blocks:
    assert torch.equal(block.table, torch.arange(6.0) * 0.5)
assert torch.equal(model.blocks[1].scale, full["blocks.1.scale"])
assert all(state["params"] for state in strategy.optimizer.param_groups)
(folder / f"ok-{rank}").write_text("ok")
shutdown(0)  # barrier, destroy the group, flush, exit: gloo can abort at a plain interpreter exit
"""


def test_each_rank_fills_exactly_its_own_shards(tmp_path):
    torch.manual_seed(3)
    shapes = {"a.weight": (5, 3), "a.bias": (5,), "b.weight": (1, 5), "b.bias": (1,), "scale": (4,)}
    state = {f"blocks.{i}.{key}": torch.randn(shape) for i in range(2) for key, shape in shapes.items()}
    state |= {"head.weight": torch.randn(7, 1), "head.bias": torch.randn(7)}
    save_file(state, tmp_path / "w.safetensors")
    (tmp_path / "rank.py").write_text(RANK_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "plugins")])}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           str(tmp_path / "rank.py"), str(tmp_path)], env=env, capture_output=True, text=True,
                          timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    assert {p.name for p in tmp_path.glob("ok-*")} == {"ok-0", "ok-1"}


#: one rank: a 192 MiB model (48 blocks of one 1024x1024 linear) built empty, optionally given a LoRA adapter while
#: empty, sharded and filled 16 MiB at a time; writes peak-RANK: the resident memory above the start (VmHWM)
PEAK_SCRIPT = """
import sys, torch, torch.distributed as dist
from pathlib import Path
from torch import nn
from osctl.parallel.dist import shutdown
from osctl.train.lean_load import PendingFill, parameters_on_meta, plan_lean_load, state_slots
from osctl_builtin.strategies.fsdp import FSDPStrategy

def status(key):
    return int(next(line for line in open("/proc/self/status") if line.startswith(key)).split()[1]) * 1024

class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(1024, 1024)

class Model(nn.Module):
    _no_split_modules = ["Block"]
    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList([Block() for _ in range(48)])

dist.init_process_group("gloo")
folder, lora, zero3 = Path(sys.argv[1]), sys.argv[2] == "lora", sys.argv[2] == "zero3"
from torch.distributed.fsdp import fully_shard  # warm up: libraries and lazy imports are not the loading's memory
from osctl.train.frozen_base import float32_placeholders
from osctl.train.lora import AdapterSpec, add_adapter
warm = nn.Sequential(nn.Linear(8, 8))
add_adapter(warm, AdapterSpec(rank=2, alpha=2.0, target_modules=["0"], init="random"))
fully_shard(warm)
warm(torch.ones(2, 8)).sum().backward()
del warm
if zero3:  # DeepSpeed's own imports and set-up are not the loading's memory either
    import deepspeed
    from deepspeed.accelerator import get_accelerator
    from osctl_builtin.strategies.deepspeed_engine import skip_shm_comm_build
    skip_shm_comm_build()  # as the strategy does: no 30 s compile of an op training never uses
    deepspeed.comm.init_distributed(dist_backend=get_accelerator().communication_backend_name(), dist_init_required=False)
    import deepspeed.runtime.zero.partition_parameters
with open("/proc/self/clear_refs", "w") as handle:
    handle.write("5")
before = status("VmRSS")
with parameters_on_meta():
    model = Model()
plan = plan_lean_load(model, [(folder / "w.safetensors", "")], source="w")
slots = state_slots(model)
if lora:
    with float32_placeholders(model):
        add_adapter(model, AdapterSpec(rank=4, alpha=4.0, target_modules=["proj"], init="random"))
if zero3:
    from osctl.recipe.schema import ParallelSection, TrainSection
    from osctl_builtin.strategies.deepspeed_engine import DeepSpeedStrategy
    parallel = ParallelSection(strategy="deepspeed", zero_stage=3,
                               deepspeed_config={"zero_optimization": {"stage3_param_persistence_threshold": 0}})
    strategy = DeepSpeedStrategy(mixed_precision="fp32", device=torch.device("cpu"), parallel=parallel,
                                 train=TrainSection(output_dir=str(folder / "out"), mixed_precision="fp32",
                                                    train_batch_size=1))
    strategy._initialize = lambda *args: None  # the loading alone: the engine's fp32 optimizer copies come after
else:
    strategy = FSDPStrategy(mixed_precision="fp32", device=torch.device("cpu"))
strategy.prepare_empty(model, PendingFill(plan, slots, 16 * 2**20),
                       optimizer_factory=lambda params: torch.optim.SGD([p for p in params if p.requires_grad], lr=0.1),
                       lr_scheduler_factory=lambda optimizer: None)
(folder / f"peak-{dist.get_rank()}").write_text(str(status("VmHWM") - before))  # a file each: no interleaving
shutdown(0)
"""


@pytest.mark.parametrize("mode", ["full", "lora", "zero3"])
def test_each_rank_holds_its_shards_and_about_one_chunk_while_loading(tmp_path, mode):
    """Measured per process (CPU, 2 ranks): loading a 192 MiB model sharded, 16 MiB of the file at a time, peaks at
    this process's half of the model plus about a chunk, never the whole model (which the host-copy path held on
    every rank before sharding) — FSDP for full fine-tuning and for a LoRA base given its adapter while empty, and
    DeepSpeed ZeRO-3 partitioning block by block as it reads (before the engine is built)."""
    if not os.access("/proc/self/clear_refs", os.W_OK):
        pytest.skip("needs Linux's /proc/self/clear_refs to reset the peak-memory counter")
    torch.manual_seed(0)
    state = {f"blocks.{i}.proj.{kind}": torch.randn(1024, 1024) if kind == "weight" else torch.randn(1024)
             for i in range(48) for kind in ("weight", "bias")}
    save_file(state, tmp_path / "w.safetensors")
    model_bytes = sum(t.numel() * 4 for t in state.values())
    (tmp_path / "peak.py").write_text(PEAK_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MALLOC_MMAP_THRESHOLD_": "65536",
           "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "plugins")])}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           str(tmp_path / "peak.py"), str(tmp_path), mode], env=env, capture_output=True, text=True,
                          timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    peaks = {path.name.removeprefix("peak-"): path.read_text() for path in tmp_path.glob("peak-*")}
    assert set(peaks) == {"0", "1"}
    for rank, peak in peaks.items():
        assert int(peak) < model_bytes / 2 + 2 * 16 * 2**20 + 32 * 2**20, \
            f"rank {rank} peaked at {int(peak) / 2**20:.0f} MiB for a {model_bytes / 2**20:.0f} MiB model"
