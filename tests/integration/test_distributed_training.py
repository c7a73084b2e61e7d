"""Distributed training on CPU with gloo: every strategy equals one process, resumes exactly, and
failures end every rank instead of hanging.

Each test starts ``train_worker.py`` under torchrun (2 processes, one thread each); every rank runs
the test's jobs in order and rank 0 saves the results. References run in this process.

Why the comparisons are exact enough: a 2-rank data-parallel run and one process with the doubled
batch see the same clips (the synthetic stream cuts each global batch into consecutive per-rank
parts), and ``per_sample`` draws give each sample the same timestep and noise in every layout (see
the worker). Losses then differ only by summation order (< 1e-7), with gradient accumulation (2
micro-steps) exercising each strategy's no-sync path. The comparisons use an Adam
epsilon of 1e-6 instead of the reference's 1e-15: with 1e-15, parameters whose true gradient is
zero (attention key biases: softmax ignores them) take full-size Adam steps driven by rounding noise,
so their weights depend on the reduction order even though no loss does.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from tests.integration.train_worker import run_job

pytestmark = [pytest.mark.slow, pytest.mark.multiprocess]

WORKER = Path(__file__).with_name("train_worker.py")
REPO = Path(__file__).resolve().parents[2]
WEIGHTS = "diffusion_pytorch_model.safetensors"
COMPARABLE = ["train.adam_epsilon=1e-6", "train.max_steps=4", "train.checkpointing_steps=2",
              "train.gradient_accumulation_steps=2"]
VALIDATION = ["train.validation_steps=4", 'train.validation_prompts=["a red ball", "a blue cube", "a green cone"]']
STRATEGIES = {
    "ddp": ["parallel.strategy=ddp"],
    "fsdp": ["parallel.strategy=fsdp"],
    "zero2": ["parallel.strategy=deepspeed", "parallel.zero_stage=2"],
    # every parameter partitioned (the default keeps parameters under 1e5 elements whole)
    "zero3": ["parallel.strategy=deepspeed", "parallel.zero_stage=3",
              'parallel.deepspeed_config={"zero_optimization": {"stage3_param_persistence_threshold": 0}}'],
}
SP = ["parallel.sp_size=2", "parallel.train_sp_batch_size=2"]


def launch(folder: Path, jobs: list[dict[str, Any]], nproc: int = 2, timeout: float = 300,
           expect_success: bool = True) -> tuple[subprocess.CompletedProcess[str], dict[str, Any] | None]:
    """Run the jobs under torchrun; returns the process and rank 0's results."""
    folder.mkdir(parents=True, exist_ok=True)
    spec = folder / "spec.json"
    spec.write_text(json.dumps({"jobs": jobs}))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "plugins")])}  # this checkout's plugins too
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
               "--monitor-interval", "0.5", str(WORKER), str(spec)]
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout, cwd=REPO)
    if expect_success:
        assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-8000:]
        return proc, torch.load(folder / "results.pt", weights_only=True)
    return proc, None


def weights(run: dict[str, Any], step: int, kind: str = "model") -> dict[str, torch.Tensor]:
    return load_file(Path(run["out"]) / f"checkpoint-{step}" / kind / WEIGHTS)


def assert_close_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float) -> None:
    assert a.keys() == b.keys()
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst <= atol, worst


def assert_close_losses(a: list[float], b: list[float], atol: float = 1e-5) -> None:
    assert len(a) == len(b) and a, (a, b)
    assert max(abs(x - y) for x, y in zip(a, b, strict=True)) <= atol, (a, b)


