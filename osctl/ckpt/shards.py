"""Sharded safetensors weights as diffusers and transformers write them: the one planner and writer of osctl.

``osctl ckpt convert`` and the ``model/`` folders of training checkpoints both write through here. The
split is ``huggingface_hub``'s (the one diffusers' ``save_pretrained`` uses): tensors in state-dict order,
a new shard when the next tensor would tip the current one over the limit, a tensor larger than the limit
alone in its own shard. One shard is ``<stem>.safetensors``; more are ``<stem>-0000i-of-0000n.safetensors``
with ``<stem>.safetensors.index.json`` (``metadata.total_size`` and a sorted ``weight_map``), which
``from_pretrained`` of diffusers and transformers and :func:`osctl.ckpt.headers.read_sharded` load.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from osctl.ckpt.headers import INDEX_SUFFIX

#: diffusers' ``save_pretrained`` default (``"10GB"``)
DEFAULT_SHARD_BYTES = 10 * 10**9


@dataclass(frozen=True)
class Shard:
    """One planned weights file: its name, the tensors it holds (in writing order) and their bytes."""

    name: str
    tensors: list[str]
    bytes: int


def plan_shards(sizes: Mapping[str, int], stem: str, max_shard_bytes: int | None = None) -> list[Shard]:
    """Split tensors (name -> bytes, in state-dict order) into shards of at most ``max_shard_bytes``.

    Plans from sizes alone, so a dry run can show the files without loading any tensor. An empty state
    dict is one empty ``<stem>.safetensors``.
    """
    from huggingface_hub import split_state_dict_into_shards_factory

    split = split_state_dict_into_shards_factory(
        dict(sizes), get_storage_size=lambda size: size, filename_pattern=stem + "{suffix}.safetensors",
        max_shard_size=max_shard_bytes or DEFAULT_SHARD_BYTES)
    if not split.filename_to_tensors:
        return [Shard(f"{stem}.safetensors", [], 0)]
    return [Shard(name, list(names), sum(sizes[n] for n in names)) for name, names in split.filename_to_tensors.items()]


def index_name(stem: str) -> str:
    """The index file of a sharded set: ``<stem>.safetensors.index.json``."""
    return f"{stem}{INDEX_SUFFIX}"


def write_shards(folder: Path, stem: str, shards: list[Shard], tensors: Mapping[str, Any]) -> list[str]:
    """Write each shard (``safetensors.torch.save_file``, metadata ``format: pt``) and, above one, the index.

    ``tensors`` maps names to contiguous torch tensors that share no memory. Returns the written file
    names, the index last.
    """
    from safetensors.torch import save_file

    written = []
    for shard in shards:
        save_file({name: tensors[name] for name in shard.tensors}, str(folder / shard.name), metadata={"format": "pt"})
        written.append(shard.name)
    if len(shards) > 1:
        index = {"metadata": {"total_size": sum(shard.bytes for shard in shards)},
                 "weight_map": {name: shard.name for shard in shards for name in shard.tensors}}
        (folder / index_name(stem)).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        written.append(index_name(stem))
    return written
