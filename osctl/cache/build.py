"""``osctl data cache``: encode every sample of the index once, on one process or many.

Per rank (``torchrun`` / ``osctl data cache --nproc-per-node N``, the launcher ``osctl train`` uses):

1. rank 0 checks or builds the sample index exactly as training does (``--world-size``: the
   process count training will use, which the index's batch rules depend on), computes the spec
   (:mod:`osctl.cache.spec`) and prepares the folder: a cache of another spec is refused (or removed
   with ``overwrite``), leftovers of killed writers are removed, the manifest and the prompts
   (empty prompt, validation prompts) are written; the other ranks wait for its verdict;
2. shard ``k`` (samples ``[k S, (k + 1) S)``) belongs to rank ``k mod world``; a rank skips the shards
   already published for this spec (resume) and encodes the others sample by sample: the loader's own
   read (:meth:`osctl.data.stream.dataset.SampleDataset.load`) of each stored view, then the autoencoder's
   posterior (:func:`osctl.latent_moments.latent_moments`) and the text encoder's states of every
   caption variant (:func:`osctl.data.stream.captions.caption_variants`), one clip and one text at a time,
   so a sample's numbers never depend on which rank or which batch encoded it; text states are stored
   trimmed to each prompt when the recipe's model declares that it ignores the padding
   (:func:`osctl.cache.spec.text_storage`), whole otherwise;
3. bad media are recorded in the shard (code, file, message), counted and logged as training counts
   them (:class:`osctl.data.stream.dataset.BadSampleStats`, ``data.max_bad_fraction``);
4. once every rank is done, rank 0 writes the tables and completes the manifest.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from osctl.cache.identity import component_identity
from osctl.cache.reader import read_manifest
from osctl.cache.spec import (
    TEXT_TRIMMED,
    differences,
    index_content_sha256,
    make_spec,
    recipe_fields,
    spec_sha256,
    text_storage,
)
from osctl.cache.store import (
    MANIFEST,
    PROMPTS_FILE,
    SAMPLES_TABLE,
    SHARDS,
    STORAGE_DTYPES,
    TEXTS_TABLE,
    EncodedSample,
    ShardWriter,
    leftovers,
    shard_name,
    shard_rows,
    write_prompts,
    write_tables,
)
from osctl.cache.views import frames_are_random, view_rng
from osctl.errors import DataError, OsctlError, PeerFailed, UsageError, writing
from osctl.utils.atomic import atomic_write_text

log = logging.getLogger("osctl.cache")

SUMMARY_SCHEMA = "osctl.data.cache/1"
BUILD_TIMEOUT_S = 6 * 3600.0
"""Collective timeout of a build: the ranks wait for the slowest one at the end (its last shards)."""


@dataclasses.dataclass
class BuildOptions:
    """Command-line choices of ``osctl data cache`` that are not recipe keys."""

    out: Path | None = None
    world_size: int | None = None  # processes training will use (the index depends on it)
    overwrite: bool = False
    progress: Callable[[int, int], None] | None = None  # rank 0: (samples done, samples in the index)


def cache_folder(recipe: Any, index_folder: Path) -> Path:
    """Where the cache of ``recipe`` lives: ``data.cache.dir``, else ``cache`` next to the index."""
    return Path(recipe.data.cache.dir) if recipe.data.cache.dir is not None else Path(index_folder) / "cache"


def compute_dtypes(recipe: Any) -> tuple[torch.dtype, torch.dtype]:
    """(autoencoder, text encoder) dtypes, as training builds them."""
    from osctl.build import DTYPES

    precision = DTYPES[recipe.train.mixed_precision]
    return (torch.float32 if recipe.train.vae_fp32 else precision), precision


def wanted_spec(checked: Any, index: Any, read: Any, *, recorded: dict[str, Any] | None = None) -> dict[str, Any]:
    """The spec a cache of this recipe over ``index`` must have (``recorded``: an earlier spec whose weight
    digests may be reused)."""
    recipe = checked.loaded.recipe
    ae_dtype, te_dtype = compute_dtypes(recipe)
    recorded = recorded or {}
    parts = {}
    for section, dtype in (("autoencoder", ae_dtype), ("text_encoder", te_dtype)):
        identity = component_identity(getattr(recipe, section).name, checked.components.get(section),
                                      recorded=recorded.get(section))
        parts[section] = {**identity, "dtype": str(dtype).removeprefix("torch.")}
    return make_spec(index={"samples": len(index), "content_sha256": index_content_sha256(index)},
                     recipe=recipe_fields(read, recipe.data.cache), shard_samples=recipe.data.cache.shard_samples,
                     text_states=text_storage(checked.components.get("model")), **parts)


@dataclasses.dataclass
class _Setup:
    index: Any
    read: Any
    folder: Path
    spec: dict[str, Any]
    spec_sha: str
    skipped_at_start: int


def build_cache(checked: Any, registry: Any, options: BuildOptions) -> dict[str, Any]:
    """Build (or finish) the cache of ``checked``'s recipe; returns the summary on rank 0 (``{}`` elsewhere).

    Raises ``UsageError`` for a folder holding a cache of another recipe (unless ``overwrite``), a
    ``DataError`` when bad media pass ``data.max_bad_fraction``, a ``StorageError`` when the disk refuses
    a shard (that shard is not published; the finished ones stay and a rerun skips them).
    """
    from osctl.build import build_autoencoder, build_text_encoder
    from osctl.data.stream.dataset import SampleDataset
    from osctl.parallel import dist as pdist
    from osctl.quiet import quiet_libraries

    quiet_libraries()
    started = time.perf_counter()
    recipe = checked.loaded.recipe
    info = pdist.init_distributed(max(recipe.parallel.timeout_s, BUILD_TIMEOUT_S))
    setup = _setup(checked, info, options)
    ae_dtype, te_dtype = compute_dtypes(recipe)
    with _preserved_rng():
        ae = build_autoencoder(checked, registry, device=info.device, dtype=ae_dtype)
        te = build_text_encoder(checked, registry, device=info.device, dtype=te_dtype)
    encoder = _Encoder(SampleDataset(setup.index, setup.read), ae, te, info.device, views=recipe.data.cache.views,
                       seed=setup.read.seed)
    _agree(info, lambda: _write_prompts(setup, recipe, te, encoder))
    counts = _encode_my_shards(setup, encoder, info, recipe, options)
    try:
        pdist.barrier()  # every rank's shards are published
        totals = _gathered(info, counts)
        weights = {"autoencoder": _weights_bytes(ae), "text_encoder": _weights_bytes(te)}
        summary = _agree(info, lambda: _finish(setup, totals, info, started, weights))
    except Exception as exc:
        from osctl.parallel.progress import is_collective_failure

        if not is_collective_failure(exc):
            raise
        raise PeerFailed("another rank failed or was killed before it finished its shards (this rank's are "
                         "published).", hint="run the same `osctl data cache` command again: it skips the finished "
                                             "shards.") from exc
    _check_bad_share(summary, recipe.data.max_bad_fraction)
    return summary if info.is_main else {}


def _check_bad_share(summary: dict[str, Any], max_bad_fraction: float) -> None:
    """Refuse (``DataError``) a cache whose bad samples exceed ``data.max_bad_fraction`` of the index: training
    over it would stop for the same reason. The cache itself is complete; fixing the files and rebuilding
    with ``--overwrite`` re-encodes it (or raise the fraction)."""
    bad, samples = summary["bad"], max(summary["samples"], 1)
    if bad > max_bad_fraction * samples:
        examples = " | ".join(summary["bad_examples"][:3])
        raise DataError(f"{bad} bad sample(s) ({bad / samples:.2%} of the index) exceed max_bad_fraction "
                        f"{max_bad_fraction:g}; examples: {examples}.",
                        hint="run `osctl data validate DATA_TXT --probe` to list every broken file, or raise "
                             "data.max_bad_fraction.")


class _Encoder:
    """One sample at a time: the loader's read of each stored view, the posterior, the caption variants."""

    def __init__(self, dataset: Any, autoencoder: Any, text_encoder: Any, device: torch.device, *,
                 views: int, seed: int) -> None:
        self.dataset, self.autoencoder, self.text_encoder = dataset, autoencoder, text_encoder
        self.device, self.views, self.seed = device, views, seed
        self.latent_info: dict[str, Any] | None = None

    @torch.no_grad()
    def sample(self, sample: int) -> EncodedSample:
        from osctl.data.stream.captions import caption_variants
        from osctl.data.stream.reader import DecodeHung, MediaError
        from osctl.latent_moments import latent_moments

        dataset = self.dataset
        item = EncodedSample(sample)
        item.random = frames_are_random(dataset, sample)
        views = self.views if item.random else 1
        for view in range(views):
            try:
                pixels, _ = dataset.load(sample, view_rng(self.seed, sample, view))
            except MediaError as exc:
                item.bad = (exc.code, exc.path, exc.detail)
                return item
            except DecodeHung:
                raise
            except Exception as exc:  # as the loader: an exotic file breaking a library is counted, not fatal
                item.bad = ("error", dataset.index.media_path(sample), f"{type(exc).__name__}: {exc}")
                return item
            moments, exact = latent_moments(self.autoencoder, pixels.unsqueeze(0))
            item.views.append((moments.mean[0], moments.std[0] if moments.std is not None else None))
            if self.latent_info is None:
                self.latent_info = {"dtype": str(moments.mean.dtype).removeprefix("torch."), "exact": exact,
                                    "channels": int(moments.mean.shape[1]),
                                    "normalisation": moments.normalisation()}
        info = dataset.index.sample(sample)
        for text in caption_variants(info.captions, info.aesthetic, info.kind, dataset.settings.captions):
            if text:  # "" is the shared empty prompt
                states, mask = self.text(text, None)
                item.texts.append((text, states, mask))
        return item

    @torch.no_grad()
    def text(self, text: str, max_length: int | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(states ``L x D``, mask ``L``) of one text, tokenized as the loader (or, with ``max_length``,
        the sampling pipeline) tokenizes it."""
        from osctl.data.stream.captions import tokenize_texts

        te = self.text_encoder
        if max_length is None:
            tokens = tokenize_texts([text], te.tokenize)
        else:
            tokens = te.tokenize([text], max_length=max_length)
        states = te.encode(tokens["input_ids"].to(self.device), tokens["attention_mask"].to(self.device))
        return states[0], tokens["attention_mask"][0]


def _setup(checked: Any, info: Any, options: BuildOptions) -> _Setup:
    """The index (rank 0 checks or builds it, as training does), the read settings and the prepared folder."""
    from osctl.data.stream.loader import plan_stream, prepare_index
    from osctl.parallel.layout import ParallelLayout

    recipe = checked.loaded.recipe
    layout = ParallelLayout.from_recipe(recipe, world_size=options.world_size)
    index, settings, note = prepare_index(recipe, info, layout, checked.geometry)
    read = plan_stream(recipe, index, settings, note, layout=layout, dp_rank=0).read
    folder = Path(options.out) if options.out is not None else cache_folder(recipe, index.path.parent)

    def prepare() -> tuple[dict[str, Any], str, int]:
        return _prepare_folder(checked, index, read, folder, options.overwrite)

    spec, sha, skipped = _agree(info, prepare)
    return _Setup(index, read, folder, spec, sha, skipped)


def _prepare_folder(checked: Any, index: Any, read: Any, folder: Path, overwrite: bool) -> tuple[dict[str, Any], str, int]:
    """Rank 0: refuse or clear a cache of another spec, remove leftovers, write the manifest's spec."""
    with writing(folder, action="create the cache folder"):
        folder.mkdir(parents=True, exist_ok=True)
    existing = read_manifest(folder)
    spec = wanted_spec(checked, index, read, recorded=(existing or {}).get("spec"))
    sha = spec_sha256(spec)
    if existing is not None:
        changed = differences(existing.get("spec", {}), spec, storage=True)
        if changed and not overwrite:
            more = f" (and {len(changed) - 1} more difference(s))" if len(changed) > 1 else ""
            raise UsageError(f"{folder} holds a cache of another recipe or data: {changed[0]}{more}.",
                             hint="rebuild it with `osctl data cache --recipe RECIPE --overwrite`, or choose another "
                                  "folder with --out.")
        if changed:
            _clear(folder)
    for path in leftovers(folder):
        with contextlib.suppress(OSError):
            path.unlink()
    manifest = {"spec": spec, "spec_sha256": sha, "complete": False, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    with writing(folder, action="write the cache manifest to"):
        (folder / SHARDS).mkdir(exist_ok=True)
        atomic_write_text(folder / MANIFEST, _json(manifest), root=folder)
    n_shards = -(-len(index) // checked.loaded.recipe.data.cache.shard_samples)
    skipped = sum(1 for shard in range(n_shards) if _published(folder, shard, sha))
    return spec, sha, skipped


def _clear(folder: Path) -> None:
    """Remove a cache's files (only those the cache writes)."""
    with writing(folder, action="clear the cache folder"):
        for name in (MANIFEST, SAMPLES_TABLE, TEXTS_TABLE, PROMPTS_FILE):
            with contextlib.suppress(FileNotFoundError):
                (folder / name).unlink()
        shutil.rmtree(folder / SHARDS, ignore_errors=True)


def _published(folder: Path, shard: int, sha: str) -> bool:
    """True when shard ``shard`` of spec ``sha`` is complete on disk."""
    path = folder / SHARDS / shard_name(shard)
    if not path.is_file():
        return False
    try:
        return shard_rows(path).get("spec_sha256") == sha
    except DataError:
        return False


def _write_prompts(setup: _Setup, recipe: Any, te: Any, encoder: _Encoder) -> None:
    """Rank 0: the empty prompt (CFG dropout) and the validation prompts with sampling's negative prompt."""
    from osctl.text import NEGATIVE_PROMPT

    wanted: list[tuple[str, int | None]] = [("", None)]
    if recipe.train.validation_prompts:
        length = recipe.sample.max_sequence_length
        negative = recipe.sample.negative_prompt if recipe.sample.negative_prompt is not None else NEGATIVE_PROMPT
        wanted += [(p, length) for p in dict.fromkeys([*recipe.train.validation_prompts, negative, ""])]
    prompts = [(text, length, *encoder.text(text, length)) for text, length in wanted]
    write_prompts(setup.folder / PROMPTS_FILE, setup.folder, prompts, STORAGE_DTYPES[recipe.data.cache.dtype])


def _encode_my_shards(setup: _Setup, encoder: _Encoder, info: Any, recipe: Any, options: BuildOptions) -> dict[str, Any]:
    """This rank's unpublished shards, encoded and published one by one; returns its counts."""
    from osctl.data.stream.dataset import BadEvent, BadSampleStats

    cache = recipe.data.cache
    n = len(setup.index)
    n_shards = -(-n // cache.shard_samples)
    mine = [k for k in range(info.rank, n_shards, info.world_size)]
    todo = [k for k in mine if not _published(setup.folder, k, setup.spec_sha)]
    share = sum(min(n, (k + 1) * cache.shard_samples) - k * cache.shard_samples for k in todo)
    stats = BadSampleStats(max(share, 1), recipe.data.max_bad_fraction)
    done_before = min(n, setup.skipped_at_start * cache.shard_samples)
    encoded = 0
    views = 0
    last_report = 0.0
    for shard in todo:
        writer = ShardWriter(setup.folder / SHARDS, shard, root=setup.folder, dtype=STORAGE_DTYPES[cache.dtype],
                             spec_sha=setup.spec_sha,
                             trim_text=setup.spec["storage"]["text_states"] == TEXT_TRIMMED)
        try:
            for sample in range(shard * cache.shard_samples, min(n, (shard + 1) * cache.shard_samples)):
                item = encoder.sample(sample)
                writer.add(item)
                events = [BadEvent(sample, *item.bad)] if item.bad else []
                batch = {"events": events, "samples": [] if item.bad else [sample]}
                stats.record(batch)
                stats.check(batch)
                encoded += 1
                views += len(item.views)
                now = time.perf_counter()
                if options.progress is not None and info.is_main and (now - last_report > 0.5 or encoded == share):
                    last_report = now
                    options.progress(min(n, done_before + encoded * info.world_size), n)
            if encoder.latent_info is not None:
                writer.meta["latents"] = encoder.latent_info
            writer.publish()
        finally:
            writer.close()
    return {"encoded": encoded, "views": views, "shards": len(todo), "bad": stats.bad_unique,
            "examples": list(stats.examples), "latents": encoder.latent_info}


def _gathered(info: Any, counts: dict[str, Any]) -> list[dict[str, Any]]:
    """Every rank's counts on rank 0 (``[counts]`` in one process)."""
    import torch.distributed as dist

    if not dist.is_initialized() or info.world_size == 1:
        return [counts]
    parts: list[Any] = [None] * info.world_size if info.is_main else []
    dist.gather_object(counts, parts if info.is_main else None, dst=0)
    return parts if info.is_main else []


def _weights_bytes(component: Any) -> int:
    """Bytes of a component's parameters (what a run reading the cache does not hold)."""
    parameters = component.parameters() if callable(getattr(component, "parameters", None)) else []
    return int(sum(p.numel() * p.element_size() for p in parameters))


def _finish(setup: _Setup, totals: list[dict[str, Any]], info: Any, started: float,
            weights: dict[str, int]) -> dict[str, Any]:
    """Rank 0: the tables, the completed manifest and the summary (``error``: too many bad samples)."""
    tables = write_tables(setup.folder, len(setup.index), setup.spec["storage"]["shard_samples"],
                          spec_sha=setup.spec_sha)
    latents = next((t["latents"] for t in totals if t.get("latents")), None) or _latent_info_from_shards(setup)
    manifest = read_manifest(setup.folder) or {}
    from osctl.cache.store import read_prompts

    empty = read_prompts(setup.folder / PROMPTS_FILE).get(("", None))
    manifest.update({"complete": tables["missing"] == 0, "latents": latents, "weights_bytes": weights,
                     "text": {"shape": list(empty[0].shape), "dtype": setup.spec["text_encoder"]["dtype"]} if empty else None,
                     "counts": {k: tables[k] for k in ("ok", "bad", "missing", "texts", "bytes")}})
    with writing(setup.folder, action="write the cache manifest to"):
        atomic_write_text(setup.folder / MANIFEST, _json(manifest), root=setup.folder)
    seconds = time.perf_counter() - started
    encoded = sum(t["encoded"] for t in totals)
    summary: dict[str, Any] = {
        "schema": SUMMARY_SCHEMA, "dir": str(setup.folder.resolve()), "samples": len(setup.index),
        "ok": tables["ok"], "bad": tables["bad"], "missing": tables["missing"], "texts": tables["texts"],
        "views": sum(t["views"] for t in totals), "bytes": tables["bytes"],
        "shards": {"total": -(-len(setup.index) // setup.spec["storage"]["shard_samples"]),
                   "built": sum(t["shards"] for t in totals), "skipped": setup.skipped_at_start},
        "encoded": encoded, "seconds": round(seconds, 3), "samples_per_s": round(encoded / max(seconds, 1e-9), 3),
        "world_size": info.world_size, "bad_examples": tables["bad_examples"], "complete": manifest["complete"],
    }
    return summary


def _latent_info_from_shards(setup: _Setup) -> dict[str, Any] | None:
    """The latent dtype/normalisation recorded by any published shard (a resumed build may encode nothing)."""
    shards = setup.folder / SHARDS
    for path in sorted(shards.glob("shard-*.safetensors")):
        meta = shard_rows(path)
        if meta.get("spec_sha256") == setup.spec_sha and meta.get("latents"):
            return meta["latents"]
    return None


def _agree(info: Any, produce: Callable[[], Any]) -> Any:
    """Rank 0 runs ``produce()``; every rank gets its result, or raises its error (same class and sentence)."""
    from osctl.parallel.dist import broadcast_object

    verdict: tuple[str, Any, Any, Any] | None = None
    if info.is_main:
        try:
            verdict = ("ok", produce(), None, None)
        except OsctlError as exc:
            broadcast_object(("error", type(exc).__name__, exc.message, exc.hint))
            raise
        except Exception as exc:
            broadcast_object(("error", "DataError", f"rank 0 failed: {type(exc).__name__}: {exc}", None))
            raise
    verdict = broadcast_object(verdict)
    assert verdict is not None
    if verdict[0] == "error":
        from osctl import errors

        cls = getattr(errors, str(verdict[1]), DataError)
        raise (cls if isinstance(cls, type) and issubclass(cls, OsctlError) else DataError)(verdict[2], hint=verdict[3])
    return verdict[1]


@contextlib.contextmanager
def _preserved_rng() -> Any:
    """Building components must not move the global RNG (a preset's random weights draw from it)."""
    from osctl.data.stream.loader import preserved_global_rng

    with preserved_global_rng():
        yield


def _json(value: Any) -> str:
    import json

    return json.dumps(value, indent=2, default=str) + "\n"

