"""`osctl sample` behind the command line: build components once, spread samples over ranks, write files.

Every sample gets a seed derived from (base seed, prompt index, sample index) only, so the same
command gives the same videos with 1 or N processes. Each rank writes its own files; rank 0 builds
the optional grid from those files after a barrier (no GPU gather, any prompt count).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from osctl import __version__
from osctl.availability import component_missing_weights, require_weights
from osctl.build import (
    DTYPES,
    build_autoencoder,
    build_refiner,
    build_sampler,
    build_text_encoder,
)
from osctl.errors import writing
from osctl.parallel import dist as pdist
from osctl.quiet import quiet_libraries
from osctl.recipe.validate import CheckedRecipe
from osctl.registry import Registry
from osctl.sample.pipeline import VideoPipeline
from osctl.sample.prompts import SampleJob, expand_jobs, read_prompts, slug
from osctl.sample.sizes import check_sequence_parallel_frames, check_size
from osctl.train.lean_load import build_loaded_model
from osctl.utils.atomic import atomic_file, atomic_write_text
from osctl.utils.attention import attention_backend
from osctl.utils.files import file_sha256
from osctl.utils.output_dir import check_output_dir


@dataclass
class SampleRequest:
    """What to sample, on top of the recipe's ``sample`` section."""

    prompts: list[str] = field(default_factory=list)
    prompts_file: Path | None = None
    grid: bool = False
    recorded_diffusion: dict[str, Any] | None = None
    source: dict[str, Any] = field(default_factory=dict)
    base_weights: Path | None = None  # a LoRA checkpoint's base (its recipe's train.pretrained), loaded before the adapters


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
    """Sample every job assigned to this rank; returns the sidecar records this rank wrote.

    Without the weights the recipe names, or with a video size the components cannot make (see
    :mod:`osctl.sample.sizes`), refuses at once (one sentence, exit 2) before building anything.
    """
    require_weights(component_missing_weights(checked.components), what="sampling")
    quiet_libraries()
    recipe = checked.loaded.recipe
    cfg = recipe.sample
    info = pdist.init_distributed(recipe.parallel.timeout_s)
    dtype = DTYPES[cfg.dtype]
    device = info.device
    specs = read_prompts(request.prompts or cfg.prompts or None, request.prompts_file or cfg.prompts_file,
                         geometry=checked.geometry)
    jobs = expand_jobs(specs, cfg.seed, cfg.num_samples_per_prompt)
    sp_world = info.world_size if cfg.sp and info.world_size > 1 else 1
    check_job_sizes(checked, jobs, sp_world)
    mine = jobs if cfg.sp else jobs[info.rank :: info.world_size]
    out_dir = check_output_dir(cfg.output_dir, key="sample.output_dir")

    # model.path's weights or a LoRA checkpoint's base, loaded on the device without a host copy where it can
    model = build_loaded_model(checked, registry, weights=request.base_weights, device=device, dtype=dtype).model.eval()
    loras = apply_loras(model, cfg.loras)
    if cfg.compile:  # after the adapters are merged: the compiled blocks see the final weights
        from osctl.recipe.schema import CompileSettings
        from osctl.train.compile import compile_blocks

        sizes = {(s.num_frames, s.height, s.width) for s in (job_settings(job, cfg, "") for job in mine)}
        compile_blocks(model, CompileSettings(warmup=False), shapes=len(sizes))
    # cpu_offload: the text encoder runs on the CPU and the autoencoder visits the GPU only to decode
    side = torch.device("cpu") if cfg.cpu_offload else device
    ae = build_autoencoder(checked, registry, device=side, dtype=torch.float32 if cfg.dtype == "fp16" else dtype)
    if cfg.enable_tiling and hasattr(ae, "enable_tiling"):
        ae.enable_tiling()
    text_encoder = build_text_encoder(checked, registry, device=side,
                                      dtype=torch.float32 if cfg.cpu_offload else dtype)
    refiner = build_refiner(checked, registry, device=device)
    sp_group = None
    if sp_world > 1:
        sp_group = _sequence_parallel_group(model, info)
    identities = {
        "model": _identity(model, getattr(checked.components["model"], "path", None)),
        "autoencoder": _identity(ae, getattr(checked.components["autoencoder"], "path", None)),
        "text_encoder": {"name": recipe.text_encoder.name, **recipe.text_encoder.options},
    }
    if loras:
        identities["loras"] = loras
    from osctl.text import NEGATIVE_PROMPT

    records = []
    per_prompt = Counter(job.prompt.index for job in jobs)
    for batch in batch_jobs(mine, cfg, NEGATIVE_PROMPT, cfg.batch_size):
        label = progress_label([job for job, _ in batch], len(specs), per_prompt)
        with attention_backend(cfg.attention_backend):
            records += _sample_batch(batch, cfg, checked, registry, request, model, ae, text_encoder, refiner,
                                     info, dtype, out_dir, identities, progress, sp_group, label)
    pdist.barrier()
    if request.grid and info.is_main:
        write_grid(out_dir, jobs, cfg)
    return records


