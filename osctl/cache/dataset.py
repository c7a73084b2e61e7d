"""Training batches read from the cache instead of decoded and encoded.

:class:`CachedSampleDataset` is the loader's :class:`~osctl.data.stream.dataset.SampleDataset` with one
change: ``load`` looks a sample up in the cache instead of decoding it. Everything else is the
loader's own code — the ticket's generator, the replacement of bad samples by another of their bucket
(a sample the build found bad fails with the error the build recorded), the caption choice and CFG
dropout — so the same tickets give the same samples and texts. Per sample the generator is consumed
exactly as the loader consumes it: the loader's frame choice runs (its draws are what decide the
temporal crop), then :func:`~osctl.cache.views.view_choice` picks a stored view without drawing, then
:func:`~osctl.data.stream.captions.training_text`.

:class:`CachedCollate` stacks the posteriors and text states (padding latents with a validity mask
when shapes are mixed, as the loader pads pixels); :func:`cached_inputs` turns a batch into the
training step's latents (a posterior draw from the run's noise generator, exactly as the autoencoder's
``encode`` would draw it) and text states.
"""

from __future__ import annotations

from typing import Any

import torch

from osctl.cache.reader import CacheReader
from osctl.cache.views import view_choice
from osctl.data.rules import FrameCountError
from osctl.data.stream.captions import training_text
from osctl.data.stream.dataset import Collate, ReadSettings, SampleDataset
from osctl.data.stream.reader import MediaError
from osctl.errors import DataError
from osctl.latent_moments import LatentMoments


class CacheMiss(DataError):
    """The cache lacks what a read needs although its spec matched (a damaged or hand-edited cache)."""


class CachedSampleDataset(SampleDataset):
    """:class:`~osctl.data.stream.dataset.SampleDataset` over the cache (see the module docstring). Items carry
    ``latent_mean``/``latent_std`` (``C x T x H x W``), ``text_states`` (``L x D``), ``text_mask`` (``L``)
    and ``shape`` (the sample's ``T x H x W`` in pixels) instead of ``pixel_values``."""

    def __init__(self, index: Any, settings: ReadSettings, cache: CacheReader, members: Any = None) -> None:
        super().__init__(index, settings, members=members)
        self.cache = cache
        self._miss: CacheMiss | None = None

    def load(self, sample: int, rng: Any) -> tuple[dict[str, Any], str]:  # type: ignore[override]
        """The cached posterior and text of ``sample`` as the loader would choose them with ``rng``."""
        info = self.index.sample(sample)
        if self.cache.is_bad(sample):
            code, path, message = self.cache.bad.get(sample, ("error", info.path, "recorded bad by the cache build"))
            raise MediaError(code, path, message)
        try:
            self._frames(info, rng)  # the loader's frame choice: the same draws from the ticket's generator
        except FrameCountError as exc:
            raise MediaError("frame_count", info.path, str(exc)) from None
        views = self.cache.views(sample)
        if views < 1:
            self._miss = CacheMiss(f"sample {sample} ({info.path}) is not in the cache {self.cache.folder}; "
                                   "finish the cache with `osctl data cache --recipe RECIPE`.")
            raise MediaError("error", info.path, "not in the cache")
        mean, std = self.cache.latents(sample, view_choice(rng, views))
        text = training_text(info.captions, info.aesthetic, info.kind, self.settings.captions, rng)
        found = self.cache.text(sample, text)
        if found is None:
            self._miss = CacheMiss(f"the cache {self.cache.folder} holds no embedding of the text {text!r} of sample "
                                   f"{sample} ({info.path}); rebuild it with `osctl data cache --recipe RECIPE "
                                   "--overwrite`.")
            raise MediaError("error", info.path, "text not in the cache")
        states, mask = found
        return {"latent_mean": mean, "latent_std": std, "text_states": states, "text_mask": mask,
                "shape": info.shape}, text

    def __getitem__(self, ticket: Any) -> dict[str, Any]:
        self._miss = None
        item = super().__getitem__(ticket)
        if self._miss is not None:  # not bad media: the cache itself is wrong, so stop instead of replacing
            raise self._miss
        payload = item.pop("pixel_values", None)
        if isinstance(payload, dict):
            item.update(payload)
        return item


