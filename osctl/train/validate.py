"""Validation sampling during training: every ``train.validation_steps`` steps, sample the validation
prompts with the current and the EMA weights through the same ``VideoPipeline`` as ``osctl sample``.

Every rank calls the validator (gathering sharded weights is a collective). Prompts are spread over
the first ``min(world, prompts)`` ranks; rank 0 sends them the gathered weights and the others go
straight back to training, so no rank waits longer than the slowest sampler. Sampling runs in a
forked RNG state, so a run with validation trains exactly like one without. A sampling failure is
logged with the rank and does not stop training.

Output: ``output_dir/validation/step-N/{model,model_ema}/PPPP-slug.mp4`` (``.png`` for one frame),
with the seeds ``osctl sample`` would give the same prompt list (``sample.seed``). The call returns the
files written by every rank to rank 0 (``{"model": [...], "model_ema": [...]}``), which the loop
hands to the trackers; other ranks get None.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from osctl.build import DTYPES, build_model, build_sampler
from osctl.parallel import dist as pdist
from osctl.recipe.validate import CheckedRecipe
from osctl.registry import Registry
from osctl.sample.pipeline import VideoPipeline
from osctl.sample.prompts import PromptSpec, expand_jobs, slug

log = logging.getLogger("osctl.train.validate")


class Validator:
    """Callable ``validator(step)`` that samples the validation prompts on this rank's share."""

    def __init__(self, checked: CheckedRecipe, registry: Registry, *, strategy: Any, ema: Any,
                 autoencoder: Any, text_encoder: Any, info: pdist.DistInfo, output_dir: Path) -> None:
        self.checked, self.registry = checked, registry
        self.recipe = checked.loaded.recipe
        self.strategy, self.ema = strategy, ema
        self.autoencoder, self.text_encoder = autoencoder, text_encoder
        self.info = info
        self.output_dir = output_dir
        prompts = [PromptSpec(i, text) for i, text in enumerate(self.recipe.train.validation_prompts)]
        self.jobs = expand_jobs(prompts, self.recipe.sample.seed, 1)
        samplers = min(info.world_size, len(self.jobs))
        self.mine = self.jobs[info.rank::info.world_size]
        # ranks 0..samplers-1 receive the weights; every rank creates the group (torch.distributed's rule)
        self.group = dist.new_group(list(range(samplers))) if info.world_size > 1 and samplers > 1 else None
        self.samplers = samplers

    def __call__(self, step: int) -> dict[str, list[Path]] | None:
        """Sample every prompt of this rank with the current weights and with the EMA weights; returns
        every rank's written files by label on rank 0 (None elsewhere)."""
        written: dict[str, list[Path]] = {}
        variants: list[tuple[str, Any]] = [("model", None)]
        if self.ema is not None:
            names = [name for name, _ in self.strategy.local_parameters()]
            variants.append(("model_ema", list(zip(names, self.ema.shadow, strict=True))))
        for label, local in variants:
            weights = self._replicated(self.strategy.full_state_dict(local))
            if not self.mine or weights is None:
                continue
            files: list[Path] = []
            try:
                self._sample(step, label, weights, files)
            except Exception as exc:  # validation must never end a training run
                log.warning("rank %d: validation at step %d (%s) failed: %s: %s", self.info.rank, step, label,
                            type(exc).__name__, exc)
            if files:
                written[label] = files
        return self._gathered(written)

    def _gathered(self, written: dict[str, list[Path]]) -> dict[str, list[Path]] | None:
        """Every rank's written files on rank 0, sorted by name within a label (None on other ranks)."""
        if self.info.world_size == 1 or not dist.is_initialized():
            return written
        parts: list[Any] = [None] * self.info.world_size if self.info.is_main else []
        payload = {label: [str(p) for p in paths] for label, paths in written.items()}
        dist.gather_object(payload, parts if self.info.is_main else None, dst=0)
        if not self.info.is_main:
            return None
        merged: dict[str, list[Path]] = {}
        for part in parts:
            for label, paths in (part or {}).items():
                merged.setdefault(label, []).extend(Path(p) for p in paths)
        return {label: sorted(paths, key=lambda p: p.name) for label, paths in merged.items()}

    def _replicated(self, full: dict[str, torch.Tensor] | None) -> dict[str, torch.Tensor] | None:
        """Rank 0's full state dict on every sampling rank (None on ranks that sample nothing)."""
        if self.info.rank >= self.samplers:
            return None
        if self.group is None:
            return full
        shapes = self._skeleton().state_dict()
        out = {}
        for name in sorted(shapes):
            meta = shapes[name]
            tensor = full[name].to(meta.dtype) if self.info.is_main else torch.empty(meta.shape, dtype=meta.dtype)
            tensor = tensor.to(self.info.device).contiguous()
            dist.broadcast(tensor, src=0, group=self.group)
            out[name] = tensor
        return out

    def _skeleton(self) -> torch.nn.Module:
        """The model without storage (meta device): shapes to receive into and a body to load into (with the
        run's LoRA adapter layers when it trains one)."""
        model = build_model(self.checked, self.registry, dtype=torch.float32, meta=True)
        spec = getattr(self.strategy.module, "_osctl_adapter_spec", None)
        if spec is not None:
            from osctl.train.lora import add_adapter

            add_adapter(model, spec)
        return model

    def _sample(self, step: int, label: str, weights: dict[str, torch.Tensor], files: list[Path]) -> None:
        from osctl.media.write import write_image, write_video
        from osctl.text import NEGATIVE_PROMPT

        cfg = self.recipe.sample
        dtype = DTYPES[cfg.dtype]
        model = self._skeleton()
        model.load_state_dict(weights, assign=True)
        model = model.to(self.info.device, dtype).eval()
        folder = self.output_dir / "validation" / f"step-{step}" / label
        folder.mkdir(parents=True, exist_ok=True)
        negative = cfg.negative_prompt if cfg.negative_prompt is not None else NEGATIVE_PROMPT
        devices = [self.info.device] if self.info.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            for job in self.mine:
                pipeline = VideoPipeline(model, self.autoencoder, self.text_encoder,
                                         build_sampler(self.recipe, self.registry), geometry=self.checked.geometry,
                                         device=self.info.device, dtype=dtype)
                result = pipeline(job.prompt.text, negative, num_frames=cfg.num_frames, height=cfg.height,
                                  width=cfg.width, num_inference_steps=cfg.num_sampling_steps,
                                  guidance_scale=cfg.guidance_scale, guidance_scale_2=cfg.guidance_scale_2,
                                  generator=torch.Generator().manual_seed(job.seed),
                                  max_sequence_length=cfg.max_sequence_length)
                frames = result.videos[0].cpu().numpy()
                stem = f"{job.prompt.index:04d}-{slug(job.prompt.text)}"
                if cfg.num_frames == 1:
                    files.append(write_image(folder / f"{stem}.png", frames[0]))
                else:
                    files.append(write_video(folder / f"{stem}.mp4", frames, cfg.fps))
