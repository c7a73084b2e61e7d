"""Reading a built cache: one sample's posterior per view and its text states per caption variant.

:class:`CacheReader` maps the manifest, the two tables and (lazily) the shards; it pickles as its
folder, so every DataLoader worker maps the same files and shares their pages. Tensors it returns
are views of the memory maps (text states stored trimmed come back as new tensors, padded with zeros):
copy them (the collate does) before changing them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from osctl.cache.store import (
    MANIFEST,
    PROMPTS_FILE,
    SAMPLES_TABLE,
    STATUS_BAD,
    STORAGE_DTYPES,
    TEXTS_TABLE,
    ShardMap,
    read_prompts,
    read_table,
    text_key,
)
from osctl.errors import DataError
from osctl.latent_moments import normalisation_from


def read_manifest(folder: Path) -> dict[str, Any] | None:
    """The manifest of the cache in ``folder`` (None when there is none; ``DataError`` when unreadable)."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"cache manifest {path} is unreadable ({exc}); rebuild the cache with `osctl data cache "
                        "--recipe RECIPE --overwrite`.") from None
    if not isinstance(manifest, dict):
        raise DataError(f"cache manifest {path} is not a JSON object; rebuild the cache with `osctl data cache "
                        "--recipe RECIPE --overwrite`.")
    return manifest


class CacheReader:
    """A complete cache, ready to read (see the module docstring)."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        manifest = read_manifest(self.folder)
        if manifest is None or not (self.folder / SAMPLES_TABLE).is_file():
            raise DataError(f"{self.folder} holds no finished cache; build it with `osctl data cache --recipe RECIPE`.")
        self.manifest = manifest
        self.samples, self.table_meta = read_table(self.folder / SAMPLES_TABLE)
        self.texts, _ = read_table(self.folder / TEXTS_TABLE)
        self.dtype = STORAGE_DTYPES[manifest["spec"]["recipe"]["data.cache.dtype"]]
        length, width = manifest["text"]["shape"]
        self.text_shape = (int(length), int(width))  # the encoder's padded length: every text is read at it
        latents = manifest["latents"]
        self.latent_dtype = getattr(torch, latents["dtype"])
        self.text_dtype = getattr(torch, manifest["text"]["dtype"])
        self.normalisation = normalisation_from(latents.get("normalisation") or {})  # shift, scale, divisor, dtype
        self.bad = {int(k): tuple(v) for k, v in self.table_meta.get("bad_samples", {}).items()}
        self.prompts = read_prompts(self.folder / PROMPTS_FILE)
        self.shards = ShardMap(self.folder)

    def __reduce__(self) -> tuple[Any, tuple[Path]]:
        """Pickle as the folder: a worker maps the same files instead of copying them."""
        return (CacheReader, (self.folder,))

    def __len__(self) -> int:
        return len(self.samples["status"])

    @property
    def counts(self) -> dict[str, int]:
        """Samples stored (``ok``), found bad (``bad``) and not built (``missing``)."""
        return {key: int(self.table_meta.get(key, 0)) for key in ("ok", "bad", "missing")}

    def is_bad(self, sample: int) -> bool:
        """True when the build could not read ``sample``'s media."""
        return int(self.samples["status"][sample]) == STATUS_BAD

    def views(self, sample: int) -> int:
        """Stored views of ``sample`` (1 for deterministic frames)."""
        return int(self.samples["views"][sample])

    def latents(self, sample: int, view: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(mean, std)`` of ``sample``'s view ``view`` (``std`` None for a deterministic autoencoder)."""
        col = self.samples
        shape = (int(col["c"][sample]), int(col["t"][sample]), int(col["h"][sample]), int(col["w"][sample]))
        nbytes = shape[0] * shape[1] * shape[2] * shape[3] * self.dtype.itemsize
        has_std = bool(col["has_std"][sample])
        offset = int(col["latent_offset"][sample]) + view * nbytes * (2 if has_std else 1)
        shard = int(col["shard"][sample])
        mean = self.shards.tensor(shard, offset, shape, self.dtype)
        std = self.shards.tensor(shard, offset + nbytes, shape, self.dtype) if has_std else None
        return mean, std

    def text(self, sample: int, text: str) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``(states L x D, mask L)`` of ``sample``'s caption variant ``text`` (``""``: the empty prompt) at the
        encoder's padded length ``L``, whether it is stored whole or trimmed; None when the cache does not hold it."""
        if text == "":
            return self.prompts.get(("", None))
        start, count = int(self.samples["text_start"][sample]), int(self.samples["text_count"][sample])
        keys = self.texts["key"][start:start + count]
        hits = (keys == text_key(text)).nonzero()[0]
        if not len(hits):
            return None
        row = start + int(hits[0])
        return self.shards.text(int(self.samples["shard"][sample]), int(self.texts["offset"][row]),
                                int(self.texts["length"][row]), self.text_shape, self.dtype)
