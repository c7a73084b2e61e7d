"""`osctl sample` behind the command line: build components once, spread samples over ranks, write files.

Every sample gets a seed derived from (base seed, prompt index, sample index) only, so the same
command gives the same videos with 1 or N processes. Each rank writes its own files; rank 0 builds
the optional grid from those files after a barrier (no GPU gather, any prompt count).
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from osctl import __version__
from osctl.build import (
    DTYPES,
    build_autoencoder,
    build_model,
    build_refiner,
    build_sampler,
    build_text_encoder,
)
from osctl.parallel import dist as pdist
from osctl.quiet import quiet_libraries
from osctl.recipe.validate import CheckedRecipe
from osctl.registry import Registry
from osctl.sample.pipeline import VideoPipeline
from osctl.sample.prompts import SampleJob, expand_jobs, read_prompts, slug


@dataclass
class SampleRequest:
    """What to sample, on top of the recipe's ``sample`` section."""

    prompts: list[str] = field(default_factory=list)
    prompts_file: Path | None = None
    grid: bool = False
    recorded_diffusion: dict[str, Any] | None = None
    source: dict[str, Any] = field(default_factory=dict)


def _identity(component: Any, path: str | None) -> dict[str, Any]:
    """Name, path and a cheap fingerprint (config + safetensors headers) of a loaded component."""
    info: dict[str, Any] = {"class": type(component).__name__, "path": path}
    if path and Path(path).is_dir():
        digest = hashlib.sha256()
        for file in sorted(Path(path).glob("*")):
            if file.suffix == ".json":
                digest.update(file.read_bytes())
            elif file.suffix == ".safetensors":
                with file.open("rb") as handle:
                    size = int.from_bytes(handle.read(8), "little")
                    digest.update(handle.read(size))
                digest.update(str(file.stat().st_size).encode())
        info["fingerprint"] = digest.hexdigest()[:16]
    return info


