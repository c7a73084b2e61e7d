"""One rank of the families' sequence-parallel tests, started by torchrun (or called in-process for the one-process
baseline).

``python -m torch.distributed.run --standalone --nproc-per-node 2 family_sp_worker.py SPEC.json`` runs every job of
the spec on every rank; rank 0 saves ``results.pt`` beside the spec. Jobs (``{"kind", "name", "family", "preset",
"sets"}``; ``family`` is a key of :data:`FAMILIES`, ``wan`` when absent; the tiny pipeline is ``<root>/<preset>``):

- ``grads``: one training micro-step of the real loop (``osctl.train.loop.micro_step``) on the first batch of the
  tiny pipeline: the loss averaged over ranks, the full model output, the reduced parameter gradients and the
  batch's text lengths;
- ``train``: a few optimizer steps (losses per step);
- ``sample``: ``VideoPipeline`` with ``sequence_parallel`` over the world (as ``osctl sample --sp``): the final
  latents from given initial latents and a seeded generator (CogVideoX's sampler draws step noise).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[2]
for entry in (REPO, REPO / "plugins"):
    if str(entry) not in sys.path:  # run as a script by torchrun
        sys.path.insert(0, str(entry))

_TRAIN = """train: {{output_dir: {out}, max_steps: 3, train_batch_size: 2, learning_rate: 1.0e-3, mixed_precision: fp32,
        checkpointing_steps: 100, log_interval: 1, adam_epsilon: 1.0e-6, seed: 5}}
parallel: {{strategy: single}}
"""
WAN_RECIPE = """
pipeline_path: {pipe}
model: {{name: wan}}
autoencoder: {{name: wan_vae}}
text_encoder: {{name: t5, max_length: 32, prompt_clean: wan}}
data: {{num_frames: 9, hw_stride: 16, max_height: 32, max_width: 32}}
diffusion: {{objective: flow_matching, flow_shift: 3.0}}
""" + _TRAIN + """sample: {{num_frames: 9, height: 32, width: 32, num_sampling_steps: 5, sample_method: UniPCMultistep,
         sampler_options: {{flow_shift: 3.0}}, dtype: fp32, guidance_scale: 5.0, guidance_scale_2: 3.0}}
"""
COGVIDEOX_RECIPE = """
extends: {recipes}/base/cogvideox.yaml
pipeline_path: {pipe}
model: {{gradient_checkpointing: false}}
text_encoder: {{max_length: 32}}
data: {{num_frames: 9, hw_stride: 16, max_height: 32, max_width: 32}}
""" + _TRAIN + """sample: {{num_frames: 9, height: 32, width: 32, num_sampling_steps: 5, dtype: fp32}}
"""
LTX_RECIPE = """
extends: {recipes}/base/ltx-video.yaml
pipeline_path: {pipe}
model: {{gradient_checkpointing: false}}
text_encoder: {{max_length: 32}}
data: {{num_frames: 9, hw_stride: 32, max_height: 64, max_width: 64}}
""" + _TRAIN + """sample: {{num_frames: 9, height: 64, width: 64, num_sampling_steps: 5, dtype: fp32}}
"""
# 48 x 48 pixels: 3 x 3 tokens a latent frame, 27 in all, split 14 / 13 over 2 ranks; true classifier-free
# guidance when sampling, so the batch holds the prompt and the shorter negative prompt (the text mask pads)
HUNYUAN_RECIPE = """
pipeline_path: {pipe}
model: {{name: hunyuan_video, gradient_checkpointing: false}}
autoencoder: {{name: hunyuan_vae}}
text_encoder: {{name: hunyuan_text, crop_start: {crop_start}, max_length: 32}}
data: {{num_frames: 9, hw_stride: 16, max_height: 48, max_width: 48}}
diffusion: {{objective: flow_matching, flow_shift: 7.0, weighting_scheme: logit_normal}}
""" + _TRAIN + """sample: {{num_frames: 9, height: 48, width: 48, num_sampling_steps: 4, sample_method: FlowMatchEulerDiscrete,
         sampler_options: {{flow_shift: 7.0}}, guidance_scale: 3.0, max_sequence_length: 32, dtype: fp32}}
