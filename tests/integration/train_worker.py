"""One rank of a distributed training test, started by torchrun (or called in-process for the baseline).

``python -m torch.distributed.run --standalone --nproc-per-node 2 train_worker.py SPEC.json`` runs every
job of the spec in order on every rank and rank 0 writes ``results.json`` beside the spec. A job is
``{"kind": "train" | "grads", "name": ..., "dir": folder (default: name), "sets": [recipe overrides],
"batch": per-replica batch, "draws": "per_sample" | "native", "invalid_tail": padded trailing latent
frames per clip (cycled), "fail_rank" with "fail_at_step" (raise) or "hang_at_step" (sleep),
"expect_error": a message the job must fail with, "old_load": true to load an fsdp or ZeRO-3 run's weights
the way runs did before sharded loading (the whole model built first, then sharded or partitioned)}``.

Per-sample draws make runs with different layouts comparable: a 2-rank data-parallel run and one
process with the doubled batch see the same clips, but each rank draws timesteps and noise from
its own stream (and stratified by rank), so their draws differ. With ``per_sample`` the objective
ignores the run's streams and derives each sample's timestep and noise from the sample itself
(its latents) and the optimizer step, so every layout draws the same numbers for the same sample
at the same step — also after a resume, since the step is restored.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # run as a script by torchrun
    sys.path.insert(0, str(REPO))


class PerSampleDraws:
    """Wraps an objective: timesteps and noise depend only on (sample latents, optimizer step)."""

    def __init__(self, inner: Any, state: Any) -> None:
        self.inner, self.state = inner, state

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def add_noise(self, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> Any:
        """The inner objective's noising, with this sample's own timestep and noise (the given ones ignored)."""
        steps, noises = [], []
        for sample in latents:
            digest = hashlib.sha256(sample.detach().cpu().float().numpy().tobytes())
            digest.update(str(self.state.step).encode())
            generator = torch.Generator().manual_seed(int.from_bytes(digest.digest()[:8], "little") >> 1)
            steps.append(int(torch.randint(0, self.inner.num_train_timesteps, (1,), generator=generator)))
            noises.append(torch.randn(sample.shape, generator=generator))
        return self.inner.add_noise(latents, torch.stack(noises).to(latents.device),
                                    torch.tensor(steps, device=latents.device))


def setup(job: dict[str, Any], root: Path, rank: int, world: int) -> Any:
    """``TrainParts`` for a job (recipe = the tiny test recipe + the job's overrides)."""
    from osctl.plugin_manager import default_registry
    from osctl.recipe.load import load_recipe
    from osctl.recipe.validate import check_recipe
    from osctl.train.run import TrainOptions, setup_training
    from tests.train_helpers import SyntheticClips, write_tiny_recipe

    folder = root / job.get("dir", job["name"])  # a resumed job shares the folder of the run it continues
    own = folder / f"recipe-rank{rank}"  # one file per rank: a rank must never read another's half-written file
    own.mkdir(parents=True, exist_ok=True)
    recipe = write_tiny_recipe(own, folder / "out", root / "cache")
    registry = default_registry()
    checked = check_recipe(load_recipe(recipe, list(job.get("sets", []))), registry)
    sp = checked.loaded.recipe.parallel.sp_size
    frames = checked.loaded.recipe.data.num_frames
    text_encoder = registry.build("text_encoder", "tiny_t5", checked.components["text_encoder"])
    size = checked.loaded.recipe.data.max_height
    source = SyntheticClips(lambda caps: text_encoder.tokenize(caps), batch_size=job.get("batch", 2), frames=frames,
                            size=size, dp_rank=rank // sp, dp_size=world // sp, invalid_tail=job.get("invalid_tail"),
                            latent_shape=checked.geometry.latent_shape(frames, size, size))
    records: list[dict[str, Any]] = []
    options = TrainOptions(data_source=source, on_step=lambda step, record: records.append(dict(record)))
    if job.get("old_load"):
        from unittest import mock

        with mock.patch("osctl.train.run.loads_sharded", lambda recipe, strategy: False):
            parts = setup_training(checked, registry, options)
    else:
        parts = setup_training(checked, registry, options)
    if job.get("draws", "native") == "per_sample":
        parts.objective = PerSampleDraws(parts.objective, parts.state)
    parts.records = records  # type: ignore[attr-defined]
    parts.checked = checked  # type: ignore[attr-defined]
    return parts


def run_train(job: dict[str, Any], root: Path, rank: int, world: int) -> dict[str, Any]:
    """Train; returns losses and gradient norms per step."""
    from osctl.train.loop import train

    parts = setup(job, root, rank, world)
    if rank == job.get("fail_rank", 1):
        def fail(step: int, record: dict[str, Any]) -> None:
            if step == job.get("fail_at_step"):
                raise RuntimeError(f"deliberate failure on rank {rank} at step {step}")
            if step == job.get("hang_at_step"):
                time.sleep(600)  # stops answering collectives; the others must time out
        parts.on_step = fail
    result = train(parts)
    return {"losses": result.losses, "grad_norms": [r.get("grad_norm") for r in parts.records],
            "final_step": result.final_step, "out": str(parts.output_dir),
            "notes": [value for key, value in parts.plan.lines if key == "note"]}


def run_grads(job: dict[str, Any], root: Path, rank: int, world: int) -> dict[str, Any]:
    """One micro-step on the first batch: the full model output and the reduced parameter gradients."""
    from osctl.parallel import ulysses
    from osctl.train.loop import micro_step

    parts = setup(job, root, rank, world)
    outputs: list[torch.Tensor] = []
    parts.strategy.module.register_forward_hook(lambda module, args, out: outputs.append(out[0].detach()))
    batch = next(iter(parts.data))
    loss = micro_step(parts, batch, sync=True, scale=1.0)
    group = parts.groups.sp_group
    local = outputs[-1]
    frames = batch["pixel_values"].shape[2]  # temporal stride 1: latent frames = frames
    output = ulysses.gather_along_dim(local.contiguous(), 2, group, ulysses.shard_sizes(frames, ulysses.group_size(group))) \
        if local.shape[2] != frames else local
    grads = {n: p.grad.detach().clone() for n, p in parts.strategy.module.named_parameters()}
    from osctl.parallel.dist import all_reduce_mean

    return {"loss": all_reduce_mean(loss, parts.dist.device), "output": output, "grads": grads}


def run_job(job: dict[str, Any], root: Path, rank: int = 0, world: int = 1) -> dict[str, Any]:
    """Run one job of a spec on this rank; with ``expect_error`` the error message is the result."""
    try:
        return (run_grads if job["kind"] == "grads" else run_train)(job, root, rank, world)
    except Exception as exc:
        if job.get("expect_error") and job["expect_error"] in str(exc):
            return {"error": str(exc)}
        raise


def main(spec_path: str) -> None:
    """Every job of the spec on this rank; rank 0 saves the results; then a clean gloo exit."""
    serve(spec_path, run_job)


def serve(spec_path: str, run_job: Any) -> None:
    """The worker protocol shared with ``family_sp_worker.py``: ``run_job(job, folder, rank, world)`` for every job
    of the spec, rank 0's results in ``results.pt`` beside it; a failing job ends the rank at once (exit 1)."""
    from osctl.parallel.dist import shutdown

    torch.set_num_threads(1)
    spec_file = Path(spec_path)
    spec = json.loads(spec_file.read_text())
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    try:
        results = {job["name"]: run_job(job, spec_file.parent, rank, world) for job in spec["jobs"]}
    except Exception as exc:
        sys.stderr.write(f"rank {rank}: {type(exc).__name__}: {exc}\n")
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(1)
    if rank == 0:
        torch.save(results, spec_file.parent / "results.pt")
    shutdown(0)


if __name__ == "__main__":
    main(sys.argv[1])
