"""Training from the cache: ``data.cache: auto | require | off``.

``osctl.train.run.setup_training`` asks :func:`training_source` for its batch source. With a valid
cache (its spec equals the recipe's, every sample built) the source reads latents and text states
from it (:mod:`osctl.cache.dataset`), and the run builds neither the autoencoder nor the text encoder
— the autoencoder only when validation sampling must decode, the text encoder only when the
validation prompts are not in the cache (:meth:`TrainingCache.prompt_encoder`). Otherwise:

- ``require``: the run stops before building anything, naming the first difference and the command
  that rebuilds the cache;
- ``auto``: a warning and a plan note, and the run encodes on the fly (no cache folder at all: silently);
- ``off``: the cache is not looked at.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from osctl.cache.build import cache_folder, wanted_spec
from osctl.cache.reader import CacheReader, read_manifest
from osctl.cache.spec import differences
from osctl.data.build import index_folder
from osctl.errors import ConfigError

log = logging.getLogger("osctl.cache")

REBUILD = "osctl data cache --recipe RECIPE"




def cache_problem(checked: Any, index: Any, read: Any, folder: Path) -> str | None:
    """Why the cache in ``folder`` cannot serve this recipe over ``index`` (None: it can)."""
    manifest = read_manifest(folder)
    if manifest is None:
        return f"there is no cache in {folder}"
    changed = differences(manifest.get("spec", {}), wanted_spec(checked, index, read, recorded=manifest.get("spec")))
    if changed:
        more = f" (and {len(changed) - 1} more difference(s))" if len(changed) > 1 else ""
        return f"the cache in {folder} was built for another recipe or data: {changed[0]}{more}"
    if not manifest.get("complete"):
        counts = manifest.get("counts") or {}
        done = f" ({counts.get('ok', 0) + counts.get('bad', 0)} of {len(index)} samples)" if counts else ""
        return f"the cache in {folder} is not finished{done}"
    return None


def dry_run_line(recipe: Any) -> tuple[str, str]:
    """The dry run's word on the cache (read only: whether it matches the recipe is checked when the run starts)."""
    mode = recipe.data.cache.mode
    folder = cache_folder(recipe, index_folder(recipe))
    if mode == "off":
        return "data cache", "off (data.cache): the encoders run at every step"
    manifest = read_manifest(folder)
    if manifest is None:
        return "data cache", (f"none in {folder}: " + ("the run refuses to start (data.cache: require); build it with "
                                                       f"`{REBUILD}`" if mode == "require" else
                                                       "the encoders run at every step"))
    state = "complete" if manifest.get("complete") else "not finished"
    saved = sum(int(v) for v in (manifest.get("weights_bytes") or {}).values()) / 1024**3
    return "data cache", (f"{folder} ({state}): used if it matches the recipe (checked at start), sparing "
                          f"{saved:.2f} GB of encoder weights per process")


@dataclass
class TrainingCache:
    """The cache a run trains from, and what it spares the run."""

    reader: CacheReader
    folder: Path

    def prompt_encoder(self, checked: Any, registry: Any, *, device: torch.device, dtype: torch.dtype,
                       validating: bool) -> Any:
        """What validation encodes prompts with: nothing without validation, the cached prompts when they
        are all there, else the text encoder itself."""
        if not validating:
            return None
        recipe = checked.loaded.recipe
        prompts = CachedPrompts.from_reader(self.reader, device=device)
        if prompts.holds(_validation_texts(recipe), recipe.sample.max_sequence_length):
            return prompts
        from osctl.build import build_text_encoder

        log.warning("the validation prompts are not all in the cache %s: the text encoder is built for them "
                    "(rebuild the cache to include them)", self.folder)
        return build_text_encoder(checked, registry, device=device, dtype=dtype)

    def plan_lines(self, recipe: Any, autoencoder: Any, text_encoder: Any) -> list[tuple[str, str]]:
        """The plan's lines on the frozen components: the cache, what was not built and the memory that saves
        (the encoders' weights as the build measured them, so nothing is built or imported to count them)."""
        from osctl.train.plan import frozen_lines

        counts = self.reader.counts
        lines = [("cache", f"{self.folder}: {counts['ok']} samples ({counts['bad']} recorded bad), "
                           f"{str(self.reader.dtype).removeprefix('torch.')} storage; latents and text states are "
                           "read, not encoded")]
        real_te = None if isinstance(text_encoder, CachedPrompts) else text_encoder
        weights = self.reader.manifest.get("weights_bytes") or {}
        spared = [key for key, built in (("text_encoder", real_te), ("autoencoder", autoencoder)) if built is None]
        if spared:
            saved = sum(int(weights.get(key, 0)) for key in spared) / 1024**3
            amount = f"{saved:.2f} GB" if saved >= 0.1 else f"{saved * 1024:.1f} MB"
            names = " and the ".join(key.replace("_", " ") for key in spared)
            lines.append(("memory saved by the cache", f"{amount} of weights per process: the {names} not built"))
        built, _ = frozen_lines(recipe, real_te if real_te is not None else "-", autoencoder if autoencoder is not None
                                else "-")
        for (label, value), component, section in zip(built, (real_te, autoencoder),
                                                      (recipe.text_encoder, recipe.autoencoder), strict=True):
            lines.append((label, f"{value} (for validation sampling)" if component is not None else
                          f"{section.name}: not built (its outputs are in the cache)"))
        return lines


