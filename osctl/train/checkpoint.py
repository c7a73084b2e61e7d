"""Training checkpoints on disk: ``output_dir/checkpoint-N/``, written atomically, found by ``latest``.

Layout of one checkpoint (all ranks write into a ``.checkpoint-N.partial`` folder that rank 0
renames into place once everything is written, so a kill during saving never leaves a folder that
resume would pick):

```
checkpoint-N/
  model/                 diffusers folder (config.json + diffusion_pytorch_model.safetensors)
  model_ema/             the same for the EMA weights (when train.use_ema)
  training_state/        strategy-owned engine state:
    optimizer.pt, lr_scheduler.pt, scaler.pt      single / ddp (torch.save, read with weights_only=True)
    dcp/                                          fsdp: torch.distributed.checkpoint (sharded model, optimizer
                                                  and EMA, re-shardable) + lr_scheduler.pt beside it
    deepspeed/                                    deepspeed: the engine's own folder (`latest`, global_stepN/...)
    ema-rank-R.pt                                 EMA shadow (rank 0 only unless the strategy shards parameters,
                                                  as ZeRO-3 does; none when the strategy saves the EMA itself)
  rng/rank-R.pt          RNG states of rank R (torch generators, python random)
  data/rank-R.json       the data stream position of rank R (epoch, batches consumed, sampler RNG)
  trainer_state.json     step, epoch, world size, strategy, recipe fingerprint, osctl version
  recipe.yaml            the resolved recipe
  manifest.json          every file with its size and SHA-256 (written last; marks completeness)
```

Reading one back (resume) never runs code from it: torch files go through ``load_torch``
(``weights_only=True``), engine folders through the strategies' restricted readers, and every file
must have the size ``manifest.json`` records. A damaged, truncated or crafted file is a ``DataError``
naming it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from osctl.errors import ConfigError, DataError, OsctlError
from osctl.utils.files import file_sha256

CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
MANIFEST = "manifest.json"
TRAINER_STATE = "trainer_state.json"
#: what a refused checkpoint state file tells the user to do
STATE_FILE_ADVICE = "a training checkpoint never needs that: restore the file or resume from an earlier checkpoint"


def checkpoint_name(step: int) -> str:
    """Folder name of the checkpoint taken after ``step`` optimizer steps."""
    return f"checkpoint-{step}"


def is_complete(path: Path) -> bool:
    """A checkpoint folder is complete when its manifest and trainer state exist."""
    return (path / MANIFEST).is_file() and (path / TRAINER_STATE).is_file()


def list_checkpoints(output_dir: Path) -> list[tuple[int, Path]]:
    """Complete ``checkpoint-N`` folders, oldest first; stray names and partial folders are ignored."""
    if not output_dir.is_dir():
        return []
    found = []
    for entry in output_dir.iterdir():
        match = CHECKPOINT_RE.match(entry.name)
        if match and entry.is_dir() and is_complete(entry):
            found.append((int(match.group(1)), entry))
    return sorted(found)


def latest_checkpoint(output_dir: Path) -> Path | None:
    """The newest complete checkpoint in ``output_dir``, or None."""
    found = list_checkpoints(output_dir)
    return found[-1][1] if found else None


def resolve_resume(value: str | None, output_dir: Path) -> Path | None:
    """The checkpoint folder ``resume_from_checkpoint`` points at (None: start fresh).

    ``latest`` picks the newest complete checkpoint (None when there is none); any other value is a
    path, or a ``checkpoint-N`` name inside ``output_dir``.
    """
    if not value:
        return None
    if value == "latest":
        return latest_checkpoint(output_dir)
    candidates = [Path(value), output_dir / value]
    for path in candidates:
        if path.is_dir():
            if not is_complete(path):
                raise ConfigError(
                    f"train.resume_from_checkpoint: {path} is incomplete (no {MANIFEST}); it was probably "
                    "interrupted while saving — use an earlier checkpoint or 'latest'."
                )
            return path
    raise ConfigError(
        f"train.resume_from_checkpoint: {value!r} is neither a folder nor a checkpoint in {output_dir}; "
        "use 'latest' or a checkpoint-N path."
    )


def partial_dir(output_dir: Path, step: int) -> Path:
    """The temporary folder every rank writes checkpoint ``step`` into before it is committed."""
    return output_dir / f".{checkpoint_name(step)}.partial"


def prepare_partial(output_dir: Path, step: int) -> Path:
    """Create an empty partial folder for ``step`` (rank 0 only), removing leftovers of a killed save."""
    path = partial_dir(output_dir, step)
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


def discard_partial(output_dir: Path, step: int) -> None:
    """Remove the partial folder of ``step`` after a failed save (it is never resumed from; this frees its space)."""
    shutil.rmtree(partial_dir(output_dir, step), ignore_errors=True)


def write_manifest(folder: Path) -> dict[str, Any]:
    """Record every file below ``folder`` with size and SHA-256 in ``manifest.json``."""
    files = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST):
        files.append({"path": path.relative_to(folder).as_posix(), "bytes": path.stat().st_size,
                      "sha256": file_sha256(path)})
    manifest = {"format": "osctl-checkpoint", "version": 1, "files": files}
    write_json(folder / MANIFEST, manifest)
    return manifest


def commit(output_dir: Path, step: int) -> Path:
    """Seal the partial folder of ``step`` (manifest last) and rename it to ``checkpoint-N`` (rank 0)."""
    partial = partial_dir(output_dir, step)
    write_manifest(partial)
    final = output_dir / checkpoint_name(step)
    if final.exists():
        stale = output_dir / f".{final.name}.replaced"
        if stale.exists():
            shutil.rmtree(stale)
        os.replace(final, stale)
        os.replace(partial, final)
        shutil.rmtree(stale)
    else:
        os.replace(partial, final)
    _fsync_dir(output_dir)
    return final


def purge(output_dir: Path, keep: int | None) -> list[Path]:
    """Delete the oldest complete checkpoints so at most ``keep`` remain; returns what was removed."""
    if not keep:
        return []
    removed = []
    for _, path in list_checkpoints(output_dir)[:-keep]:
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


def write_json(path: Path, payload: Any) -> None:
    """Write JSON atomically (temp name in the same folder, then rename)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str))
    os.replace(tmp, path)


