"""The ``.metadata`` file of a torch.distributed.checkpoint (DCP) folder, read without running code.

torch's own ``FileSystemReader`` unpickles ``.metadata`` with plain ``pickle``: a file whose pickle
names ``os.system`` runs it. Here the file goes through :class:`MetadataUnpickler`, which resolves only
the classes DCP metadata legitimately holds (:data:`DCP_CLASSES`, ``torch.Size``, dtypes) and refuses
any other global before anything from the file runs. ``ckpt inspect``/``convert``
(:mod:`osctl.ckpt.engines`) and the fsdp strategy's resume (:mod:`osctl.ckpt.dcp_reader`) both read
metadata through :func:`read_dcp_metadata`.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

from osctl.errors import DataError

#: (module, name) of every class a DCP ``.metadata`` pickle may name
DCP_CLASSES: frozenset[tuple[str, str]] = frozenset({
    ("torch.distributed.checkpoint.metadata", name) for name in (
        "Metadata", "MetadataIndex", "StorageMeta", "TensorProperties", "TensorStorageMetadata",
        "BytesStorageMetadata", "ChunkStorageMetadata", "_MEM_FORMAT_ENCODING")
} | {
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    ("torch", "Size"), ("torch.serialization", "_get_layout"), ("collections", "OrderedDict"),
    ("pathlib", "PosixPath"), ("pathlib", "WindowsPath"), ("pathlib", "PurePosixPath"), ("pathlib", "Path"),
})


class RefusedGlobal(Exception):
    """A metadata pickle named a global outside :data:`DCP_CLASSES` (its dotted name is the message)."""


class MetadataUnpickler(pickle.Unpickler):
    """Unpickles a DCP ``.metadata`` file admitting only the classes such a file legitimately holds."""

    def find_class(self, module: str, name: str) -> Any:
        """Resolve only allowlisted DCP metadata classes, ``torch.Size`` and dtypes; refuse anything else."""
        import torch

        if (module, name) in DCP_CLASSES or (module == "torch" and isinstance(getattr(torch, name, None), torch.dtype)):
            return super().find_class(module, name)
        raise RefusedGlobal(f"{module}.{name}")


def read_dcp_metadata(path: Path) -> Any:
    """The ``Metadata`` object of a DCP ``.metadata`` file; a refused, damaged or missing file is a
    ``DataError`` naming it (nothing from the file runs)."""
    if not path.is_file():
        raise DataError(f"{path} is missing; the DCP checkpoint is incomplete (the save did not finish?) — "
                        "use an earlier checkpoint.")
    try:
        with path.open("rb") as handle:
            metadata = MetadataUnpickler(handle).load()
    except RefusedGlobal as exc:
        raise DataError(f"{path} refers to {exc}, which a DCP metadata file never needs; refused, nothing ran.") from None
    except (OSError, EOFError, pickle.UnpicklingError, ValueError, TypeError, AttributeError, IndexError,
            KeyError, MemoryError, RecursionError) as exc:
        raise DataError(f"cannot read {path} ({type(exc).__name__}: {exc}); the DCP folder is damaged.") from None
    if not isinstance(getattr(metadata, "state_dict_metadata", None), dict) or \
            not isinstance(getattr(metadata, "storage_data", None), dict):
        raise DataError(f"{path} is not torch.distributed.checkpoint metadata; the DCP folder is damaged.")
    return metadata
