"""Re-launch an osctl command under torch's elastic launcher (``torch.distributed.run``), and the
contract between that launcher and its workers.

``osctl train --nproc-per-node 8`` becomes ``torchrun --nproc-per-node 8 -m osctl train ...`` with
the launch flags removed, so a command line works the same with or without an outer launcher. The
launcher runs in this process; its workers are its children (each in its own session), so:

- a stop signal (SIGINT/SIGTERM) to the launcher is *forwarded* to the workers, which finish their
  step, save a checkpoint and exit 0, and the launcher then exits 0 too (torch's own handling would
  stop the workers with a 30-second deadline and exit 1 even after a clean save);
- workers die with their launcher (:func:`die_with_launcher`): a ``kill -9`` of the launcher must not
  leave orphans that train on and write checkpoints a resumed run then races;
- a failing worker writes its one-sentence error to the launcher's error file
  (:func:`reporting_errors_to_launcher`), and the launcher's summary quotes the rank that failed first.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from osctl.errors import OsctlError, PeerFailed, UsageError

LAUNCH_FLAGS = ("--nproc-per-node", "--nnodes", "--node-rank", "--rdzv-endpoint", "--master-port")
LAUNCHER_PID = "OSCTL_LAUNCHER_PID"
"""Environment variable osctl's launcher sets for its workers: its pid (see :func:`die_with_launcher`)."""
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


@dataclass(frozen=True)
class LaunchOptions:
    """How many processes to start on this node and how nodes meet (checked on creation: ``UsageError``)."""

    nproc_per_node: int | None = None
    nnodes: int = 1
    node_rank: int = 0
    rdzv_endpoint: str | None = None
    master_port: int | None = None

    def __post_init__(self) -> None:
        if self.nproc_per_node is not None and self.nproc_per_node < 1:
            raise UsageError(f"--nproc-per-node must be at least 1, got {self.nproc_per_node}; give the number of "
                             "processes to start on this node (1 runs without a launcher).")
        if self.nnodes < 1:
            raise UsageError(f"--nnodes must be at least 1, got {self.nnodes}.")
        if not 0 <= self.node_rank < self.nnodes:
            raise UsageError(f"--node-rank {self.node_rank} is outside 0..{self.nnodes - 1} for --nnodes "
                             f"{self.nnodes}; number the nodes from 0 to nnodes - 1.")

    @property
    def wanted(self) -> bool:
        """True when the user asked osctl to start the processes itself."""
        return self.nproc_per_node is not None and (self.nproc_per_node > 1 or self.nnodes > 1)


