"""One place that decides how commands print: rich for people, JSON for scripts."""

from __future__ import annotations

import os
import sys
from typing import Any

import orjson
from rich.console import Console

console = Console(highlight=False, soft_wrap=False)
err_console = Console(stderr=True, highlight=False)


def print_json(payload: Any) -> None:
    """Write ``payload`` as indented JSON on stdout (the ``--json`` output of every command)."""
    data = orjson.dumps(payload, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS | orjson.OPT_SERIALIZE_NUMPY, default=str)
    sys.stdout.write(data.decode() + "\n")
    sys.stdout.flush()


def rank_prefix() -> str:
    """``"rank R: "`` inside a multi-process run (from the launcher's environment), else ``""``."""
    if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
        return f"rank {os.environ.get('RANK', '?')}: "
    return ""


def error(message: str, hint: str | None = None) -> None:
    """Print a one-line error (and an optional hint) on stderr; every rank of a multi-process run
    reports its own errors, prefixed with its rank."""
    err_console.print(f"[bold red]error:[/] {rank_prefix()}{message}", markup=True, highlight=False, soft_wrap=True)
    if hint:
        err_console.print(f"[dim]hint:[/] {hint}", markup=True, highlight=False, soft_wrap=True)


def warn(message: str) -> None:
    """Print a one-line warning on stderr."""
    err_console.print(f"[yellow]warning:[/] {message}", markup=True, highlight=False, soft_wrap=True)


def debug_enabled() -> bool:
    """True when tracebacks should be shown (``--debug`` or ``OSCTL_DEBUG=1``)."""
    return os.environ.get("OSCTL_DEBUG") == "1"
