"""Real checkpoints for the ``osctl ckpt`` tests: a tiny training run, DeepSpeed ZeRO and DCP folders.

The training run is made once per test session (about 5 s) and shared read-only; tests that damage
a checkpoint copy it first. DeepSpeed runs in a subprocess (it initialises a process group) with its
shared-memory op disabled so nothing is compiled.
"""

from __future__ import annotations

import os
import pickle
import shutil
import socket
import subprocess
import sys
import textwrap
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent


@dataclass
class TrainedRun:
    """A finished tiny training run: its checkpoint folder and the in-memory weights at that step."""

    checkpoint: Path
    model: dict[str, torch.Tensor]  # the training model's state dict when the checkpoint was written
    ema: dict[str, torch.Tensor]  # the EMA shadow of every trainable parameter at that moment


_CACHE: dict[str, Any] = {}


def trained_run(tmp_path_factory: pytest.TempPathFactory) -> TrainedRun:
    """Train the tiny recipe for 2 steps (single strategy) once per session; never modify the result."""
    if "run" in _CACHE:
        return _CACHE["run"]
    import osctl.train.loop as loop
    from osctl.plugin_manager import default_registry
    from osctl.recipe.load import load_recipe
    from osctl.recipe.validate import check_recipe
    from osctl.train.run import TrainOptions, run_training
    from tests.train_helpers import SyntheticClips, write_tiny_recipe

    tmp = tmp_path_factory.mktemp("ckpt_trained")
    recipe = write_tiny_recipe(tmp, tmp / "out", tmp / "cache")
    registry = default_registry()
    checked = check_recipe(load_recipe(recipe, ["train.max_steps=2", "train.checkpointing_steps=2"]), registry)
    text_encoder = registry.build("text_encoder", "tiny_t5", checked.components["text_encoder"])
    captured: dict[int, tuple[dict, dict]] = {}
    original = loop.save_checkpoint

    def spy(parts: Any, epoch_info: Any) -> Any:
        names = [name for name, _ in parts.strategy.local_parameters()]
        model = {k: v.detach().clone() for k, v in parts.strategy.module.state_dict().items()}
        ema = {n: s.detach().clone() for n, s in zip(names, parts.ema.shadow, strict=True)}
        captured[parts.state.step] = (model, ema)
        return original(parts, epoch_info)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(loop, "save_checkpoint", spy)
        run_training(checked, registry, TrainOptions(data_source=SyntheticClips(text_encoder.tokenize)))
    model, ema = captured[2]
    _CACHE["run"] = TrainedRun(tmp / "out" / "checkpoint-2", model, ema)
    return _CACHE["run"]


def copy_tree(src: Path, dst: Path) -> Path:
    """A private copy of a fixture folder that a test may damage."""
    shutil.copytree(src, dst)
    return dst


def listing(folder: Path) -> set[str]:
    """Every path below ``folder`` (files and folders, hidden ones included), relative."""
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*")}


