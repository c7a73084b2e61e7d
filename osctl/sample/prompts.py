"""Prompt lists for sampling: ``--prompt`` values, a text file, or JSONL with per-line overrides.

Text files hold one prompt per line; blank lines and ``#`` comments are skipped. JSONL lines are
objects with a ``prompt`` key and optional overrides (``negative_prompt``, ``seed``, ``num_frames``,
``height``, ``width``, ``num_samples``, ``guidance_scale``, ``num_sampling_steps``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from osctl.errors import UsageError

OVERRIDES = {"negative_prompt": str, "seed": int, "num_frames": int, "height": int, "width": int,
             "num_samples": int, "guidance_scale": float, "num_sampling_steps": int}


@dataclass(frozen=True)
class PromptSpec:
    """One prompt with its position in the list and any per-prompt overrides."""

    index: int
    text: str
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SampleJob:
    """One video to make: prompt ``index``, sample ``k`` of it, with its own seed."""

    prompt: PromptSpec
    k: int
    seed: int


def read_prompts(prompts: list[str] | None, prompts_file: Path | None) -> list[PromptSpec]:
    """The prompts to sample, in order; an empty list is a usage error."""
    specs: list[PromptSpec] = [PromptSpec(i, p) for i, p in enumerate(prompts or [])]
    if prompts_file is not None:
        if not prompts_file.is_file():
            raise UsageError(f"--prompts {prompts_file} does not exist.")
        lines = prompts_file.read_text(encoding="utf-8").splitlines()
        jsonl = prompts_file.suffix.lower() in (".jsonl", ".ndjson")
        for number, line in enumerate(lines, start=1):
            stripped = line.strip()
            if not stripped or stripped.startswith("#"):
                continue
            if jsonl:
                specs.append(_json_line(prompts_file, number, stripped, len(specs)))
            else:
                specs.append(PromptSpec(len(specs), stripped))
    if not specs:
        where = f" ({prompts_file} has no prompts)" if prompts_file is not None else ""
        raise UsageError(f"no prompts to sample{where}; pass --prompt TEXT or --prompts FILE.")
    for spec in specs:
        if not spec.text.strip():
            raise UsageError(f"prompt {spec.index} is empty; every prompt needs text.")
    return specs


def _json_line(path: Path, number: int, text: str, index: int) -> PromptSpec:
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"{path}:{number}: not valid JSON ({exc.msg} at column {exc.colno}).") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("prompt"), str):
        raise UsageError(f"{path}:{number}: each JSONL line must be an object with a string 'prompt'.")
    overrides = {}
    for key, value in obj.items():
        if key == "prompt":
            continue
        if key not in OVERRIDES:
            raise UsageError(f"{path}:{number}: unknown key {key!r}; allowed: prompt, {', '.join(OVERRIDES)}.")
        try:
            overrides[key] = OVERRIDES[key](value)
        except (TypeError, ValueError):
            raise UsageError(f"{path}:{number}: {key} must be {OVERRIDES[key].__name__}, got {value!r}.") from None
    return PromptSpec(index, obj["prompt"], overrides)


def sample_seed(base_seed: int, prompt_index: int, k: int) -> int:
    """Seed of sample ``k`` of prompt ``prompt_index``: depends on nothing else (not the process count)."""
    digest = hashlib.sha256(f"osctl:{base_seed}:{prompt_index}:{k}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def expand_jobs(specs: list[PromptSpec], base_seed: int, samples_per_prompt: int) -> list[SampleJob]:
    """Every (prompt, sample) pair with its seed; a JSONL ``seed`` fixes sample 0 of that prompt."""
    jobs = []
    for spec in specs:
        count = int(spec.overrides.get("num_samples", samples_per_prompt))
        for k in range(count):
            if "seed" in spec.overrides:
                seed = int(spec.overrides["seed"]) + k
            else:
                seed = sample_seed(base_seed, spec.index, k)
            jobs.append(SampleJob(spec, k, seed))
    return jobs


def slug(text: str, limit: int = 40) -> str:
    """A file-name-safe short form of a prompt."""
    chars = [c.lower() if c.isalnum() else "-" for c in text.strip()]
    collapsed = "-".join(filter(None, "".join(chars).split("-")))
    return collapsed[:limit].rstrip("-") or "prompt"