"""


@dataclass(frozen=True)
class FamilyCase:
    """How a family's tiny pipeline is trained and sampled in these jobs."""

    recipe: str
    size: int          # pixels of the square clips
    latents: tuple[int, ...]
    processor: Any     # model -> the class name(s) of its joint or self-attention processors
    fields: Any = None  # pipeline folder -> more fields of the recipe (HunyuanVideo's crop_start)
    padded_text: bool = False  # captions of different lengths, so the training batch's text mask pads


def _first_attention(model: Any) -> str:
    blocks = getattr(model.transformer, "blocks", None) or model.transformer.transformer_blocks
    return type(blocks[0].attn1.processor).__name__


def _hunyuan_attention(model: Any) -> str:
    """The processors of every dual- and single-stream block (one name when they agree)."""
    blocks = (*model.transformer.transformer_blocks, *model.transformer.single_transformer_blocks)
    return "/".join(sorted({type(block.attn.processor).__name__ for block in blocks}))


def _hunyuan_fields(pipe: Path) -> dict[str, Any]:
    from tests.family_helpers import hunyuan_crop_start

    return {"crop_start": hunyuan_crop_start(pipe)}


FAMILIES = {
    "wan": FamilyCase(WAN_RECIPE, 32, (1, 16, 3, 4, 4), _first_attention),
    "cogvideox": FamilyCase(COGVIDEOX_RECIPE, 32, (1, 16, 3, 4, 4), _first_attention),
    "ltx": FamilyCase(LTX_RECIPE, 64, (1, 128, 2, 2, 2), _first_attention),
    "hunyuan": FamilyCase(HUNYUAN_RECIPE, 48, (1, 16, 3, 6, 6), _hunyuan_attention, fields=_hunyuan_fields,
                          padded_text=True),
}


def _case(job: dict[str, Any]) -> FamilyCase:
    return FAMILIES[job.get("family", "wan")]


def _recipe_text(job: dict[str, Any], root: Path) -> str:
    case = _case(job)
    pipe = root / job["preset"]
    fields = case.fields(pipe) if case.fields else {}
    return case.recipe.format(pipe=pipe, out=root / job["name"] / "out", recipes=REPO / "recipes", **fields)


