"""Where the per-file work of the curate commands runs: local processes (default) or a Ray cluster.

Both engines take the same task -- a module-level function ``fn(context, item)`` -- and the same
items, and return the results in input order, so a command's output does not depend on the engine.
Items travel in chunks (a few dozen per task) so that short tasks such as probing a small clip are not
dominated by the cost of handing them out; each finished item is reported at once through
``on_result(index, result)`` (progress, the journal of finished work).

- :class:`LocalEngine`: a pool of ``workers`` processes on this machine (forked on Linux, so a task
  finds everything the command already loaded); ``workers=1`` runs in the calling process.
- :class:`RayEngine`: Ray tasks on the cluster at ``address`` (``ray.init(address=...)``), or on a
  Ray instance this process already joined, or else on a local instance it starts and stops. Every
  node needs osctl (and the plugins a command uses) installed, and the media under the same paths.
  Ray's task API is used directly rather than Ray Data: the per-file results are small and go back to
  the driver, and a Ray Data pipeline costs about a second more per run (ten seconds for its first
  run on a fresh cluster) on the project's machine, which is most of a thousand-clip import.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any, Protocol

from osctl.errors import DataError, UsageError

ENGINES: tuple[str, ...] = ("local", "ray")
RAY_INSTALL = 'pip install -c constraints.txt "osctl[ray]"'

Task = Callable[[Any, Any], Any]
OnResult = Callable[[int, Any], None]


class Engine(Protocol):
    """Runs ``fn(context, item)`` for every item and returns the results in input order."""

    name: str

    def map(self, fn: Task, items: Sequence[Any], *, context: Any = None,
            on_result: OnResult | None = None) -> list[Any]: ...

    def close(self) -> None: ...


def run_chunk(fn: Task, context: Any, chunk: list[tuple[int, Any]]) -> list[tuple[int, Any]]:
    """Run ``fn`` on each ``(index, item)`` of a chunk (the unit both engines hand to a worker)."""
    return [(index, fn(context, item)) for index, item in chunk]


def chunk_items(items: Sequence[Any], slots: int) -> list[list[tuple[int, Any]]]:
    """``items`` numbered and cut into chunks: about four per slot so that slow chunks even out, at most 64 items."""
    size = max(1, min(64, math.ceil(len(items) / max(1, slots * 4))))
    numbered = list(enumerate(items))
    return [numbered[start:start + size] for start in range(0, len(numbered), size)]


def default_workers() -> int:
    """Processes a local run uses by default: one per CPU this process may use (at most 16)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    return max(1, min(16, cpus))


class LocalEngine:
    """``workers`` processes on this machine (see the module docstring)."""

    name = "local"

    def __init__(self, workers: int | None = None) -> None:
        self.workers = max(1, int(workers or default_workers()))

    def map(self, fn: Task, items: Sequence[Any], *, context: Any = None,
            on_result: OnResult | None = None) -> list[Any]:
        results: list[Any] = [None] * len(items)

        def take(pairs: list[tuple[int, Any]]) -> None:
            for index, result in pairs:
                results[index] = result
                if on_result is not None:
                    on_result(index, result)

        if self.workers <= 1 or len(items) <= 1:
            for index, item in enumerate(items):
                take([(index, fn(context, item))])
            return results
        chunks = chunk_items(items, self.workers)
        method = "fork" if "fork" in multiprocessing.get_all_start_methods() and sys.platform != "darwin" else "spawn"
        pool = ProcessPoolExecutor(max_workers=min(self.workers, len(chunks)),
                                   mp_context=multiprocessing.get_context(method))
        pending: set[Future[list[tuple[int, Any]]]] = set()
        try:
            pending = {pool.submit(run_chunk, fn, context, chunk) for chunk in chunks}
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    take(future.result())
        except BrokenProcessPool:
            raise DataError("a worker process died while working on the files (a decoder crash?); the files "
                            "finished so far are remembered: run the command again to resume, or with "
                            "--workers 1 to find the file at fault.") from None
        finally:
            for future in pending:
                future.cancel()
            pool.shutdown(wait=True, cancel_futures=True)
        return results

    def close(self) -> None:
        """Nothing to release: the pool lives for one :meth:`map`."""


class RayEngine:
    """Ray tasks on a Ray cluster (see the module docstring)."""

    name = "ray"

    def __init__(self, address: str | None = None, workers: int | None = None) -> None:
        try:
            import ray
        except ImportError:
            raise UsageError(f"--engine ray needs Ray, which is not installed; install it with `{RAY_INSTALL}`.") from None
        self._ray = ray
        self._started = False
        if not ray.is_initialized():
            self._started = address is None and not os.environ.get("RAY_ADDRESS")
            options: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "logging_level": "WARNING"}
            if self._started:
                options["num_cpus"] = workers
                options["runtime_env"] = {"env_vars": {"PYTHONPATH": _python_path()}}
            try:
                ray.init(address=address, **options)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise UsageError(f"cannot join the Ray cluster at {address or os.environ.get('RAY_ADDRESS')}: {exc}; "
                                 "check --address (e.g. ray://head:10001 or auto).") from None
        self.workers = workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
        self._remote = ray.remote(num_cpus=1, max_retries=1)(run_chunk)

    def map(self, fn: Task, items: Sequence[Any], *, context: Any = None,
            on_result: OnResult | None = None) -> list[Any]:
        ray = self._ray
        results: list[Any] = [None] * len(items)
        chunks = chunk_items(items, self.workers)
        context_ref = ray.put(context)
        window = self.workers * 4
        queued = iter(chunks)
        pending = [self._remote.remote(fn, context_ref, chunk) for chunk in _take(queued, window)]
        try:
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                for ref in done:
                    try:
                        pairs = ray.get(ref)
                    except ray.exceptions.RayTaskError as exc:
                        cause = exc.as_instanceof_cause()
                        raise cause from None
                    for index, result in pairs:
                        results[index] = result
                        if on_result is not None:
                            on_result(index, result)
                    pending.extend(self._remote.remote(fn, context_ref, chunk) for chunk in _take(queued, 1))
        finally:
            for ref in pending:
                ray.cancel(ref)
        return results

    def close(self) -> None:
        """Stop the local Ray instance if this engine started it (a joined cluster is left running)."""
        if self._started and self._ray.is_initialized():
            self._ray.shutdown()
            self._started = False


def _take(iterator: Any, count: int) -> list[Any]:
    out = []
    for _ in range(count):
        try:
            out.append(next(iterator))
        except StopIteration:
            break
    return out


def _python_path() -> str:
    """PYTHONPATH for the workers of a local Ray instance: the folders osctl and its built-in plugins load from."""
    import importlib.util

    import osctl

    folders = [str(Path(osctl.__file__).resolve().parent.parent)]
    builtin = importlib.util.find_spec("osctl_" + "builtin")  # located, never imported by the core
    if builtin is not None and builtin.origin:
        folders.append(str(Path(builtin.origin).resolve().parent.parent))
    existing = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return os.pathsep.join(dict.fromkeys(folders + existing))


def make_engine(name: str, *, workers: int | None = None, address: str | None = None) -> Engine:
    """The engine ``name`` (``local`` or ``ray``); ``address`` is only for Ray."""
    if name == "local":
        if address is not None:
            raise UsageError("--address names a Ray cluster; add --engine ray.")
        return LocalEngine(workers)
    if name == "ray":
        return RayEngine(address, workers)
    raise UsageError(f"--engine {name!r} is not an engine; use one of {', '.join(ENGINES)}.")