def apply_loras(model: Any, refs: list[Any]) -> list[dict[str, Any]]:
    """Merge each ``sample.loras`` adapter into ``model`` (``scale * alpha/rank * B @ A`` added to the weights,
    in float32); returns what the sidecars record of each. An adapter trained on other base weights (another
    fingerprint) is applied with a warning."""
    if not refs:
        return []
    from osctl.train.lora import adapter_files, base_fingerprint, merge_into_model, read_adapter

    fingerprint = base_fingerprint(model.state_dict())
    applied = []
    for ref, file in ((r, f) for r in refs for f in adapter_files(Path(r.path))):
        adapter = read_adapter(file)
        if adapter.spec.base_fingerprint and adapter.spec.base_fingerprint != fingerprint:
            import logging

            logging.getLogger("osctl").warning(
                "LoRA %s was trained on base %s; this model is %s (applied anyway)", adapter.source,
                adapter.spec.base_fingerprint, fingerprint)
        merge_into_model(model, adapter, ref.scale)
        applied.append({"path": adapter.source, "scale": ref.scale, "rank": adapter.spec.rank,
                        "alpha": adapter.spec.alpha, "base_fingerprint": adapter.spec.base_fingerprint})
    return applied


def check_job_sizes(checked: CheckedRecipe, jobs: list[SampleJob], sp_world: int = 1) -> None:
    """Refuse (``UsageError``) any video of ``jobs`` the recipe's latent geometry cannot make, before anything is
    built: the recipe's sizes (``sample.*``, which the flags set) that a job uses (a prompt line's own sizes
    were checked when it was read) and, over ``sp_world`` sequence-parallel processes, every video's latent
    frames."""
    from osctl.text import NEGATIVE_PROMPT

    geometry, cfg = checked.geometry, checked.loaded.recipe.sample
    used = {key for job in jobs for key in ("num_frames", "height", "width") if key not in job.prompt.overrides}
    check_size(geometry, where="sample.", **{key: getattr(cfg, key) for key in used})
    if sp_world > 1:
        for job in jobs:
            frames = job_settings(job, cfg, NEGATIVE_PROMPT).num_frames
            if frames > 1:  # a single frame is sampled without sequence parallelism
                where = f"prompt {job.prompt.index + 1}: " if "num_frames" in job.prompt.overrides else "sample."
                check_sequence_parallel_frames(geometry, frames, sp_world, where=where)


@dataclass(frozen=True)
class SampleSettings:
    """A video's size, guidance, steps and negative prompt: jobs share a pipeline call only when these are equal."""

    num_frames: int
    height: int
    width: int
    guidance_scale: float
    num_sampling_steps: int
    negative: str


def job_settings(job: SampleJob, cfg: Any, default_negative: str) -> SampleSettings:
    """The per-prompt overrides of ``job`` on top of the recipe's ``sample`` section."""
    o = job.prompt.overrides
    negative = o.get("negative_prompt", cfg.negative_prompt if cfg.negative_prompt is not None else default_negative)
    return SampleSettings(int(o.get("num_frames", cfg.num_frames)), int(o.get("height", cfg.height)),
                          int(o.get("width", cfg.width)), float(o.get("guidance_scale", cfg.guidance_scale)),
                          int(o.get("num_sampling_steps", cfg.num_sampling_steps)), str(negative))


def batch_jobs(jobs: list[SampleJob], cfg: Any, default_negative: str,
               batch_size: int) -> list[list[tuple[SampleJob, SampleSettings]]]:
    """Runs of at most ``batch_size`` consecutive jobs with equal settings, in the original order.

    Why consecutive only: files and sidecars are written in job order, and the k samples of a prompt
    (the usual batch) are neighbours anyway.
    """
    batches: list[list[tuple[SampleJob, SampleSettings]]] = []
    for job in jobs:
        settings = job_settings(job, cfg, default_negative)
        if batches and len(batches[-1]) < batch_size and batches[-1][-1][1] == settings:
            batches[-1].append((job, settings))
        else:
            batches.append([(job, settings)])
    return batches


