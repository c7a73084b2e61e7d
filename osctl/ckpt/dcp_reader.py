"""Loading a torch.distributed.checkpoint (DCP) folder into live state (FSDP resume) without running code.

``torch.distributed.checkpoint.load`` with its default ``FileSystemReader`` unpickles ``.metadata`` with
plain ``pickle`` and hands every non-tensor ("bytes") item to the planner, which reads it with
``torch.load(weights_only=False)``; either runs whatever a crafted file names. :func:`load_dcp_state`
gives ``dcp.load`` a :class:`SafeFileSystemReader`:

- ``.metadata`` is read by :func:`osctl.ckpt.dcp_metadata.read_dcp_metadata` (DCP metadata classes only);
- every bytes item is read by :func:`osctl.ckpt.torch_files.load_torch` (``weights_only=True``, nothing
  admitted beyond torch's allowlist) and only then handed to the planner;
- tensor items are read by torch with ``weights_only=True`` as before; an item pointing outside the folder
  or past the end of its file is refused before reading.

Any refusal or damage becomes one ``DataError`` sentence naming the file (DCP wraps errors raised on any
rank in a ``CheckpointException``; it is unwrapped here).
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

from torch.distributed.checkpoint import FileSystemReader

from osctl.ckpt.dcp_metadata import read_dcp_metadata
from osctl.ckpt.torch_files import first_line, load_torch
from osctl.errors import DataError, OsctlError

_ADVICE = "a DCP checkpoint never needs that: restore the file or resume from an earlier checkpoint"


class SafeFileSystemReader(FileSystemReader):
    """A ``FileSystemReader`` that never runs code from the checkpoint (see the module docstring)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        super().__init__(path)
        self.folder = Path(path)
        self._sizes: dict[str, int] = {}

    def read_metadata(self, *args: Any, **kwargs: Any) -> Any:
        """The folder's metadata through the restricted unpickler (rank-local ``__R.metadata`` alike)."""
        from torch.distributed.checkpoint.metadata import StorageMeta

        metadata = read_dcp_metadata(Path(self._get_metadata_path(kwargs.get("rank"))))
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata

    def _slice_file(self, file: Any, sinfo: Any) -> Any:
        """Refuse an item that points outside the folder or past the end of its file, then slice it."""
        name = str(sinfo.relative_path)
        path = self.folder / name
        if Path(name).name != name:
            raise DataError(f"{self.folder / '.metadata'} points at {name!r}, outside the checkpoint folder; refused.")
        if name not in self._sizes:
            self._sizes[name] = os.fstat(file.fileno()).st_size
        end = int(sinfo.offset) + int(sinfo.length)
        if end > self._sizes[name]:
            raise DataError(f"{path} is truncated: it has {self._sizes[name]} bytes but the metadata places data up "
                            f"to byte {end}; restore it or resume from an earlier checkpoint.")
        return super()._slice_file(file, sinfo)

    def read_data(self, plan: Any, planner: Any) -> Any:
        """Read the planned items; bytes items are checked by ``load_torch`` before the planner sees them."""
        by_index = self.storage_data
        folder = self.folder

        class _CheckedBytes:
            """The planner, except that ``load_bytes`` receives only what weights-only loading admitted."""

            def __getattr__(self, attribute: str) -> Any:
                return getattr(planner, attribute)

            def load_bytes(self, read_item: Any, value: io.BytesIO) -> None:
                import torch

                info = by_index[read_item.storage_index]
                label = f"{folder / info.relative_path} (item {read_item.storage_index.fqn!r})"
                obj = load_torch(value, allowed=(), name=label, advice=_ADVICE)
                checked = io.BytesIO()
                torch.save(obj, checked)  # the planner unpickles only what was just admitted
                checked.seek(0)
                planner.load_bytes(read_item, checked)

        try:
            return super().read_data(plan, _CheckedBytes())
        except OsctlError:
            raise
        except Exception as exc:
            raise DataError(f"cannot read the DCP data in {self.folder} ({first_line(exc)}); a .distcp file is "
                            "damaged or does not match this model — resume from an earlier checkpoint.") from None


def load_dcp_state(state: dict[str, Any], folder: Path) -> None:
    """``dcp.load(state)`` from ``folder`` through :class:`SafeFileSystemReader`; every rank takes part.

    The metadata is checked before ``dcp.load`` starts, so a refused or damaged ``.metadata`` is reported
    as itself rather than as DCP's fallback search for per-rank metadata.
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException

    read_dcp_metadata(folder / ".metadata")
    try:
        dcp.load(state, storage_reader=SafeFileSystemReader(folder))
    except CheckpointException as exc:
        failures = list(exc.failures.values())
        for failure in failures:
            inner = failure[0] if isinstance(failure, tuple) else failure
            if isinstance(inner, OsctlError):
                raise inner from None
        first = failures[0][0] if failures and isinstance(failures[0], tuple) else exc
        raise DataError(f"cannot load the DCP checkpoint {folder} ({first_line(first)}); it is damaged or does "
                        "not match this model — resume from an earlier checkpoint.") from None