def _validation_texts(recipe: Any) -> list[str]:
    from osctl.text import NEGATIVE_PROMPT

    negative = recipe.sample.negative_prompt if recipe.sample.negative_prompt is not None else NEGATIVE_PROMPT
    return [*recipe.train.validation_prompts, negative, ""]


def training_source(checked: Any, registry: Any, info: Any, *, layout: Any, dp_rank: int) -> tuple[Any, dict[str, str],
                                                                                                    TrainingCache | None]:
    """``(batch source, plan lines, cache)`` of this rank: over the cache when ``data.cache`` allows and a valid
    one exists (``cache`` is then set), else the loader's own (:func:`osctl.data.stream.loader.build_batch_source`)."""
    from osctl.data.stream.loader import build_batch_source

    recipe = checked.loaded.recipe
    mode = recipe.data.cache.mode
    folder = cache_folder(recipe, index_folder(recipe))
    if mode == "off" or (mode == "auto" and read_manifest(folder) is None):
        source, summary = build_batch_source(checked, registry, info, layout=layout, dp_rank=dp_rank)
        return source, summary, None
    if read_manifest(folder) is None:  # require, and nothing to check: refuse before the index is built
        raise ConfigError(f"data.cache is require but there is no cache in {folder}.",
                          hint=f"build it with `{REBUILD}`, or set data.cache: auto to train without it.")
    from osctl.data.stream.loader import plan_stream, prepare_index

    index, settings, note = prepare_index(recipe, info, layout, checked.geometry)
    plan = plan_stream(recipe, index, settings, note, layout=layout, dp_rank=dp_rank)
    folder = cache_folder(recipe, index.path.parent)
    from osctl.cache.build import _agree

    problem = _agree(info, lambda: cache_problem(checked, index, plan.read, folder))
    if problem is not None:
        if mode == "require":
            raise ConfigError(f"data.cache is require but {problem}.",
                              hint=f"build it with `{REBUILD}{' --overwrite' if 'another' in problem else ''}`, or set "
                                   "data.cache: auto to train without it.")
        log.warning("%s: training encodes on the fly (data.cache: auto); rebuild it with `%s`", problem, REBUILD)
        source, summary = build_batch_source(checked, registry, info, layout=layout, dp_rank=dp_rank)
        return source, {**summary, "cache": f"not used: {problem}"}, None
    return _cached_source(recipe, index, plan, folder, info)


def _cached_source(recipe: Any, index: Any, plan: Any, folder: Path, info: Any) -> tuple[Any, dict[str, str], TrainingCache]:
    from osctl.cache.dataset import CachedCollate, CachedSampleDataset
    from osctl.data.stream.loader import IndexBatchSource

    reader = CacheReader(folder)
    dataset = CachedSampleDataset(index, plan.read, reader, members=plan.sampler.members)
    collate = CachedCollate(reader, pad=plan.pad, global_batch=plan.sampler.global_batch)
    source = IndexBatchSource(dataset, plan.sampler, collate, num_workers=recipe.data.num_workers,
                              pin_memory=getattr(info.device, "type", "cpu") == "cuda",
                              max_bad_fraction=plan.max_bad_fraction, timeout_s=plan.backstop_s, shapes=plan.shapes)
    summary = dict(plan.summary)
    summary["reading"] = (f"{recipe.data.num_workers} worker(s) over the cache {folder} (memory-mapped), up to "
                          f"{plan.read.max_retries} replacement(s) per bad sample, stop above {plan.max_bad_fraction:.1%} bad")
    return source, summary, TrainingCache(reader, folder)


class CachedPrompts:
    """A stand-in text encoder for validation sampling that serves cached prompt states (``tokenize`` gives
    each prompt's row as its token ids; ``encode`` looks the rows up). Only the prompts the cache holds
    can be encoded."""

    def __init__(self, prompts: dict[tuple[str, int | None], tuple[torch.Tensor, torch.Tensor]], *,
                 device: torch.device, dtype: torch.dtype) -> None:
        self.keys = list(prompts)
        self.rows = [prompts[key] for key in self.keys]
        self.device = device
        self.dtype = dtype
        first = self.rows[0][0] if self.rows else torch.zeros(1, 1)
        self.max_length = int(first.shape[0])
        self.hidden_size = int(first.shape[-1])

    @classmethod
    def from_reader(cls, reader: CacheReader, *, device: torch.device) -> CachedPrompts:
        return cls(reader.prompts, device=device, dtype=reader.text_dtype)

    def holds(self, texts: list[str], max_length: int) -> bool:
        """True when every text is cached for ``max_length`` tokens."""
        return all((text, max_length) in self.keys for text in texts)

    def parameters(self) -> Any:
        return iter(())

    def tokenize(self, texts: list[str] | str, max_length: int | None = None) -> dict[str, torch.Tensor]:
        batch = [texts] if isinstance(texts, str) else list(texts)
        rows, masks = [], []
        for text in batch:
            key = (text, max_length)
            if key not in self.keys:
                raise ConfigError(f"the prompt {text!r} is not in the cache; rebuild it with `{REBUILD}` to include the "
                                  "validation prompts.")
            row = self.keys.index(key)
            rows.append(row)
            masks.append(self.rows[row][1])
        mask = torch.stack(masks)
        ids = torch.zeros_like(mask)
        ids[:, 0] = torch.tensor(rows)
        return {"input_ids": ids, "attention_mask": mask}

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        del attention_mask
        states = [self.rows[int(row)][0] for row in input_ids[:, 0].tolist()]
        return torch.stack(states).to(device=self.device, dtype=self.dtype)
