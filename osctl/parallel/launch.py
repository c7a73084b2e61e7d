"""Re-launch an osctl command under torch's elastic launcher (``torch.distributed.run``).

``osctl train --nproc-per-node 8`` becomes ``torchrun --nproc-per-node 8 -m osctl train ...`` with
the launch flags removed, so a command line works the same with or without an outer launcher.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

from osctl.errors import UsageError

LAUNCH_FLAGS = ("--nproc-per-node", "--nnodes", "--node-rank", "--rdzv-endpoint", "--master-port")


@dataclass(frozen=True)
class LaunchOptions:
    """How many processes to start on this node and how nodes meet."""

    nproc_per_node: int | None = None
    nnodes: int = 1
    node_rank: int = 0
    rdzv_endpoint: str | None = None
    master_port: int | None = None

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
    """Run the current osctl command in ``nproc_per_node`` processes via torch.distributed.run; returns its exit code."""
    from torch.distributed import run as torchrun

    if os.environ.get("RANK") is not None:
        raise UsageError("already running under a launcher (RANK is set); drop --nproc-per-node/--nnodes.")
    args = ["--nproc-per-node", str(options.nproc_per_node), "--nnodes", str(options.nnodes)]
    if options.nnodes > 1:
        if not options.rdzv_endpoint:
            raise UsageError("--nnodes > 1 needs --rdzv-endpoint HOST:PORT (the same on every node).")
        args += ["--node-rank", str(options.node_rank), "--rdzv-backend", "c10d",
                 "--rdzv-endpoint", options.rdzv_endpoint]
    else:
        args += ["--standalone"] if options.master_port is None else ["--master-port", str(options.master_port)]
    command = strip_launch_flags(list(sys.argv[1:] if argv is None else argv))
    parsed = torchrun.get_args_parser().parse_args([*args, "-m", "osctl", *command])
    try:
        torchrun.run(parsed)
    except Exception as exc:  # ChildFailedError carries every rank's failure
        first = exc.get_first_failure() if hasattr(exc, "get_first_failure") else None
        if first:
            sys.stderr.write(f"osctl: rank {first[0]} failed first (exit {first[1].exitcode}); see its error above.\n")
        return 1
    return 0
