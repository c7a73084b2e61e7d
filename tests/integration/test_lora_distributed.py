"""LoRA under every parallel strategy on CPU with gloo (2 processes): data-parallel ranks equal one process
with the doubled batch, sequence parallelism equals one process, FSDP2 and ZeRO-2 train the adapter alone
and resume exactly. Reuses the distributed-training harness (``train_worker.py``)."""

from __future__ import annotations

from pathlib import Path

import pytest
from safetensors.torch import load_file
from torch.distributed.checkpoint import FileSystemReader

from tests.integration.test_distributed_training import (
    COMPARABLE,
    SP,
    STRATEGIES,
    assert_close_losses,
    launch,
    launch_sharded_loading,
)
from tests.integration.train_worker import run_job

pytestmark = [pytest.mark.slow, pytest.mark.multiprocess]

LORA = ["train.lora={rank: 2, alpha: 4, init: random}"]  # random B: the adapter acts from the first step
ADAPTER = "pytorch_lora_weights.safetensors"


def adapter(run: dict, step: int, kind: str = "adapter") -> dict:
    return load_file(Path(run["out"]) / f"checkpoint-{step}" / kind / ADAPTER)


def assert_close(a: dict, b: dict, atol: float) -> None:
    assert a.keys() == b.keys() and a
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst <= atol, worst


def test_lora_under_data_and_sequence_parallelism(tmp_path):
    sets = [*LORA, *COMPARABLE]
    steps = ["train.max_steps=2", "train.checkpointing_steps=2"]
    jobs = [
        {"kind": "train", "name": "ddp", "sets": [*STRATEGIES["ddp"], *sets], "batch": 2, "draws": "per_sample"},
        {"kind": "train", "name": "sp", "sets": [*SP, *STRATEGIES["ddp"], *LORA, *steps], "batch": 2},
        {"kind": "train", "name": "fsdp", "sets": [*STRATEGIES["fsdp"], *sets], "batch": 2, "draws": "per_sample"},
        {"kind": "train", "name": "fsdp-first", "sets": [*STRATEGIES["fsdp"], *sets, "train.max_steps=2"],
         "batch": 2, "draws": "per_sample"},
        {"kind": "train", "name": "fsdp-resumed", "dir": "fsdp-first", "batch": 2, "draws": "per_sample",
         "sets": [*STRATEGIES["fsdp"], *sets, "train.resume_from_checkpoint=latest"]},
        {"kind": "train", "name": "zero2", "sets": [*STRATEGIES["zero2"], *sets], "batch": 2, "draws": "per_sample"},
    ]
    _, results = launch(tmp_path / "two", jobs)
    doubled = run_job({"kind": "train", "name": "doubled", "sets": sets, "batch": 4, "draws": "per_sample"},
                      tmp_path / "one")
    one_sp = run_job({"kind": "train", "name": "one-sp", "sets": [*LORA, *steps], "batch": 2}, tmp_path / "one")

    # DDP 2 ranks x batch 2 == 1 process x batch 4: losses and the adapter (and its EMA)
    for name in ("ddp", "fsdp", "zero2"):
        assert_close_losses(results[name]["losses"], doubled["losses"])
        for kind in ("adapter", "adapter_ema"):
            assert_close(adapter(results[name], 4, kind), adapter(doubled, 4, kind), atol=1e-5)
    # sequence parallelism (sp_size 2) == one process on the same samples
    assert_close_losses(results["sp"]["losses"], one_sp["losses"])
    assert_close(adapter(results["sp"], 2), adapter(one_sp, 2), atol=1e-5)
    # FSDP2 resumes the adapter, its optimizer and EMA exactly; its DCP state leaves the frozen base out
    assert results["fsdp-first"]["losses"] + results["fsdp-resumed"]["losses"] == results["fsdp"]["losses"]
    for kind in ("adapter", "adapter_ema"):
        assert_close(adapter(results["fsdp-resumed"], 4, kind), adapter(results["fsdp"], 4, kind), atol=0.0)
    fsdp_state = Path(results["fsdp"]["out"]) / "checkpoint-4" / "training_state" / "dcp"
    saved = FileSystemReader(str(fsdp_state)).read_metadata().state_dict_metadata
    assert [k for k in saved if k.startswith("model.")] and all(".lora_" in k for k in saved if k.startswith("model."))
    engine = Path(results["zero2"]["out"]) / "checkpoint-4" / "training_state" / "deepspeed" / "global_step4"
    assert (engine / "mp_rank_00_model_states.pt").stat().st_size < 200_000  # the tiny model's weights are 0.8 MB


@pytest.mark.parametrize("strategy", ["fsdp", "zero3"])
def test_lora_from_a_sharded_empty_base_equals_the_host_copy_and_resumes(tmp_path, strategy):
    """An fsdp or ZeRO-3 LoRA run from train.pretrained safetensors adds its adapter to the base while the base is
    still empty (on the meta device), shards both, and each rank reads only its own base shards: it fingerprints
    the base from the files as the host-copy path does from memory, and trains and resumes bit for bit like it."""
    from osctl.train.lora import OSCTL_META_KEY, read_metadata

    results = launch_sharded_loading(tmp_path, [*STRATEGIES[strategy], *LORA])
    sharded, old = results["sharded"], results["old"]

    def fingerprint(run: dict) -> str:
        meta = read_metadata(Path(run["out"]) / "checkpoint-4" / "adapter" / ADAPTER)[OSCTL_META_KEY]
        return meta["base_fingerprint"]

    assert fingerprint(sharded) == fingerprint(old) == fingerprint(results["resumed"])
    for kind in ("adapter", "adapter_ema"):
        assert_close(adapter(sharded, 4, kind), adapter(old, 4, kind), atol=0.0)
    assert_close(adapter(results["resumed"], 4), adapter(sharded, 4), atol=0.0)


def test_offload_under_ddp_trains_like_without(tmp_path):
    """``train.offload`` is applied before DDP wraps the model: DDP broadcasts the offloaded blocks' empty
    placeholders at construction (every rank read the same weights into host memory) and the 2-rank run trains
    bit for bit like the same run without offload; fsdp refuses train.offload."""
    sets = [*STRATEGIES["ddp"], *LORA, "train.max_steps=2", "train.checkpointing_steps=2"]
    jobs = [{"kind": "train", "name": "ddp", "sets": sets, "batch": 2},
            {"kind": "train", "name": "ddp-offload", "sets": [*sets, "train.offload={blocks: 2}"], "batch": 2},
            {"kind": "train", "name": "fsdp-offload", "batch": 2, "expect_error": "train.offload needs the single or ddp",
             "sets": [*STRATEGIES["fsdp"], *LORA, "train.max_steps=2", "train.offload={blocks: 2}"]}]
    _, results = launch(tmp_path, jobs)
    assert results["ddp-offload"]["losses"] == results["ddp"]["losses"]
    ours, theirs = adapter(results["ddp-offload"], 2), adapter(results["ddp"], 2)
    assert ours.keys() == theirs.keys() and all((ours[k] == theirs[k]).all() for k in theirs)
    assert any(n.startswith("offload: the frozen weights of 2/") for n in results["ddp-offload"]["notes"])
    assert "error" in results["fsdp-offload"]
