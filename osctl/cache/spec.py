"""What a cache was made for: the manifest's *spec*, and how a recipe is compared with it.

The spec is everything that shapes the cached latents and embeddings, and nothing else:

- ``index``: the sample count and a SHA-256 of the index columns a sample's frames, crop, size and
  captions come from (so an index rebuilt with the same samples keeps its cache, and any change to
  one sample's row invalidates it);
- ``recipe``: the read-time rules (frames, resolution), the caption policy, ``data.seed`` and the
  cache's own ``views``/``dtype``, under their recipe key names;
- ``autoencoder`` / ``text_encoder``: the components' identity (:mod:`osctl.cache.identity`) and the
  dtype training runs them in (``train.vae_fp32`` / ``train.mixed_precision``);
- ``storage``: ``shard_samples`` (a build with another shard size cannot resume this one's shards) and
  ``text_states``: :data:`TEXT_TRIMMED` (each caption variant's states stored up to its last valid token, the
  padding restored as zeros on read) or :data:`TEXT_WHOLE` (stored at the encoder's padded length), as the
  recipe's model declares (:func:`text_storage`). A whole cache serves any model; a trimmed one only a model
  that ignores the padding positions.

``spec_sha256`` hashes the spec (weight file lists aside); every shard records it, so a shard of an
older spec is never mixed in. :func:`differences` names, recipe key by recipe key, how a recipe
differs from a cache.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from typing import Any

FORMAT = "osctl.data-cache"
VERSION = 2
"""Version 2: text states may be stored trimmed to the prompt (``storage.text_states``), with their length in
``texts.arrow``; a version 1 cache is refused with the rebuild command."""
TEXT_TRIMMED = "trimmed"
TEXT_WHOLE = "whole"
TEXT_PADDING_DECLARATION = "ignores_text_padding"
"""The model config method that says whether the model's output ignores the text states at masked positions."""
INDEX_CONTENT_COLUMNS = ("path", "kind", "captions_json", "aesthetic", "fps", "start_frame", "span_frames",
                         "n_candidates", "crop_x0", "crop_x1", "crop_y0", "crop_y1", "height", "width", "t", "h", "w")
_FRAME_KEYS = {"seed": "data.seed"}
_INDEX_ONLY = ("sp_size",)
"""Frame rules whose whole effect on a sample is its frame count in the index (compared through the index's
content): a run with another ``parallel.sp_size`` reads a cache whose samples are unchanged."""
_RESOLUTION_KEYS = {"mode": "data.resolution_mode"}


def index_content_sha256(index: Any) -> str:
    """SHA-256 of the index columns that decide what a sample's latents and texts are."""
    sha = hashlib.sha256()
    names = set(index.table.column_names)
    for name in INDEX_CONTENT_COLUMNS:
        if name not in names:
            continue
        sha.update(name.encode())
        column = index.table.column(name).combine_chunks()
        for buffer in column.buffers():
            if buffer is not None:
                sha.update(memoryview(buffer))
    return sha.hexdigest()


def recipe_fields(read: Any, cache: Any) -> dict[str, Any]:
    """The recipe values that shape cached latents and texts, by recipe key (``read``: the loader's
    :class:`~osctl.data.stream.dataset.ReadSettings`; ``cache``: ``data.cache``)."""
    out: dict[str, Any] = {}
    for key, value in asdict(read.frames).items():
        if key in _INDEX_ONLY:
            continue
        out[_FRAME_KEYS.get(key, f"data.{key}")] = value
    for key, value in asdict(read.resolution).items():
        out[_RESOLUTION_KEYS.get(key, f"data.{key}")] = value
    for key, value in asdict(read.captions).items():
        out[f"data.captions.{key}"] = list(value) if isinstance(value, tuple) else value
    out["data.seed"] = read.seed
    out["read.reference_quirks"] = read.reference_quirks
    out["read.check_size"] = read.check_size
    out["data.cache.views"] = cache.views
    out["data.cache.dtype"] = cache.dtype
    return json.loads(json.dumps(out, default=str))


