"""``osctl data cache inspect DIR``: what a cache holds, for which recipe and components, how complete, how big.

Reads the manifest and every shard's header (not its data), so it works on a cache that is still
being built or was interrupted. ``--json`` schema, stable: ``{"schema": "osctl.data.cache.inspect/1",
"dir", "version", "readable", "complete", "created", "index": {"samples", "content_sha256"}, "storage": {"dtype", "views",
"shard_samples"}, "components": {"autoencoder"|"text_encoder": {"name", "dtype", "config_sha256",
"weights_sha256"}}, "recipe": {key: value}, "latents", "text", "shards": {"total", "published",
"stale", "leftovers"}, "samples": {"ok", "bad", "missing", "random_frames"}, "stored": {"views",
"texts", "prompts"}, "bytes": {"shards", "tables", "prompts", "total", "per_sample"}, "text_states":
{"storage", "padded_length", "mean_length", "bytes": {"stored", "padded"}}, "bad_examples"}``.

``readable``: whether this osctl reads the cache's format ``version`` (an older one must be rebuilt).
``text_states`` compares what the caption variants' states and masks take on disk (``stored``; trimmed to each
prompt when ``storage`` is ``"trimmed"``, see :mod:`osctl.cache.spec`) with what they would take at the
encoder's padded length (``padded``); ``mean_length`` is the mean of the stored lengths in tokens.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from osctl.cache.reader import read_manifest
from osctl.cache.spec import FORMAT, VERSION
from osctl.cache.store import (
    PROMPTS_FILE,
    SAMPLES_TABLE,
    SHARDS,
    STORAGE_DTYPES,
    TEXTS_TABLE,
    leftovers,
    read_header,
    read_prompts,
    shard_name,
    shard_rows,
    stored_texts,
)
from osctl.errors import DataError, UsageError

SCHEMA = "osctl.data.cache.inspect/1"


def inspect_cache(folder: Path) -> dict[str, Any]:
    """The report of the cache in ``folder`` (see the module docstring); ``UsageError`` when there is none."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    if manifest is None:
        raise UsageError(f"{folder} holds no cache (no manifest.json); build one with `osctl data cache --recipe RECIPE`.")
    spec = manifest.get("spec", {})
    sha = manifest.get("spec_sha256")
    samples = int(spec.get("index", {}).get("samples", 0))
    shard_samples = int(spec.get("storage", {}).get("shard_samples", 1))
    total = -(-samples // shard_samples) if samples else 0
    published = stale = ok = bad = views = texts = random_frames = 0
    shard_bytes = text_entries = text_tokens = text_bytes = 0
    examples: list[str] = []
    for shard in range(total):
        path = folder / SHARDS / shard_name(shard)
        if not path.is_file():
            continue
        try:
            header = read_header(path)
            meta = shard_rows(path, header)
        except DataError:
            stale += 1
            continue
        if meta.get("spec_sha256") != sha:
            stale += 1
            continue
        published += 1
        shard_bytes += path.stat().st_size
        entries, tokens, size = stored_texts(header[0])
        text_entries, text_tokens, text_bytes = text_entries + entries, text_tokens + tokens, text_bytes + size
        for row in meta.get("rows", []):
            if "bad" in row:
                bad += 1
                if len(examples) < 5:
                    code, where, message = [*row["bad"], "", "", ""][:3]
                    examples.append(f"{where}: {code}: {message}")
                continue
            ok += 1
            views += int(row["views"])
            random_frames += bool(row.get("random"))
            texts += len(row["texts"])
    tables = sum((folder / name).stat().st_size for name in (SAMPLES_TABLE, TEXTS_TABLE) if (folder / name).is_file())
    prompts_path = folder / PROMPTS_FILE
    prompts = prompts_path.stat().st_size if prompts_path.is_file() else 0
    recipe = spec.get("recipe", {})
    stored_prompts = read_prompts(prompts_path)
    empty = stored_prompts.get(("", None))  # at the encoder's padded length, like every text on read
    padded_length = padded_bytes = None
    if empty is not None and recipe.get("data.cache.dtype") in STORAGE_DTYPES:
        length, width = empty[0].shape
        padded_length = int(length)
        padded_bytes = text_entries * padded_length * (int(width) * STORAGE_DTYPES[recipe["data.cache.dtype"]].itemsize + 8)
    return {
        "schema": SCHEMA, "dir": str(folder.resolve()), "version": spec.get("version"),
        "readable": (spec.get("format"), spec.get("version")) == (FORMAT, VERSION),
        "complete": bool(manifest.get("complete")) and published == total and (folder / SAMPLES_TABLE).is_file(),
        "created": manifest.get("created"),
        "index": dict(spec.get("index", {})),
        "storage": {"dtype": recipe.get("data.cache.dtype"), "views": recipe.get("data.cache.views"),
                    "shard_samples": shard_samples},
        "components": {part: {k: spec.get(part, {}).get(k) for k in ("name", "dtype", "config_sha256", "weights_sha256")}
                       for part in ("autoencoder", "text_encoder")},
        "recipe": recipe,
        "latents": manifest.get("latents"), "text": manifest.get("text"),
        "shards": {"total": total, "published": published, "stale": stale, "leftovers": len(list(leftovers(folder)))},
        "samples": {"ok": ok, "bad": bad, "missing": samples - ok - bad, "random_frames": random_frames},
        "stored": {"views": views, "texts": texts, "prompts": len(stored_prompts)},
        "bytes": {"shards": shard_bytes, "tables": tables, "prompts": prompts, "total": shard_bytes + tables + prompts,
                  "per_sample": round(shard_bytes / ok) if ok else 0},
        "text_states": {"storage": spec.get("storage", {}).get("text_states", "whole"), "padded_length": padded_length,
                        "mean_length": round(text_tokens / text_entries, 1) if text_entries else 0,
                        "bytes": {"stored": text_bytes, "padded": padded_bytes}},
        "bad_examples": examples,
    }
