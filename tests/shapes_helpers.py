"""Sample folders for `osctl eval shapes` tests: real shapes clips or noise, written like `osctl sample` does."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from osctl.media.write import write_image, write_video
from osctl.sample.prompts import slug
from osctl.synth.shapes import COLORS, MOTIONS, SHAPES, ItemPlan, caption, plan_dataset, render


def covering_plans(count: int = 18, seed: int = 5) -> list[ItemPlan]:
    """Shapes clips (no hold-out) in which every colour, shape and motion appears; cut and crop included."""
    plans = plan_dataset(count, 0, seed=seed, hold_out=False)
    for attribute, values in (("color", COLORS), ("shape", SHAPES), ("motion", MOTIONS)):
        assert {getattr(p, attribute) for p in plans} == set(values), f"seed {seed} misses a {attribute}"
    return plans


def _sidecar(out: Path, stem: str, prompt: str, index: int, frames: int, h: int, w: int, fps: int, media: Path) -> None:
    record = {"file": media.name, "prompt": prompt, "prompt_index": index, "sample_index": 0, "seed": 1000 + index,
              "num_frames": frames, "height": h, "width": w, "fps": fps}
    (out / f"{stem}.json").write_text(json.dumps(record, indent=2, sort_keys=True))


def write_shape_samples(out: Path, plans: list[ItemPlan], *, images: int = 0) -> list[str]:
    """Write each plan as ``NNNN-00-<slug>.mp4`` + sidecar (and ``images`` still shapes as .png); return prompts."""
    out.mkdir(parents=True, exist_ok=True)
    prompts = []
    for i, plan in enumerate(plans):
        prompt = caption(plan.color, plan.shape, plan.motion, plan.background)
        stem = f"{i:04d}-00-{slug(prompt)}"
        frames = render(plan)
        media = write_video(out / f"{stem}.mp4", frames, plan.fps or 24)
        _sidecar(out, stem, prompt, i, frames.shape[0], frames.shape[1], frames.shape[2], plan.fps or 24, media)
        prompts.append(prompt)
    for j, plan in enumerate(plan_dataset(0, images, seed=11, hold_out=False)):
        i = len(plans) + j
        prompt = caption(plan.color, plan.shape, "still", plan.background)
        stem = f"{i:04d}-00-{slug(prompt)}"
        frames = render(plan)
        media = write_image(out / f"{stem}.png", frames[0])
        _sidecar(out, stem, prompt, i, 1, frames.shape[1], frames.shape[2], 24, media)
        prompts.append(prompt)
    return prompts


def write_noise_samples(out: Path, count: int = 15, *, seed: int = 0, size: tuple[int, int] = (64, 64),
                        frames: int = 9) -> list[str]:
    """Uniform-noise videos whose sidecar prompts cycle through colours, shapes and motions."""
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    colors, prompts = list(COLORS), []
    for i in range(count):
        prompt = caption(colors[i % len(colors)], SHAPES[i % len(SHAPES)], MOTIONS[(i // 3) % len(MOTIONS)], "black")
        stem = f"{i:04d}-00-{slug(prompt)}"
        video = rng.integers(0, 256, (frames, *size, 3), dtype=np.uint8)
        media = write_video(out / f"{stem}.mp4", video, 12)
        _sidecar(out, stem, prompt, i, frames, size[0], size[1], 12, media)
        prompts.append(prompt)
    return prompts