def run_sampling(checked: CheckedRecipe, registry: Registry, request: SampleRequest, *,
                 progress: Any = None) -> list[dict[str, Any]]:
    """Sample every job assigned to this rank; returns the sidecar records this rank wrote."""
    quiet_libraries()
    recipe = checked.loaded.recipe
    cfg = recipe.sample
    info = pdist.init_distributed(recipe.parallel.timeout_s)
    dtype = DTYPES[cfg.dtype]
    device = info.device
    specs = read_prompts(request.prompts or cfg.prompts or None, request.prompts_file or cfg.prompts_file)
    jobs = expand_jobs(specs, cfg.seed, cfg.num_samples_per_prompt)
    mine = jobs if cfg.sp else jobs[info.rank :: info.world_size]
    out_dir = Path(cfg.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    model = build_model(checked, registry, device=device, dtype=dtype).eval()
    # cpu_offload: the text encoder runs on the CPU and the autoencoder visits the GPU only to decode
    side = torch.device("cpu") if cfg.cpu_offload else device
    ae = build_autoencoder(checked, registry, device=side, dtype=torch.float32 if cfg.dtype == "fp16" else dtype)
    if cfg.enable_tiling and hasattr(ae, "enable_tiling"):
        ae.enable_tiling()
    text_encoder = build_text_encoder(checked, registry, device=side,
                                      dtype=torch.float32 if cfg.cpu_offload else dtype)
    refiner = build_refiner(checked, registry, device=device)
    sp_group = None
    if cfg.sp and info.world_size > 1:
        sp_group = _sequence_parallel_group(model, ae, cfg, info)
    identities = {
        "model": _identity(model, getattr(checked.components["model"], "path", None)),
        "autoencoder": _identity(ae, getattr(checked.components["autoencoder"], "path", None)),
        "text_encoder": {"name": recipe.text_encoder.name, **recipe.text_encoder.options},
    }
    from osctl.text import NEGATIVE_PROMPT

    records = []
    for job in mine:
        records.append(_sample_one(job, cfg, checked, registry, request, model, ae, text_encoder, refiner,
                                   info, dtype, out_dir, identities, progress, NEGATIVE_PROMPT, sp_group))
    pdist.barrier()
    if request.grid and info.is_main:
        write_grid(out_dir, jobs, cfg)
    return records


def _sample_one(job: SampleJob, cfg: Any, checked: CheckedRecipe, registry: Registry, request: SampleRequest,
                model: Any, ae: Any, text_encoder: Any, refiner: Any, info: pdist.DistInfo, dtype: torch.dtype,
                out_dir: Path, identities: dict[str, Any], progress: Any, default_negative: str,
                sp_group: Any = None) -> dict[str, Any]:
    spec = job.prompt
    settings = {
        "num_frames": spec.overrides.get("num_frames", cfg.num_frames),
        "height": spec.overrides.get("height", cfg.height),
        "width": spec.overrides.get("width", cfg.width),
        "guidance_scale": spec.overrides.get("guidance_scale", cfg.guidance_scale),
        "num_sampling_steps": spec.overrides.get("num_sampling_steps", cfg.num_sampling_steps),
    }
    negative = spec.overrides.get("negative_prompt", cfg.negative_prompt if cfg.negative_prompt is not None
                                  else default_negative)
    refined = refiner([spec.text])[0]
    text = refined
    if cfg.clean_captions:
        from osctl.text.clean import clean_caption

        text = clean_caption(text, checked.loaded.recipe.data.captions.support_chinese)
    scheduler = build_sampler(checked.loaded.recipe, registry, recorded=request.recorded_diffusion)
    pipeline = VideoPipeline(model, ae, text_encoder, scheduler, device=info.device, dtype=dtype,
                             offload=cfg.cpu_offload,
                             sequence_parallel=sp_group if settings["num_frames"] > 1 else None)
    generator = torch.Generator().manual_seed(job.seed)
    started = time.perf_counter()
    task = progress.add_task(f"[{spec.index}.{job.k}] {spec.text[:40]}", total=settings["num_sampling_steps"]) \
        if progress is not None else None
    result = pipeline(
        text, negative, num_frames=settings["num_frames"], height=settings["height"], width=settings["width"],
        num_inference_steps=settings["num_sampling_steps"], guidance_scale=settings["guidance_scale"],
        generator=generator, max_sequence_length=cfg.max_sequence_length,
        callback=(lambda i, n: progress.update(task, completed=i)) if task is not None else None,
    )
    if sp_rank_writes := (not cfg.sp or info.is_main):
        stem = f"{spec.index:04d}-{job.k:02d}-{slug(spec.text)}"
        frames = result.videos[0].cpu().numpy()
        from osctl.media.write import write_image, write_video

        if settings["num_frames"] == 1:
            media = write_image(out_dir / f"{stem}.png", frames[0])
        else:
            media = write_video(out_dir / f"{stem}.mp4", frames, cfg.fps)
    record = {
        "file": media.name if sp_rank_writes else None,
        "prompt": spec.text, "refined_prompt": refined, "encoded_prompt": text, "negative_prompt": negative,
        "prompt_index": spec.index, "sample_index": job.k, "seed": job.seed,
        "sampler": cfg.sample_method, "sampler_ignored_options": getattr(scheduler, "osctl_ignored_options", {}),
        "steps": settings["num_sampling_steps"], "guidance_scale": settings["guidance_scale"],
        "num_frames": settings["num_frames"], "height": settings["height"], "width": settings["width"],
        "fps": cfg.fps, "dtype": cfg.dtype, "refiner": checked.loaded.recipe.refiner.name,
        "components": identities, "source": request.source, "osctl_version": __version__,
        "world_size": info.world_size, "sequence_parallel": bool(cfg.sp and info.world_size > 1),
        "seconds": round(time.perf_counter() - started, 3),
        "frames_sha256": hashlib.sha256(result.videos[0].cpu().numpy().tobytes()).hexdigest(),
    }
    if cfg.save_latents and sp_rank_writes:
        from safetensors.torch import save_file

        save_file({"latents": result.latents[0].cpu().contiguous()}, out_dir / f"{stem}.latents.safetensors")
        record["latents_file"] = f"{stem}.latents.safetensors"
    if sp_rank_writes:
        sidecar = out_dir / f"{stem}.json"
        tmp = sidecar.with_name(f".{sidecar.name}.tmp")
        tmp.write_text(json.dumps(record, indent=2, sort_keys=True))
        tmp.replace(sidecar)
    return record


def _sequence_parallel_group(model: Any, ae: Any, cfg: Any, info: pdist.DistInfo) -> Any:
    """The whole world as one sequence-parallel group, after checking the sizes split over it."""
    from osctl.errors import UsageError

    heads = int(model.config.num_attention_heads)
    latent_frames = (cfg.num_frames - 1) // ae.temporal_stride + 1
    if heads % info.world_size:
        raise UsageError(f"--sp over {info.world_size} processes needs the model's {heads} attention heads to divide "
                         f"by {info.world_size}; use a process count that divides {heads}.")
    if latent_frames < info.world_size:
        raise UsageError(f"--sp over {info.world_size} processes needs at least {info.world_size} latent frames, "
                         f"but {cfg.num_frames} frames give {latent_frames}; sample more frames or use fewer processes.")
    group = torch.distributed.group.WORLD
    model.set_sequence_parallel(group)
    return group


def write_grid(out_dir: Path, jobs: list[SampleJob], cfg: Any) -> Path | None:
    """One grid video of every sample, read back from the files the ranks wrote."""
    import numpy as np

    from osctl.media.read import read_spread_frames
    from osctl.media.write import grid, write_image, write_video

    videos = []
    for job in jobs:
        stem = f"{job.prompt.index:04d}-{job.k:02d}-{slug(job.prompt.text)}"
        for media in (out_dir / f"{stem}.mp4", out_dir / f"{stem}.png"):
            if media.exists():
                videos.append(read_spread_frames(media)[0])
                break
    if not videos:
        return None
    shapes = {v.shape[1:3] for v in videos}
    if len(shapes) > 1:  # mixed sizes: pad to the largest
        h = max(s[0] for s in shapes)
        w = max(s[1] for s in shapes)
        videos = [np.pad(v, ((0, 0), (0, h - v.shape[1]), (0, w - v.shape[2]), (0, 0))) for v in videos]
    tiled = grid(videos)
    if max(tiled.shape[1:3]) < 512:  # tiny samples (e.g. the 16-pixel demo): enlarge so a person can see them
        factor = max(1, 512 // max(tiled.shape[1:3]))
        tiled = tiled.repeat(factor, axis=1).repeat(factor, axis=2)
    name = f"grid-{cfg.sample_method}-gs{cfg.guidance_scale:g}-s{cfg.num_sampling_steps}"
    if tiled.shape[0] == 1:
        return write_image(out_dir / f"{name}.png", tiled[0])
    from osctl.media.write import write_gif

    write_gif(out_dir / f"{name}.gif", tiled, min(cfg.fps, 12))  # viewable anywhere, e.g. a browser
    return write_video(out_dir / f"{name}.mp4", tiled, cfg.fps)