def progress_label(batch: list[SampleJob], prompt_count: int, per_prompt: Mapping[int, int]) -> str:
    """What a progress bar calls a batch, counting from 1: ``prompt 1/3 · samples 1-2/2  a red circle ...``.

    ``per_prompt`` is the number of samples of each prompt index. A batch that spans prompts names each
    (``prompt 1/2 · sample 2/2 + prompt 2/2 · sample 1/2``); samples that are not neighbours (another
    process makes the ones between) are listed (``samples 1,3/4``). The prompt's text follows when the
    batch holds one prompt.
    """
    groups: dict[int, list[int]] = {}
    for job in batch:
        groups.setdefault(job.prompt.index, []).append(job.k)
    parts = []
    for index, ks in groups.items():
        numbers = sorted(k + 1 for k in ks)
        if len(numbers) == 1:
            which = f"sample {numbers[0]}"
        elif numbers == list(range(numbers[0], numbers[-1] + 1)):
            which = f"samples {numbers[0]}-{numbers[-1]}"
        else:
            which = f"samples {','.join(map(str, numbers))}"
        parts.append(f"prompt {index + 1}/{prompt_count} · {which}/{per_prompt.get(index, len(ks))}")
    text = batch[0].prompt.text
    shown = f"  {text[:40]}{'...' if len(text) > 40 else ''}" if len(groups) == 1 else ""
    return " + ".join(parts) + shown


def _sample_batch(batch: list[tuple[SampleJob, SampleSettings]], cfg: Any, checked: CheckedRecipe, registry: Registry,
                  request: SampleRequest, model: Any, ae: Any, text_encoder: Any, refiner: Any,
                  info: pdist.DistInfo, dtype: torch.dtype, out_dir: Path, identities: dict[str, Any],
                  progress: Any, sp_group: Any = None, label: str = "") -> list[dict[str, Any]]:
    """Denoise the videos of ``batch`` together (one seed and generator each) and write them one by one;
    ``label`` names the batch on ``progress`` (see :func:`progress_label`)."""
    settings = batch[0][1]
    refined = [refiner([job.prompt.text])[0] for job, _ in batch]
    texts = list(refined)
    if cfg.clean_captions:
        from osctl.text.clean import clean_caption

        texts = [clean_caption(t, checked.loaded.recipe.data.captions.support_chinese) for t in texts]
    scheduler = build_sampler(checked.loaded.recipe, registry, recorded=request.recorded_diffusion)
    pipeline = VideoPipeline(model, ae, text_encoder, scheduler, geometry=checked.geometry,
                             device=info.device, dtype=dtype, offload=cfg.cpu_offload,
                             sequence_parallel=sp_group if settings.num_frames > 1 else None)
    generators = [torch.Generator().manual_seed(job.seed) for job, _ in batch]
    started = time.perf_counter()
    task = progress.add_task(label, total=settings.num_sampling_steps) if progress is not None else None
    result = pipeline(
        texts, settings.negative, num_frames=settings.num_frames, height=settings.height, width=settings.width,
        num_inference_steps=settings.num_sampling_steps, guidance_scale=settings.guidance_scale,
        guidance_scale_2=cfg.guidance_scale_2,
        generator=generators if len(batch) > 1 else generators[0], max_sequence_length=cfg.max_sequence_length,
        callback=(lambda i, n: progress.update(task, completed=i)) if task is not None else None,
    )
    seconds = round((time.perf_counter() - started) / len(batch), 3)
    with writing(out_dir):
        return [_write_sample(job, i, settings, refined[i], texts[i], result, cfg, checked, info, out_dir, identities,
                              scheduler, request, seconds, len(batch))
                for i, (job, _) in enumerate(batch)]