def setup(job: dict[str, Any], root: Path, rank: int, world: int) -> Any:
    """``TrainParts`` of the job's recipe (the tiny pipeline ``root/<preset>`` + the job's overrides)."""
    from osctl.recipe.load import load_recipe
    from osctl.recipe.validate import check_recipe
    from osctl.train.run import TrainOptions, setup_training
    from tests.family_helpers import family_registry
    from tests.train_helpers import SyntheticClips

    folder = root / job["name"] / f"rank{rank}"
    folder.mkdir(parents=True, exist_ok=True)
    recipe = folder / "recipe.yaml"
    recipe.write_text(_recipe_text(job, root))
    registry = family_registry()
    checked = check_recipe(load_recipe(recipe, list(job.get("sets", []))), registry)
    text = registry.build("text_encoder", checked.loaded.recipe.text_encoder.name, checked.components["text_encoder"])
    tokenize = text.tokenize
    if _case(job).padded_text:  # caption i gets i more words
        def tokenize(captions: list[str]) -> dict[str, Any]:
            return text.tokenize([caption + " red" * i for i, caption in enumerate(captions)])
    sp = checked.loaded.recipe.parallel.sp_size
    source = SyntheticClips(tokenize, frames=9, size=_case(job).size, dp_rank=rank // sp, dp_size=world // sp)
    return setup_training(checked, registry, TrainOptions(data_source=source)), registry, checked


def run_grads(job: dict[str, Any], root: Path, rank: int, world: int) -> dict[str, Any]:
    from osctl.parallel import ulysses
    from osctl.parallel.dist import all_reduce_mean
    from osctl.train.loop import micro_step

    parts, _, _ = setup(job, root, rank, world)
    outputs: list[torch.Tensor] = []
    parts.strategy.module.register_forward_hook(lambda module, args, out: outputs.append(out[0].detach()))
    batch = next(iter(parts.data))
    loss = micro_step(parts, batch, sync=True, scale=1.0)
    group = parts.groups.sp_group
    local = outputs[-1]
    frames = _case(job).latents[2]  # 9 pixel frames -> latent frames
    output = local if local.shape[2] == frames else ulysses.gather_along_dim(
        local.contiguous(), 2, group, ulysses.shard_sizes(frames, ulysses.group_size(group)))
    grads = {n: p.grad.detach().clone() for n, p in parts.strategy.module.named_parameters() if p.grad is not None}
    processor = _case(job).processor(parts.strategy.module)
    return {"loss": all_reduce_mean(loss, parts.dist.device), "output": output, "grads": grads,
            "local_frames": local.shape[2], "processor": processor,
            "text_lengths": batch["attention_mask"].sum(dim=1).tolist()}


def run_train(job: dict[str, Any], root: Path, rank: int, world: int) -> dict[str, Any]:
    """Optimizer steps; also counts the micro-steps where a trained expert had no sample (its one-token run)."""
    from osctl.train.loop import train

    parts, _, _ = setup(job, root, rank, world)
    module = parts.strategy.module
    touches = [0]
    real_touch = module._touch

    def counted(*args: Any, **kwargs: Any) -> Any:
        touches[0] += 1
        return real_touch(*args, **kwargs)

    module._touch = counted
    losses = train(parts).losses
    touched = torch.tensor([float(touches[0])])
    if torch.distributed.is_initialized():
        torch.distributed.all_reduce(touched)
    return {"losses": losses, "touches": int(touched.item())}


def run_sample(job: dict[str, Any], root: Path, rank: int, world: int) -> dict[str, Any]:
    from osctl.build import build_autoencoder, build_model, build_sampler, build_text_encoder
    from osctl.parallel import dist as pdist
    from osctl.recipe.load import load_recipe
    from osctl.recipe.validate import check_recipe
    from osctl.sample.pipeline import VideoPipeline
    from tests.family_helpers import family_registry

    case = _case(job)
    folder = root / job["name"] / f"rank{rank}"
    folder.mkdir(parents=True, exist_ok=True)
    recipe = folder / "recipe.yaml"
    recipe.write_text(_recipe_text(job, root))
    registry = family_registry()
    checked = check_recipe(load_recipe(recipe, list(job.get("sets", []))), registry)
    info = pdist.init_distributed(60.0)
    model = build_model(checked, registry, dtype=torch.float32).eval()
    ae = build_autoencoder(checked, registry, dtype=torch.float32)
    text = build_text_encoder(checked, registry, dtype=torch.float32)
    group = None
    if info.world_size > 1:
        group = torch.distributed.group.WORLD
        model.set_sequence_parallel(group)
    cfg = checked.loaded.recipe.sample
    latents = torch.randn(case.latents, generator=torch.Generator().manual_seed(9))
    pipeline = VideoPipeline(model, ae, text, build_sampler(checked.loaded.recipe, registry), geometry=checked.geometry,
                             sequence_parallel=group)
    result = pipeline("a red ball", "blurry", num_frames=9, height=case.size, width=case.size,
                      num_inference_steps=cfg.num_sampling_steps, guidance_scale=cfg.guidance_scale,
                      guidance_scale_2=cfg.guidance_scale_2, latents=latents, max_sequence_length=cfg.max_sequence_length,
                      generator=torch.Generator().manual_seed(13), output_type="latent")
    return {"latents": result.latents, "processor": case.processor(model)}


def run_job(job: dict[str, Any], root: Path, rank: int = 0, world: int = 1) -> dict[str, Any]:
    return {"grads": run_grads, "train": run_train, "sample": run_sample}[job["kind"]](job, root, rank, world)


def launch(folder: Path, jobs: list[dict[str, Any]]) -> dict[str, Any]:
    """Run ``jobs`` on 2 gloo processes (torchrun) in ``folder``; rank 0's results by job name."""
    import subprocess

    from tests.family_helpers import subprocess_env

    spec = folder / "spec.json"
    spec.write_text(json.dumps({"jobs": jobs}))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "--monitor-interval", "0.5", str(Path(__file__)), str(spec)]
    env = {**subprocess_env(None), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, cwd=folder)
    assert proc.returncode == 0, proc.stderr[-5000:]
    return torch.load(folder / "results.pt", weights_only=True)


def main(spec_path: str) -> None:
    from tests.integration.train_worker import serve

    serve(spec_path, run_job)


if __name__ == "__main__":
    main(sys.argv[1])
