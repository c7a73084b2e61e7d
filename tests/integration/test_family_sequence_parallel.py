"""Ulysses sequence parallelism for CogVideoX, LTX-Video and HunyuanVideo on 2 gloo processes equals one process.

The workers (``family_sp_worker.py`` under torchrun) split every batch's latent frames and text tokens as the loop
does; the model gathers them and splits its token sequence at its own split points:

- CogVideoX has no context-parallel plan in diffusers: osctl splits the video tokens at the first block's input
  and gathers them at the output projection, keeps the (replicated) text whole, and runs CogVideoX's joint
  text-video attention through ``UlyssesCogVideoXAttnProcessor`` (video tokens all-to-all, text heads sliced
  locally and gathered back). Both layouts: the 5B's rotary positions, and 1.5's 2x2x2 patch with gradient
  checkpointing;
- LTX-Video follows diffusers' plan (rotary tables and ``proj_in`` split, ``proj_out`` gathered), self-attention
  through ``UlyssesLTXAttnProcessor``, the prompt-masked cross-attention unchanged;
- HunyuanVideo has no plan in diffusers either: osctl splits the rotary tables and the video tokens at the first
  dual-stream block, gathers them at the output projection, and runs the joint ``[video; text]`` attention of
  both block kinds (dual-stream, and single-stream, which joins the local video tokens and the whole text)
  through ``UlyssesHunyuanVideoAttnProcessor`` with the transformer's text padding mask. 27 video tokens split
  14 / 13 (uneven); the training captions have different lengths and sampling runs a classifier-free pass with
  a shorter negative prompt, so the text mask pads; with and without gradient checkpointing.

Compared with one process on the same batch: the training step's loss, output and reduced gradients (<= 1e-5),
three FSDP2 optimizer steps' losses (CogVideoX, HunyuanVideo), and sampling's final latents (<= 1e-4; CogVideoX
with its stochastic DPM sampler and a seeded generator).
"""

from __future__ import annotations

import pytest

from tests.family_helpers import tiny_cogvideox_pipeline, tiny_hunyuan_pipeline, tiny_ltx_pipeline
from tests.integration.family_sp_worker import launch, run_job

pytestmark = [pytest.mark.slow, pytest.mark.multiprocess]

SP = ["parallel.sp_size=2", "parallel.train_sp_batch_size=2", "parallel.strategy=ddp"]
PROCESSORS = {"cogvideox": ("UlyssesCogVideoXAttnProcessor", "CogVideoXAttnProcessor2_0"),
              "ltx": ("UlyssesLTXAttnProcessor", "LTXVideoAttnProcessor"),
              "hunyuan": ("UlyssesHunyuanVideoAttnProcessor", "HunyuanVideoAttnProcessor2_0")}


def test_cogvideox_ltx_and_hunyuan_sequence_parallel_equal_one_process(tmp_path):
    for preset in ("tiny-rope", "tiny-1.5"):
        tiny_cogvideox_pipeline(tmp_path / preset, preset=preset)
    tiny_ltx_pipeline(tmp_path / "ltx")
    tiny_hunyuan_pipeline(tmp_path / "hunyuan")
    jobs = [
        {"kind": "grads", "name": "grads-cogvideox", "family": "cogvideox", "preset": "tiny-rope", "sets": SP},
        {"kind": "grads", "name": "grads-cogvideox-1.5", "family": "cogvideox", "preset": "tiny-1.5",
         "sets": [*SP, "model.gradient_checkpointing=true", "diffusion.snr_shift_scale=1.0"]},
        {"kind": "grads", "name": "grads-ltx", "family": "ltx", "preset": "ltx", "sets": SP},
        {"kind": "train", "name": "train-cogvideox-fsdp", "family": "cogvideox", "preset": "tiny-rope",
         "sets": [*SP[:2], "parallel.strategy=fsdp"]},
        {"kind": "grads", "name": "grads-hunyuan", "family": "hunyuan", "preset": "hunyuan", "sets": SP},
        {"kind": "grads", "name": "grads-hunyuan-checkpointing", "family": "hunyuan", "preset": "hunyuan",
         "sets": [*SP, "model.gradient_checkpointing=true"]},
        {"kind": "train", "name": "train-hunyuan-fsdp", "family": "hunyuan", "preset": "hunyuan",
         "sets": [*SP[:2], "parallel.strategy=fsdp"]},
        {"kind": "sample", "name": "sample-cogvideox", "family": "cogvideox", "preset": "tiny-rope", "sets": []},
        {"kind": "sample", "name": "sample-ltx", "family": "ltx", "preset": "ltx", "sets": []},
        {"kind": "sample", "name": "sample-hunyuan", "family": "hunyuan", "preset": "hunyuan", "sets": []},
    ]
    results = launch(tmp_path, jobs)
    for job in jobs:
        one_job = {**job, "name": f"one-{job['name']}",
                   "sets": [s for s in job["sets"] if not s.startswith("parallel.")]}
        one = run_job(one_job, tmp_path)
        two = results[job["name"]]
        ulysses, plain = PROCESSORS[job["family"]]
        if job["kind"] == "train":  # FSDP2 shards every block (the family's _no_split_modules); three optimizer steps
            assert len(two["losses"]) == 3
            for a, b in zip(two["losses"], one["losses"], strict=True):
                assert abs(a - b) <= 1e-5 * max(1.0, abs(b))
        elif job["kind"] == "grads":  # each rank ran part of the latent frames through Ulysses attention
            assert two["local_frames"] < one["local_frames"]
            assert two["processor"] == ulysses and one["processor"] == plain
            assert abs(two["loss"] - one["loss"]) <= 1e-6 * max(1.0, abs(one["loss"]))
            assert (two["output"] - one["output"]).abs().max().item() <= 1e-5
            assert two["grads"].keys() == one["grads"].keys() and len(one["grads"]) > 0
            if job["family"] == "hunyuan":  # the text mask pads one of the two samples
                assert len(set(one["text_lengths"])) == 2
            for name, grad in one["grads"].items():
                assert (two["grads"][name] - grad).abs().max().item() <= 1e-5, (job["name"], name)
        else:
            assert two["processor"] == ulysses
            assert (two["latents"] - one["latents"]).abs().max().item() <= 1e-4
