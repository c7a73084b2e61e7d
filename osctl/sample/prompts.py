"""Prompt lists for sampling: ``--prompt`` values, a text file, or JSONL with per-line overrides.

Text files hold one prompt per line; blank lines and ``#`` comments are skipped. JSONL lines are
objects with a ``prompt`` key and optional overrides (``negative_prompt``, ``seed``, ``num_frames``,
``height``, ``width``, ``num_samples``, ``guidance_scale``, ``num_sampling_steps``); sizes are checked
against the recipe's latent geometry (:mod:`osctl.sample.sizes`) line by line.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from osctl.data.records import MAX_FRAMES, MAX_SIDE
from osctl.errors import UsageError
from osctl.geometry import LatentGeometry

MAX_SEED = 2**63 - 1
"""Largest seed a prompt may fix (torch generators take 64-bit seeds; sample k of it uses seed + k)."""


def _integer(value: Any, *, low: int, high: int | None = None) -> int:
    """``value`` as an int in ``[low, high]`` (integral floats such as ``720.0`` too), else ValueError."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError
    if isinstance(value, float) and not value.is_integer():
        raise TypeError
    number = int(value)
    if number < low or (high is not None and number > high):
        raise ValueError
    return number


def _guidance(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError
    if not math.isfinite(value) or value < 0:
        raise ValueError
    return float(value)


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError
    return value


# key -> (converter that raises TypeError/ValueError, what a valid value is)
OVERRIDES: dict[str, tuple[Callable[[Any], Any], str]] = {
    "negative_prompt": (_text, "a string"),
    "seed": (lambda v: _integer(v, low=0, high=MAX_SEED), f"an integer from 0 to 2**63 - 1 ({MAX_SEED})"),
    "num_frames": (lambda v: _integer(v, low=1, high=MAX_FRAMES), f"an integer from 1 to {MAX_FRAMES}"),
    "height": (lambda v: _integer(v, low=1, high=MAX_SIDE), f"an integer from 1 to {MAX_SIDE}"),
    "width": (lambda v: _integer(v, low=1, high=MAX_SIDE), f"an integer from 1 to {MAX_SIDE}"),
    "num_samples": (lambda v: _integer(v, low=1, high=10_000), "an integer from 1 to 10000"),
    "guidance_scale": (_guidance, "a finite number >= 0"),
    "num_sampling_steps": (lambda v: _integer(v, low=1, high=100_000), "an integer from 1 to 100000"),
}


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


def read_prompts(prompts: list[str] | None, prompts_file: Path | None, *,
                 geometry: LatentGeometry) -> list[PromptSpec]:
    """The prompts to sample, in order; an empty list is a usage error.

    Every line of ``prompts_file`` is checked here, before anything is sampled, its sizes against
    ``geometry``: a bad line late in the file stops the command before the first video instead of after
    the videos above it.
    """
    specs: list[PromptSpec] = [PromptSpec(i, p) for i, p in enumerate(prompts or [])]
    if prompts_file is not None:
        lines = _read_text(Path(prompts_file)).splitlines()
        jsonl = prompts_file.suffix.lower() in (".jsonl", ".ndjson")
        for number, line in enumerate(lines, start=1):
            stripped = line.strip()
            if not stripped or stripped.startswith("#"):
                continue
            if jsonl:
                specs.append(_json_line(prompts_file, number, stripped, len(specs), geometry))
            else:
                specs.append(PromptSpec(len(specs), stripped))
    if not specs:
        where = f" ({prompts_file} has no prompts)" if prompts_file is not None else ""
        raise UsageError(f"no prompts to sample{where}; pass --prompt TEXT or --prompts FILE.")
    for spec in specs:
        if not spec.text.strip():
            raise UsageError(f"prompt {spec.index} is empty; every prompt needs text.")
    return specs


def _read_text(path: Path) -> str:
    """The text of a prompts file; a missing, unreadable or binary file is a ``UsageError`` naming it."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise UsageError(f"--prompts {path} does not exist.") from None
    except IsADirectoryError:
        raise UsageError(f"--prompts {path} is a folder; pass a .txt or .jsonl file of prompts.") from None
    except OSError as exc:
        raise UsageError(f"--prompts {path} cannot be read: {exc.strerror}.") from None
    if b"\0" in data:
        raise UsageError(f"--prompts {path} is a binary file (it contains NUL bytes); pass a UTF-8 text file "
                         "with one prompt per line.")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise UsageError(f"--prompts {path} is not UTF-8 text (line {line}: {exc.reason}); save it as UTF-8 "
                         "with one prompt per line.") from None


def _json_line(path: Path, number: int, text: str, index: int, geometry: LatentGeometry) -> PromptSpec:
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"{path}:{number}: not valid JSON ({exc.msg} at column {exc.colno}).") from None
    except RecursionError:
        raise UsageError(f"{path}:{number}: values are nested too deeply; each line is one flat JSON object.") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("prompt"), str):
        raise UsageError(f"{path}:{number}: each JSONL line must be an object with a string 'prompt'.")
    overrides = {}
    for key, value in obj.items():
        if key == "prompt":
            continue
        if key not in OVERRIDES:
            raise UsageError(f"{path}:{number}: unknown key {key!r}; allowed: prompt, {', '.join(OVERRIDES)}.")
        convert, valid = OVERRIDES[key]
        try:
            overrides[key] = convert(value)
        except (TypeError, ValueError, OverflowError):
            shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
            raise UsageError(f"{path}:{number}: {key} must be {valid}, got {shown}.") from None
    sizes = {key: overrides[key] for key in ("num_frames", "height", "width") if key in overrides}
    problems = geometry.size_problems(**sizes)
    if problems:
        raise UsageError(f"{path}:{number}: " + "; ".join(f"{key} {problem}" for key, problem in problems) + ".")
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
