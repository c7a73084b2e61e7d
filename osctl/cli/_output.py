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


def error(message: str, hint: str | None = None) -> None:
    """Print a one-line error (and an optional hint) on stderr."""
    err_console.print(f"[bold red]error:[/] {message}", markup=True, highlight=False, soft_wrap=True)
    if hint:
        err_console.print(f"[dim]hint:[/] {hint}", markup=True, highlight=False, soft_wrap=True)


def warn(message: str) -> None:
    """Print a one-line warning on stderr."""
    err_console.print(f"[yellow]warning:[/] {message}", markup=True, highlight=False, soft_wrap=True)


def debug_enabled() -> bool:
    """True when tracebacks should be shown (``--debug`` or ``OSCTL_DEBUG=1``)."""
    return os.environ.get("OSCTL_DEBUG") == "1"