def read_json(path: Path) -> Any:
    """Read a JSON file written by ``write_json``; a missing or damaged file is a ``DataError`` naming it."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path} is missing; the checkpoint is incomplete — resume from an earlier checkpoint.") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"cannot read {path} ({exc}); the file is damaged — restore it or resume from an earlier "
                        "checkpoint.") from None


# --- reading a checkpoint back (resume): nothing from a file runs, damage is one sentence naming the file ----

def check_files(folder: Path) -> None:
    """Every file ``manifest.json`` lists is present with its recorded size (a stat each, no hashing)."""
    from osctl.ckpt.inspect import check_manifest, integrity_error

    problem = integrity_error({"path": str(folder), "integrity": check_manifest(folder)})
    if problem:
        raise DataError(problem)


def read_trainer_state(folder: Path) -> dict[str, Any]:
    """``trainer_state.json`` of a checkpoint, with the integer ``step`` resume needs."""
    path = folder / TRAINER_STATE
    state = read_json(path)
    if not isinstance(state, dict) or not isinstance(state.get("step"), int) or isinstance(state["step"], bool):
        raise DataError(f"{path} has no integer 'step'; the file is damaged — restore it or resume from an earlier "
                        "checkpoint.")
    return state


def restore_file(path: Path, apply: Callable[[Any], Any], *, map_location: Any = "cpu") -> None:
    """Read one state file of a checkpoint and hand its content to ``apply`` (e.g. a ``load_state_dict``).

    ``.json`` files are parsed as JSON; anything else is a torch file read by
    :func:`osctl.ckpt.torch_files.load_torch` with ``weights_only=True`` and nothing admitted beyond
    torch's allowlist, so no code in it runs. Missing, truncated, refused or mismatched content (``apply``
    failing on it) is a ``DataError`` naming the file.
    """
    import torch

    from osctl.ckpt.torch_files import first_line, load_torch

    if path.suffix == ".json":
        value = read_json(path)
    elif not path.is_file():
        raise DataError(f"{path} is missing; the checkpoint is incomplete — resume from an earlier checkpoint.")
    else:
        value = load_torch(path, allowed=(), mmap=False, map_location=map_location, advice=STATE_FILE_ADVICE)
    try:
        apply(value)
    except (OsctlError, torch.OutOfMemoryError):
        raise
    except (KeyError, IndexError, ValueError, TypeError, AttributeError, AssertionError, RuntimeError) as exc:
        raise DataError(f"{path} does not hold the state this run expects ({first_line(exc)}); it is damaged or "
                        "from another run — restore it or resume from an earlier checkpoint.") from None


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