def _write_sample(job: SampleJob, i: int, settings: SampleSettings, refined: str, text: str, result: Any, cfg: Any,
                  checked: CheckedRecipe, info: pdist.DistInfo, out_dir: Path, identities: dict[str, Any],
                  scheduler: Any, request: SampleRequest, seconds: float, batch: int) -> dict[str, Any]:
    """Write video ``i`` of a pipeline result (rank 0 only under --sp) and its sidecar; return the sidecar record."""
    spec = job.prompt
    frames = result.videos[i].cpu().numpy()
    if sp_rank_writes := (not cfg.sp or info.is_main):
        stem = f"{spec.index:04d}-{job.k:02d}-{slug(spec.text)}"
        from osctl.media.write import write_image, write_video

        if settings.num_frames == 1:
            media = write_image(out_dir / f"{stem}.png", frames[0], root=out_dir)
        else:
            media = write_video(out_dir / f"{stem}.mp4", frames, cfg.fps, root=out_dir)
    record = {
        "file": media.name if sp_rank_writes else None,
        "prompt": spec.text, "refined_prompt": refined, "encoded_prompt": text, "negative_prompt": settings.negative,
        "prompt_index": spec.index, "sample_index": job.k, "seed": job.seed,
        "sampler": cfg.sample_method, "sampler_ignored_options": getattr(scheduler, "osctl_ignored_options", {}),
        "steps": settings.num_sampling_steps, "guidance_scale": settings.guidance_scale,
        "guidance_scale_2": cfg.guidance_scale_2,
        "num_frames": settings.num_frames, "height": settings.height, "width": settings.width,
        "fps": cfg.fps, "dtype": cfg.dtype, "refiner": checked.loaded.recipe.refiner.name,
        "components": identities, "source": request.source, "osctl_version": __version__,
        "world_size": info.world_size, "sequence_parallel": bool(cfg.sp and info.world_size > 1),
        "batch_size": batch, "seconds": seconds,
        # frames_sha256: the decoded frames before encoding (uint8 T x H x W x 3), equal across runs and process
        # counts; H.264 changes them, so only file_sha256 checks the written file (what sha256sum FILE prints)
        "frames_sha256": hashlib.sha256(frames.tobytes()).hexdigest(),
        "file_sha256": file_sha256(media) if sp_rank_writes else None,
    }
    if cfg.save_latents and sp_rank_writes:
        from safetensors.torch import save_file

        with atomic_file(out_dir / f"{stem}.latents.safetensors", root=out_dir) as tmp:
            save_file({"latents": result.latents[i].cpu().contiguous()}, str(tmp))
        record["latents_file"] = f"{stem}.latents.safetensors"
    if sp_rank_writes:
        atomic_write_text(out_dir / f"{stem}.json", json.dumps(record, indent=2, sort_keys=True), root=out_dir)
    return record


def _sequence_parallel_group(model: Any, info: pdist.DistInfo) -> Any:
    """The whole world as one sequence-parallel group, after checking the model's heads split over it (the
    latent frames of every video were checked before anything was built)."""
    from osctl.parallel.layout import SAMPLE_SP_NAMES, ParallelLayout

    layout = ParallelLayout(world_size=info.world_size, sp_size=info.world_size, names=SAMPLE_SP_NAMES)
    layout.check_heads(int(model.config.num_attention_heads))
    group = torch.distributed.group.WORLD
    model.set_sequence_parallel(group)
    return group


def write_grid(out_dir: Path, jobs: list[SampleJob], cfg: Any) -> Path | None:
    """One grid of every sample, read back from the files the ranks wrote: a row per prompt, captioned
    with its number and text, its samples side by side in sample order (column k is sample k of every
    prompt; a missing file leaves its cell empty). Images give a PNG; videos an MP4 and a GIF."""
    from osctl.media.read import read_spread_frames
    from osctl.media.write import captioned_grid, write_image, write_video

    rows: dict[int, tuple[str, list[Any]]] = {}
    for job in jobs:
        stem = f"{job.prompt.index:04d}-{job.k:02d}-{slug(job.prompt.text)}"
        found = next((m for m in (out_dir / f"{stem}.mp4", out_dir / f"{stem}.png") if m.exists()), None)
        row = rows.setdefault(job.prompt.index, (f"{job.prompt.index + 1}. {job.prompt.text}", []))[1]
        row.extend([None] * (job.k - len(row)))
        row.append(read_spread_frames(found)[0] if found is not None else None)
    if not any(v is not None for _, row in rows.values() for v in row):
        return None
    tiled = captioned_grid([rows[index] for index in sorted(rows)])
    name = f"grid-{cfg.sample_method}-gs{cfg.guidance_scale:g}-s{cfg.num_sampling_steps}"
    if tiled.shape[0] == 1:
        return write_image(out_dir / f"{name}.png", tiled[0], root=out_dir)
    from osctl.media.write import write_gif

    write_gif(out_dir / f"{name}.gif", tiled, min(cfg.fps, 12), root=out_dir)  # viewable anywhere, e.g. a browser
    return write_video(out_dir / f"{name}.mp4", tiled, cfg.fps, root=out_dir)