@pytest.fixture(scope="module")
def doubled_batch(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One process, batch 4 = the union of two ranks' batches of 2, per-sample draws."""
    root = tmp_path_factory.mktemp("single")
    return run_job({"kind": "train", "name": "single", "sets": COMPARABLE, "batch": 4, "draws": "per_sample"}, root)


@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_strategy_matches_one_process_and_resumes_exactly(strategy, tmp_path, doubled_batch):
    sets = STRATEGIES[strategy] + COMPARABLE
    jobs = [
        {"kind": "train", "name": "straight", "sets": [*sets, *VALIDATION], "batch": 2, "draws": "per_sample"},
        {"kind": "train", "name": "first", "sets": [*sets, "train.max_steps=2"], "batch": 2, "draws": "per_sample"},
        {"kind": "train", "name": "resumed", "dir": "first", "sets": [*sets, "train.resume_from_checkpoint=latest"],
         "batch": 2, "draws": "per_sample"},
    ]
    _, results = launch(tmp_path, jobs)
    straight, first, resumed = results["straight"], results["first"], results["resumed"]

    # 2 ranks x batch 2 == 1 process x batch 4, losses and consolidated (EMA) weights
    assert_close_losses(straight["losses"], doubled_batch["losses"])
    for kind in ("model", "model_ema"):
        assert_close_weights(weights(straight, 4, kind), weights(doubled_batch, 4, kind), atol=1e-5)

    # 2 steps + resume + 2 steps == 4 steps, bit for bit
    assert first["losses"] + resumed["losses"] == straight["losses"]
    assert resumed["grad_norms"] == straight["grad_norms"][2:]
    for kind in ("model", "model_ema"):
        assert_close_weights(weights(resumed, 4, kind), weights(straight, 4, kind), atol=0.0)

    # the strategy's own state layout, and validation videos spread over both ranks
    state = Path(straight["out"]) / "checkpoint-4" / "training_state"
    expected = {
        "ddp": {"optimizer.pt", "lr_scheduler.pt", "ema-rank-0.pt"},
        "fsdp": {"dcp", "lr_scheduler.pt"},  # the EMA shards live in dcp/ so they re-shard with the weights
        "zero2": {"deepspeed", "ema-rank-0.pt"},
        "zero3": {"deepspeed", "ema-rank-0.pt", "ema-rank-1.pt"},  # each rank's EMA of its partition
    }[strategy]
    assert {p.name for p in state.iterdir()} == expected
    for kind in ("model", "model_ema"):  # loadable by the model's own class, whatever the engine wrapped it in
        config = json.loads((Path(straight["out"]) / "checkpoint-4" / kind / "config.json").read_text())
        assert config["_class_name"] == "OpenSoraT2V_v1_3"
    for kind in ("model", "model_ema"):
        videos = sorted(p.name for p in (Path(straight["out"]) / "validation" / "step-4" / kind).iterdir())
        assert videos == ["0000-a-red-ball.mp4", "0001-a-blue-cube.mp4", "0002-a-green-cone.mp4"]


def launch_sharded_loading(folder: Path, extra: list[str]) -> dict[str, Any]:
    """Runs from train.pretrained safetensors (a one-step seed run's checkpoint) with ``extra`` settings (the
    strategy: fsdp or ZeRO-3, and more): ``sharded`` (built on the meta device, each rank filling only its shards)
    and ``old`` (loaded whole, then sharded), 4 steps each, and ``first`` (2 steps) ``resumed`` to 4. Checks what every such comparison
    needs (the loading notes; the same losses and gradient norms; the resumed run continues exactly) and returns
    rank 0's results for the test's own checks of what was saved."""
    steps = ["train.checkpointing_steps=2", "train.gradient_accumulation_steps=2"]
    pretrained = f"train.pretrained={folder / 'seed' / 'out' / 'checkpoint-1' / 'model'}"
    sets = [*extra, *steps, pretrained]
    jobs = [
        {"kind": "train", "name": "seed", "sets": [*STRATEGIES["fsdp"], "train.max_steps=1",
                                                   "train.checkpointing_steps=1"], "batch": 2},
        {"kind": "train", "name": "sharded", "sets": [*sets, "train.max_steps=4"], "batch": 2},
        {"kind": "train", "name": "old", "sets": [*sets, "train.max_steps=4"], "batch": 2, "old_load": True},
        {"kind": "train", "name": "first", "sets": [*sets, "train.max_steps=2"], "batch": 2},
        {"kind": "train", "name": "resumed", "dir": "first", "batch": 2,
         "sets": [*sets, "train.max_steps=4", "train.resume_from_checkpoint=latest"]},
    ]
    _, results = launch(folder, jobs)
    sharded, old = results["sharded"], results["old"]
    assert any("loads only its own shards" in note for note in sharded["notes"]), sharded["notes"]
    assert not any("loads only its own shards" in note for note in old["notes"]), old["notes"]
    assert any("loads only its own shards" in note for note in results["resumed"]["notes"])
    assert sharded["losses"] == old["losses"] and sharded["grad_norms"] == old["grad_norms"]
    assert results["first"]["losses"] + results["resumed"]["losses"] == sharded["losses"]
    return results


def test_fsdp_sharded_loading_equals_the_host_copy_and_resumes(tmp_path):
    """An fsdp run from train.pretrained safetensors, sharded on the meta device with each rank filling only its
    shards, trains bit for bit like the same run loaded whole on the CPU and then sharded; and it resumes exactly
    (the resumed run loads checkpoint-2/model the same sharded way, then its DCP state)."""
    results = launch_sharded_loading(tmp_path, STRATEGIES["fsdp"])
    for kind in ("model", "model_ema"):
        assert_close_weights(weights(results["sharded"], 4, kind), weights(results["old"], 4, kind), atol=0.0)
    assert_close_weights(weights(results["resumed"], 4), weights(results["sharded"], 4), atol=0.0)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_zero3_partitioned_loading_equals_the_whole_model_and_resumes(tmp_path, precision):
    """ZeRO-3 from train.pretrained safetensors: the model built on the meta device and partitioned block by block
    as each rank reads it (cast to the compute dtype first, as the engine casts a whole model) trains bit for bit
    like the engine partitioning the whole model itself, and resumes exactly."""
    results = launch_sharded_loading(tmp_path, [*STRATEGIES["zero3"], f"train.mixed_precision={precision}"])
    for kind in ("model", "model_ema"):
        assert_close_weights(weights(results["sharded"], 4, kind), weights(results["old"], 4, kind), atol=0.0)
    assert_close_weights(weights(results["resumed"], 4), weights(results["sharded"], 4), atol=0.0)


def test_sequence_parallel_equals_one_process(tmp_path):
    """sp_size=2 on 2 ranks: the training step's output and reduced gradients, and training losses,
    equal one process on the same samples (the SP group shares timesteps and noise natively)."""
    ddp, steps = STRATEGIES["ddp"], ["train.max_steps=4", "train.checkpointing_steps=2"]
    masks = {"varied": [0, 1, 2], "second_half_padding": [2]}  # the latter leaves rank 1 no valid frame
    grads = [{"kind": "grads", "name": f"grads-{name}", "sets": [*SP, *ddp], "batch": 2, "invalid_tail": tail}
             for name, tail in masks.items()]
    trains = {f"train-{name}": [*STRATEGIES[name], *steps] for name in ("ddp", "fsdp", "zero3")}
    trains["train-flow"] = [*ddp, *steps, "diffusion.objective=flow_matching",
                           "sample.sample_method=FlowMatchEulerDiscrete"]  # per-sample sigmas follow the slices
    trains["images"] = [*ddp, "train.max_steps=3", "data.num_frames=1", "sample.num_frames=1"]  # T=1: SP off
    resumed = [{"kind": "train", "name": "first", "sets": [*SP, *ddp, *steps, "train.max_steps=2"], "batch": 2},
               {"kind": "train", "name": "resumed", "dir": "first", "batch": 2,
                "sets": [*SP, *ddp, *steps, "train.resume_from_checkpoint=latest"]}]
    jobs = [*grads, *({"kind": "train", "name": n, "sets": [*SP, *sets], "batch": 2} for n, sets in trains.items()),
            *resumed]
    _, results = launch(tmp_path / "sp", jobs)

    for job in grads:
        one = run_job({**job, "sets": []}, tmp_path / "one")
        sp = results[job["name"]]
        assert abs(sp["loss"] - one["loss"]) <= 1e-6
        assert (sp["output"] - one["output"]).abs().max().item() <= 1e-5
        assert sp["grads"].keys() == one["grads"].keys()
        for name, grad in one["grads"].items():
            assert (sp["grads"][name] - grad).abs().max().item() <= 1e-5, name
    references: dict[tuple[str, ...], Any] = {}  # one process, the same recipe without the parallel keys
    for name, sets in trains.items():
        key = tuple(x for x in sets if not x.startswith("parallel."))
        if key not in references:
            references[key] = run_job({"kind": "train", "name": f"one-{len(references)}", "sets": list(key),
                                       "batch": 2}, tmp_path / "one")
        assert_close_losses(results[name]["losses"], references[key]["losses"])
    assert results["first"]["losses"] + results["resumed"]["losses"] == results["train-ddp"]["losses"]


def test_sequence_and_data_parallel_together(tmp_path, doubled_batch):
    """4 ranks = 2 data-parallel replicas x sp_size 2 equal one process with both replicas' samples."""
    job = {"kind": "train", "name": "dp2-sp2", "sets": [*SP, "parallel.strategy=ddp", *COMPARABLE], "batch": 2,
           "draws": "per_sample"}
    _, results = launch(tmp_path, [job], nproc=4)
    assert_close_losses(results["dp2-sp2"]["losses"], doubled_batch["losses"])


def test_bf16_training_stays_close_to_fp32(tmp_path):
    """bf16 under every strategy (autocast for DDP, FSDP's mixed-precision policy, DeepSpeed's bf16
    weights with fp32 master copies) follows the fp32 run closely."""
    steps = ["train.max_steps=3", "train.checkpointing_steps=3"]
    jobs = [{"kind": "train", "name": name, "sets": [*sets, *steps, "train.mixed_precision=bf16"], "batch": 2}
            for name, sets in STRATEGIES.items()]
    jobs.append({"kind": "train", "name": "fp32", "sets": [*STRATEGIES["ddp"], *steps], "batch": 2})
    _, results = launch(tmp_path, jobs)
    for name in STRATEGIES:
        assert_close_losses(results[name]["losses"], results["fp32"]["losses"], atol=5e-3)


def test_resume_on_another_world_size(tmp_path):
    """FSDP re-shards its DCP state (weights, optimizer, EMA) onto one process; DeepSpeed refuses clearly."""
    steps = ["train.max_steps=2", "train.checkpointing_steps=2"]
    two = [{"kind": "train", "name": "fsdp", "sets": [*STRATEGIES["fsdp"], *steps], "batch": 2},
           {"kind": "train", "name": "zero2", "sets": [*STRATEGIES["zero2"], *steps], "batch": 2}]
    launch(tmp_path, two)
    saved = tmp_path / "fsdp" / "out" / "checkpoint-2"
    before = {kind: load_file(saved / kind / WEIGHTS) for kind in ("model", "model_ema")}
    resume = "train.resume_from_checkpoint=latest"
    one = [
        # resuming at the step it was saved re-exports the loaded (re-sharded) state as checkpoint-2
        {"kind": "train", "name": "fsdp-same-step", "dir": "fsdp", "sets": [*STRATEGIES["fsdp"], *steps, resume]},
        {"kind": "train", "name": "fsdp-on", "dir": "fsdp", "sets": [*STRATEGIES["fsdp"], "train.max_steps=3", resume]},
        {"kind": "train", "name": "zero2", "dir": "zero2", "sets": [*STRATEGIES["zero2"], *steps, resume],
         "expect_error": "was saved by 2 processes and this run has 1"},
    ]
    _, results = launch(tmp_path, one, nproc=1)
    for kind, tensors in before.items():
        assert_close_weights(load_file(saved / kind / WEIGHTS), tensors, atol=0.0)
    assert results["fsdp-on"]["final_step"] == 3 and len(results["fsdp-on"]["losses"]) == 1
    assert "the deepspeed strategy cannot re-shard its state" in results["zero2"]["error"]


@pytest.mark.skipif(shutil.which("c++") is None, reason="DeepSpeed's CPU Adam needs a C++ compiler")
def test_deepspeed_cpu_offload(tmp_path, monkeypatch):
    """ZeRO-2 with optimizer offload and ZeRO-3 with optimizer and parameter offload train like ZeRO-2.

    Offload runs DeepSpeed's CPU Adam, compiled on first use (about a minute on 2 cores) and cached in
    the repository's ``.torch_extensions/`` (or ``$TORCH_EXTENSIONS_DIR``)."""
    steps = ["train.max_steps=2", "train.checkpointing_steps=2"]
    jobs = [{"kind": "train", "name": name, "sets": [*sets, *steps], "batch": 2} for name, sets in {
        "zero2": STRATEGIES["zero2"],
        "zero2-offload": [*STRATEGIES["zero2"], "parallel.offload_optimizer=true"],
        "zero3-offload": [*STRATEGIES["zero3"], "parallel.offload_optimizer=true", "parallel.offload_params=true"],
    }.items()]
    if "TORCH_EXTENSIONS_DIR" not in os.environ:
        monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(REPO / ".torch_extensions"))
    _, results = launch(tmp_path, jobs, timeout=900)
    for name in ("zero2-offload", "zero3-offload"):
        assert_close_losses(results[name]["losses"], results["zero2"]["losses"], atol=1e-6)


@pytest.mark.parametrize("mode", ["raise", "hang"])
def test_a_failing_rank_ends_every_rank(tmp_path, mode):
    """Rank 1 raises (or stops answering) at step 2: all ranks exit with rank 1's error, and nobody hangs
    (the launch's own timeout fails the test if a rank never ends)."""
    job = {"kind": "train", "name": "run", "batch": 2, "fail_rank": 1,
           "sets": ["parallel.strategy=ddp", "train.max_steps=6", "parallel.timeout_s=5"]}
    job["fail_at_step" if mode == "raise" else "hang_at_step"] = 2
    proc, _ = launch(tmp_path, [job], timeout=120, expect_success=False)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, output[-4000:]
    if mode == "raise":
        assert "rank 1: RuntimeError: deliberate failure on rank 1 at step 2" in output, output[-4000:]
    else:  # rank 0 waits in the step-2 collective until parallel.timeout_s, then fails
        assert "rank 0: " in output, output[-4000:]