class Evil:
    """Pickles as a call to ``os.system``: loading it with plain pickle would create ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


def write_malicious_pt(path: Path, marker: Path, *, legacy: bool = False) -> Path:
    """A ``.pt`` that holds real tensors plus an object whose unpickling runs ``touch marker``."""
    payload = {"state_dict": {"w": torch.ones(2, 2)}, "hook": Evil(marker)}
    if legacy:
        with path.open("wb") as handle:
            pickle.dump(payload, handle)
    else:
        torch.save(payload, path)
    return path


def make_dcp(folder: Path, model: dict[str, torch.Tensor], *, ema: dict[str, torch.Tensor] | None = None) -> Path:
    """A torch.distributed.checkpoint folder (one process) holding ``model`` + AdamW state (+ ``ema``)."""
    import torch.distributed.checkpoint as dcp

    params = {k: v.clone().requires_grad_(True) for k, v in model.items() if v.is_floating_point()}
    optimizer = torch.optim.AdamW(params.values(), lr=1e-3)
    sum(p.sum() for p in params.values()).backward()
    optimizer.step()
    names = list(params)
    optim_state = {"state": {names[i]: s for i, s in optimizer.state_dict()["state"].items()},
                   "param_groups": [{k: v for k, v in g.items() if k != "params"} | {"params": names}
                                    for g in optimizer.state_dict()["param_groups"]]}
    state: dict[str, Any] = {"model": {k: v.clone() for k, v in model.items()}, "optim": optim_state}
    if ema is not None:
        state["ema"] = {k: v.clone() for k, v in ema.items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "assuming the intent is to save in a single process"
        dcp.save(state, checkpoint_id=str(folder))
    return folder


_DEEPSPEED_SCRIPT = textwrap.dedent('''
    import os, sys, json
    import torch
    import deepspeed
    sys.modules["deepspeed.comm.torch"].build_shm_op = lambda: None  # no JIT-compiled shm op in one process
    out = sys.argv[1]

    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.proj_in = torch.nn.Linear(8, 16)
            self.blocks = torch.nn.ModuleList([torch.nn.Linear(16, 16) for _ in range(2)])
            self.proj_out = torch.nn.Linear(16, 4)
            self.register_buffer("scale", torch.arange(3.0))

        def forward(self, x):
            x = self.proj_in(x)
            for block in self.blocks:
                x = torch.nn.functional.gelu(block(x))
            return self.proj_out(x) * self.scale.sum()

    for stage, tag in ((2, None), (3, None), (2, "pytorch_model")):
        torch.manual_seed(stage)
        model = Tiny()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
        config = {"train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 1,
                  "zero_optimization": {"stage": stage}, "steps_per_print": 10**9}
        engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=config)
        for _ in range(2):
            loss = engine(torch.randn(2, 8)).pow(2).mean()
            engine.backward(loss)
            engine.step()
        folder = os.path.join(out, f"zero{stage}" if tag is None else "osp")
        engine.save_checkpoint(folder, tag=tag)
        with deepspeed.zero.GatheredParameters(list(engine.module.parameters()), modifier_rank=None):
            expected = {k: v.detach().clone().float() for k, v in engine.module.state_dict().items()}
        torch.save(expected, os.path.join(folder, "expected.pt"))
    print("saved")
''')


def make_deepspeed_checkpoints(folder: Path) -> Path:
    """ZeRO-2 (``zero2/``) and ZeRO-3 (``zero3/``) folders plus an accelerate-style ``osp/`` one (tag
    ``pytorch_model``), each with ``expected.pt``: the gathered weights at save time. About 6 s."""
    if "deepspeed" in _CACHE:
        return _CACHE["deepspeed"]
    folder.mkdir(parents=True, exist_ok=True)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0",
           "LOCAL_WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
           "TORCH_EXTENSIONS_DIR": str(folder / "torch_extensions")}
    script = folder / "save_deepspeed.py"
    script.write_text(_DEEPSPEED_SCRIPT)
    result = subprocess.run([sys.executable, str(script), str(folder)], env=env, capture_output=True, text=True,
                            timeout=300, cwd=folder)
    assert result.returncode == 0 and "saved" in result.stdout, result.stdout[-3000:] + result.stderr[-3000:]
    _CACHE["deepspeed"] = folder
    return folder


_STRATEGY_WORKER = textwrap.dedent('''
    import os, sys
    from pathlib import Path
    sys.path.insert(0, sys.argv[1])
    import torch
    torch.set_num_threads(1)
    if "deepspeed" in sys.argv[3:]:
        import deepspeed  # noqa: F401
        sys.modules["deepspeed.comm.torch"].build_shm_op = lambda: None  # nothing compiled on CPU
    from osctl.plugin_manager import default_registry
    from osctl.recipe.load import load_recipe
    from osctl.recipe.validate import check_recipe
    from osctl.train.run import TrainOptions, run_training
    from tests.train_helpers import SyntheticClips, write_tiny_recipe

    root = Path(sys.argv[2])
    for strategy in sys.argv[3:]:
        folder = root / strategy
        folder.mkdir(parents=True, exist_ok=True)
        recipe = write_tiny_recipe(folder, folder / "out", root / "cache")
        registry = default_registry()
        sets = [f"parallel.strategy={strategy}", "train.max_steps=2", "train.checkpointing_steps=2"]
        checked = check_recipe(load_recipe(recipe, sets), registry)
        text_encoder = registry.build("text_encoder", "tiny_t5", checked.components["text_encoder"])
        run_training(checked, registry, TrainOptions(data_source=SyntheticClips(text_encoder.tokenize)))
    from osctl.parallel import dist
    if hasattr(dist, "shutdown"):
        dist.shutdown(0)
''')


def make_strategy_checkpoints(folder: Path, strategies: list[str], nproc: int = 2) -> dict[str, Path]:
    """``osctl train`` checkpoints of the tiny recipe under each strategy, ``nproc`` processes (torchrun)."""
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / "worker.py"
    script.write_text(_STRATEGY_WORKER)
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "TORCH_EXTENSIONS_DIR": str(folder / "torch_extensions"),
           "OMP_NUM_THREADS": "1"}
    for strategy in strategies:  # one launch per strategy: runs stay independent
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
                   str(script), str(REPO), str(folder), strategy]
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, cwd=folder)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return {name: folder / name / "out" / "checkpoint-2" for name in strategies}