def text_storage(model_config: Any) -> str:
    """How a cache for this model stores text states: :data:`TEXT_TRIMMED` when the model's config declares
    ``ignores_text_padding()`` true (its prediction, and so a training step, does not depend on the states at
    positions the text mask marks 0), else :data:`TEXT_WHOLE` (also for a model that declares nothing)."""
    declare = getattr(model_config, TEXT_PADDING_DECLARATION, None)
    return TEXT_TRIMMED if callable(declare) and declare() is True else TEXT_WHOLE


def make_spec(*, index: dict[str, Any], recipe: dict[str, Any], autoencoder: dict[str, Any],
              text_encoder: dict[str, Any], shard_samples: int, text_states: str = TEXT_WHOLE) -> dict[str, Any]:
    """The spec (see the module docstring) from its parts."""
    return {"format": FORMAT, "version": VERSION, "index": index, "recipe": recipe, "autoencoder": autoencoder,
            "text_encoder": text_encoder, "storage": {"shard_samples": int(shard_samples), "text_states": text_states}}


def spec_sha256(spec: dict[str, Any]) -> str:
    """Hash of a spec, weight file lists aside (they only speed up the next check)."""
    slim = {key: ({k: v for k, v in value.items() if k != "files"} if isinstance(value, dict) else value)
            for key, value in spec.items()}
    return hashlib.sha256(json.dumps(slim, sort_keys=True, default=str).encode()).hexdigest()


def differences(cached: dict[str, Any], wanted: dict[str, Any], *, storage: bool = False) -> list[str]:
    """How ``wanted`` (a recipe's spec) differs from ``cached`` (a cache's), one readable line per field:
    ``"data.captions.cfg is 0.1 in the cache and 0.2 in the recipe"``. ``storage``: also compare
    ``shard_samples`` and ``text_states`` (a build resuming a cache; training reads any shard size, and a cache
    of whole text states serves a model that ignores the padding as well)."""
    lines: list[str] = []
    if (cached.get("format"), cached.get("version")) != (FORMAT, VERSION):
        return [f"the cache has format {cached.get('format')!r} version {cached.get('version')!r} and this osctl "
                f"reads {FORMAT!r} version {VERSION}"]
    old, new = cached.get("index", {}), wanted.get("index", {})
    if old.get("samples") != new.get("samples"):
        lines.append(f"the index has {new.get('samples')} samples, the cache was built for {old.get('samples')}")
    elif old.get("content_sha256") != new.get("content_sha256"):
        lines.append("the index's samples (media paths, captions, frames, crops or sizes) changed since the cache "
                     "was built")
    old, new = cached.get("recipe", {}), wanted.get("recipe", {})
    for key in sorted(set(old) | set(new)):
        if old.get(key) != new.get(key):
            lines.append(f"{key} is {_show(old.get(key))} in the cache and {_show(new.get(key))} in the recipe")
    for part in ("autoencoder", "text_encoder"):
        a, b = cached.get(part, {}), wanted.get(part, {})
        if a.get("name") != b.get("name"):
            lines.append(f"{part}.name is {a.get('name')!r} in the cache and {b.get('name')!r} in the recipe")
        elif a.get("config_sha256") != b.get("config_sha256"):
            lines.append(f"the {part} section's options differ from the ones the cache was built with")
        elif a.get("weights_sha256") != b.get("weights_sha256"):
            lines.append(f"the {part}'s weight files differ from the ones the cache was built with")
        elif a.get("dtype") != b.get("dtype"):
            lines.append(f"the {part} runs in {b.get('dtype')} (train.mixed_precision{', train.vae_fp32' if part == 'autoencoder' else ''}) "
                         f"but the cache was computed in {a.get('dtype')}")
    a, b = cached.get("storage", {}), wanted.get("storage", {})
    if a.get("text_states") != b.get("text_states"):
        if b.get("text_states") != TEXT_TRIMMED:
            lines.append("the cache stores text states trimmed to each prompt but the recipe's model reads the padding "
                         f"tokens' states too (its config's {TEXT_PADDING_DECLARATION}() is not true)")
        elif storage:
            lines.append("the cache stores text states whole and a build for the recipe's model stores them trimmed "
                         "to each prompt")
    if storage and a.get("shard_samples") != b.get("shard_samples"):
        lines.append(f"data.cache.shard_samples is {a.get('shard_samples')} in the cache and "
                     f"{b.get('shard_samples')} in the recipe")
    return lines


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