def strip_launch_flags(argv: list[str]) -> list[str]:
    """``argv`` without the launch flags (both ``--flag value`` and ``--flag=value`` forms)."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        name = arg.split("=", 1)[0]
        if name in LAUNCH_FLAGS:
            skip = "=" not in arg
            continue
        out.append(arg)
    return out


def absorb_local_rank(argv: list[str]) -> list[str]:
    """``argv`` without the ``--local_rank=N`` argument the deepspeed launcher adds (it sets ``LOCAL_RANK``
    from it when the launcher did not), so ``deepspeed --module osctl train ...`` parses like torchrun."""
    out: list[str] = []
    take_value = False
    for arg in argv:
        if take_value:
            os.environ.setdefault("LOCAL_RANK", arg)
            take_value = False
            continue
        name, has_value, value = arg.partition("=")
        if name in ("--local_rank", "--local-rank"):
            if has_value:
                os.environ.setdefault("LOCAL_RANK", value)
            else:
                take_value = True
            continue
        out.append(arg)
    return out


def relaunch(options: LaunchOptions, argv: list[str] | None = None) -> int:
    """Run the current osctl command in ``nproc_per_node`` processes via torch.distributed.run; returns its
    exit code (0 also when a stop signal ended the run after its checkpoint was saved)."""
    from torch.distributed import run as torchrun
    from torch.distributed.elastic.multiprocessing.api import SignalException

    if os.environ.get("RANK") is not None:
        raise UsageError("already running under a launcher (RANK is set); drop --nproc-per-node/--nnodes.")
    # SIGINT/SIGTERM are ours (forwarded to the workers); torch's agent keeps SIGHUP/SIGQUIT (stop them at once)
    args = ["--nproc-per-node", str(options.nproc_per_node), "--nnodes", str(options.nnodes),
            "--signals-to-handle", "SIGHUP,SIGQUIT"]
    if options.nnodes > 1:
        if not options.rdzv_endpoint:
            raise UsageError("--nnodes > 1 needs --rdzv-endpoint HOST:PORT (the same on every node).")
        args += ["--node-rank", str(options.node_rank), "--rdzv-backend", "c10d",
                 "--rdzv-endpoint", options.rdzv_endpoint]
    else:
        args += ["--standalone"] if options.master_port is None else ["--master-port", str(options.master_port)]
    command = strip_launch_flags(list(sys.argv[1:] if argv is None else argv))
    parsed = torchrun.get_args_parser().parse_args([*args, "-m", "osctl", *command])
    with _environment({LAUNCHER_PID: str(os.getpid())}), _StopForwarder():
        try:
            torchrun.run(parsed)
        except SignalException as exc:  # a third stop signal, or SIGHUP/SIGQUIT: torch stopped the workers
            sys.stderr.write(f"osctl: stopped by {exc.sigval.name}; the workers were ended without a final save.\n")
            return 1
        except Exception as exc:  # ChildFailedError carries every rank's failure
            sys.stderr.write(f"osctl: {failure_summary(exc)}\n")
            return 1
    return 0


def failure_summary(exc: BaseException) -> str:
    """One line naming the rank that failed first and its one-sentence error.

    Ranks that wrote their error through :func:`reporting_errors_to_launcher` are preferred, their own
    errors before those caused by another rank (``PeerFailed``), each by time; then torch's first failure.
    """
    failures: dict[int, Any] = getattr(exc, "failures", None) or {}
    if not failures:
        return f"the launcher failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    reported = []
    for rank, failure in failures.items():
        data = failure.error_file_data if isinstance(getattr(failure, "error_file_data", None), dict) else {}
        info = data.get("osctl")
        if isinstance(info, dict):
            reported.append((bool(info.get("peer")), float(info.get("time", 0)), rank, failure))
    if reported:
        _, _, rank, failure = min(reported, key=lambda item: item[:3])
        return f"rank {rank} failed first (exit {failure.exitcode}): {failure.message}"
    rank, failure = exc.get_first_failure()  # type: ignore[attr-defined]
    detail = failure.message if failure.exitcode < 0 else "see its error above"
    return f"rank {rank} failed first (exit {failure.exitcode}); {detail}."


@contextlib.contextmanager
def reporting_errors_to_launcher() -> Iterator[None]:
    """Inside a worker of an elastic launcher, write a failing command's one-sentence error to the file the
    launcher reads (``TORCHELASTIC_ERROR_FILE``), so its summary can quote it; the error goes on as before.

    ``PeerFailed`` errors (this rank stopped because another failed) are marked, so the summary names the
    rank that caused them.
    """
    try:
        yield
    except Exception as exc:
        path = os.environ.get("TORCHELASTIC_ERROR_FILE")
        if path and not type(exc).__module__.startswith("click"):  # click's Exit/Abort are exits, not errors
            text = exc.message if isinstance(exc, OsctlError) else f"{type(exc).__name__}: {exc}"
            now = time.time()
            record = {"message": " ".join(text.split()) or type(exc).__name__, "timestamp": int(now),
                      "osctl": {"time": now, "peer": isinstance(exc, PeerFailed), "rank": os.environ.get("RANK")}}
            # atomically: the launcher may read the file while this rank is being stopped mid-write
            with contextlib.suppress(OSError):
                from osctl.utils.atomic import atomic_write_text

                atomic_write_text(Path(path), json.dumps(record), root=Path(path).parent)
        raise


def die_with_launcher() -> bool:
    """Make this worker die with the launcher that started it (Linux); returns True when armed.

    Sets the parent-death signal (``prctl(PR_SET_PDEATHSIG)``): when the parent — osctl's launcher, or
    an outer torchrun / deepspeed launcher — ends, however it ends (``kill -9`` included), the kernel
    sends this process the signal. The parent can die just before the call, so the parent is checked
    afterwards: osctl's launcher passes its pid in ``OSCTL_LAUNCHER_PID``; under another launcher a
    parent of pid 1 means we were already orphaned (reparented to init).

    The signal is SIGKILL, deliberately: the launcher is gone, so is the rendezvous store it hosted, and
    the peers get the same signal at the same moment. A SIGTERM would make each rank "finish its step
    and save" — a save whose collectives wait for peers that are vanishing, and whose files would be
    half-written over an output folder the user may already be resuming from. SIGKILL cannot be caught
    or delayed, and checkpoints are committed atomically, so a killed save leaves only its ``.partial``
    folder, which resume ignores. (The signal follows the parent *thread*; torch's agent starts workers
    from its main thread, which lives as long as the launcher.)
    """
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) != 0:
            return False
    except (OSError, AttributeError):
        return False
    expected = os.environ.get(LAUNCHER_PID, "")
    parent = os.getppid()
    if (expected.isdigit() and parent != int(expected)) or parent == 1:
        os.kill(os.getpid(), signal.SIGKILL)  # the launcher died before the signal was armed
    return True


@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    """``values`` in ``os.environ`` (inherited by the workers) for the duration, then the previous state."""
    before = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


class _StopForwarder:
    """While the launcher runs: SIGINT/SIGTERM go on to the workers (each leads its own session, so a
    terminal's Ctrl-C reaches only the launcher). The first asks them to save and stop, the second makes
    them stop at once; a third ends the launcher (torch's agent then kills the workers)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.received = 0
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _StopForwarder:
        for sig in self.SIGNALS:
            with contextlib.suppress(ValueError):  # not the main thread: leave signals alone
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, frame: Any) -> None:
        from torch.distributed.elastic.multiprocessing.api import SignalException

        self.received += 1
        name = signal.Signals(signum).name
        if self.received > 2:
            raise SignalException(f"osctl launcher got {name} a third time", sigval=signal.Signals(signum))
        what = ("each rank finishes its step, saves a checkpoint and stops (send it again to stop without saving)"
                if self.received == 1 else "the ranks stop now without saving")
        sys.stderr.write(f"osctl: {name}: {what}.\n")
        forward_signal(signum)


def forward_signal(signum: int) -> None:
    """Send ``signum`` to every child of this process (the workers, not their own DataLoader processes:
    each worker decides how to stop and then ends its helpers itself)."""
    import psutil

    for child in psutil.Process().children():
        with contextlib.suppress(psutil.Error):
            child.send_signal(signum)