class CachedCollate(Collate):
    """Stack cached items: ``latent_mean``/``latent_std`` (``B x C x T x H x W``), ``text_states``
    (``B x L x D``), ``attention_mask`` (``B x L``), ``latent_mask`` when shapes are padded, the
    normalisation and compute dtypes of the cache, and the loader's ``texts``/``samples``/``events``."""

    def __init__(self, cache: CacheReader, *, pad: Any = None, global_batch: int = 1) -> None:
        super().__init__(None, pad=pad, global_batch=global_batch)
        self.cache = cache

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        failed = [item for item in items if item.get("failed")]
        if failed:
            return super().__call__(items)
        events = [event for item in items for event in item["events"]]
        ticket = items[0]["ticket"]
        batch: dict[str, Any] = {
            "epoch": ticket[1], "step": ticket[2] // self.global_batch, "events": events,
            "samples": torch.tensor([item["sample"] for item in items], dtype=torch.int64),
            "replaced": sum(1 for item in items if item["events"]), "texts": [item["text"] for item in items],
            "text_states": torch.stack([item["text_states"] for item in items]),
            "attention_mask": torch.stack([item["text_mask"] for item in items]),
            "latent_normalisation": self.cache.normalisation,
            "latent_dtype": self.cache.latent_dtype, "text_dtype": self.cache.text_dtype,
        }
        means = [item["latent_mean"] for item in items]
        stds = [item["latent_std"] for item in items]
        if self.pad is None:
            shapes = {tuple(m.shape) for m in means}
            if len(shapes) != 1:
                raise DataError(f"a group_data batch mixes shapes {sorted(shapes)}; the index or sampler is inconsistent.")
            batch["latent_mean"] = torch.stack(means)
            batch["latent_std"] = torch.stack(stds) if stds[0] is not None else None  # type: ignore[arg-type]
        else:
            batch["latent_mean"], batch["latent_std"], batch["latent_mask"] = self._padded_latents(items)
        return batch

    def _padded_latents(self, items: list[dict[str, Any]]) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """Latents zero-padded to the padding target's latent shape, and the mask of the valid ones."""
        spec = self.pad
        first = items[0]["latent_mean"]
        target = (len(items), first.shape[0], *spec.latent_shape())
        mean = torch.zeros(target, dtype=first.dtype)
        std = torch.zeros(target, dtype=first.dtype) if items[0]["latent_std"] is not None else None
        mask = torch.zeros(len(items), *spec.latent_shape())
        for i, item in enumerate(items):
            t, h, w = item["latent_mean"].shape[1:]
            mean[i, :, :t, :h, :w] = item["latent_mean"]
            if std is not None:
                std[i, :, :t, :h, :w] = item["latent_std"]
            lt, lh, lw = spec.valid_latents(*item["shape"])
            mask[i, :lt, :lh, :lw] = 1
        return mean, std, mask


def cached_inputs(batch: dict[str, Any], device: torch.device,
                  generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(latents, text states)`` of a cached batch on ``device``: the posterior draw (from ``generator``,
    in the autoencoder's dtype, then float32) exactly as ``autoencoder.encode(pixels, sample=True,
    generator=generator).float()`` gives it, and the text states in the text encoder's dtype."""
    dtype = batch["latent_dtype"]
    std = batch.get("latent_std")
    moments = LatentMoments(mean=batch["latent_mean"].to(device=device, dtype=dtype),
                            std=std.to(device=device, dtype=dtype) if std is not None else None,
                            **batch["latent_normalisation"])
    latents = moments.latents(sample=True, generator=generator).float()
    return latents, batch["text_states"].to(device=device, dtype=batch["text_dtype"])
