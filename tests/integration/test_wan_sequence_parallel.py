"""Ulysses sequence parallelism for Wan on 2 gloo processes equals one process.

The workers (``family_sp_worker.py`` under torchrun) split every batch's latent frames and text tokens as the loop
does; the Wan model gathers them, splits its token sequence where diffusers' context-parallel plan for Wan does
(rotary tables, first block input; gathered at the output projection) and runs self-attention through osctl's
all-to-alls in an attention processor. Compared with one process on the same batch: the training step's loss,
output and reduced gradients (<= 1e-5), a few optimizer steps' losses, and sampling's final latents (<= 1e-4),
for one transformer and for Wan 2.2's two experts (both trained, gradient checkpointing, FSDP2 per block).
"""

from __future__ import annotations

import pytest

from tests.integration.family_sp_worker import launch, run_job
from tests.wan_helpers import tiny_pipeline

pytestmark = [pytest.mark.slow, pytest.mark.multiprocess]

SP = ["parallel.sp_size=2", "parallel.train_sp_batch_size=2"]


def test_wan_sequence_parallel_equals_one_process(tmp_path):
    for preset in ("tiny", "tiny-a14b"):
        tiny_pipeline(tmp_path / preset, preset=preset)
    ddp, fsdp = ["parallel.strategy=ddp"], ["parallel.strategy=fsdp"]
    jobs = [
        {"kind": "grads", "name": "grads-tiny", "preset": "tiny", "sets": [*SP, *ddp]},
        {"kind": "grads", "name": "grads-experts", "preset": "tiny-a14b", "sets": [*SP, *ddp]},
        {"kind": "grads", "name": "grads-checkpointed", "preset": "tiny-a14b",
         "sets": [*SP, *ddp, "model.gradient_checkpointing=true"]},
        {"kind": "train", "name": "train-fsdp", "preset": "tiny-a14b", "sets": [*SP, *fsdp]},
        {"kind": "sample", "name": "sample-experts", "preset": "tiny-a14b", "sets": []},
    ]
    results = launch(tmp_path, jobs)
    for job in jobs:
        one_job = {**job, "name": f"one-{job['name']}",
                   "sets": [s for s in job["sets"] if not s.startswith("parallel.")]}
        one = run_job(one_job, tmp_path)
        two = results[job["name"]]
        if job["kind"] == "grads":  # each rank ran 2 or 1 of the 3 latent frames through Ulysses attention
            assert two["local_frames"] < one["local_frames"] == 3
            assert two["processor"] == "UlyssesWanAttnProcessor" and one["processor"] == "WanAttnProcessor"
            assert abs(two["loss"] - one["loss"]) <= 1e-6
            assert (two["output"] - one["output"]).abs().max().item() <= 1e-5
            assert two["grads"].keys() == one["grads"].keys() and len(one["grads"]) > 0
            for name, grad in one["grads"].items():
                assert (two["grads"][name] - grad).abs().max().item() <= 1e-5, name
        elif job["kind"] == "train":
            assert len(two["losses"]) == 3
            for a, b in zip(two["losses"], one["losses"], strict=True):
                assert abs(a - b) <= 1e-5 * max(1.0, abs(b))
        else:
            assert two["processor"] == "UlyssesWanAttnProcessor"
            assert (two["latents"] - one["latents"]).abs().max().item() <= 1e-4


def test_two_experts_train_data_parallel_when_ranks_route_to_different_experts(tmp_path):
    """2 data-parallel ranks, one sample each: a step where the ranks' samples fall to different experts runs
    every trained expert on every rank (DDP's buckets and FSDP's all-gathers line up) instead of hanging."""
    tiny_pipeline(tmp_path / "tiny-a14b", preset="tiny-a14b")
    batch = ["train.train_batch_size=1", "train.max_steps=4"]
    jobs = [{"kind": "train", "name": f"dp-{strategy}", "preset": "tiny-a14b",
             "sets": [f"parallel.strategy={strategy}", *batch]} for strategy in ("ddp", "fsdp")]
    results = launch(tmp_path, jobs)
    for job in jobs:
        result = results[job["name"]]
        assert len(result["losses"]) == 4 and all(loss == loss for loss in result["losses"])
        assert result["touches"] > 0  # some micro-step left an expert without a sample on some rank
