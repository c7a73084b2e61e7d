"""One place that decides how commands print: rich for people, JSON for scripts.

Text that comes from users or data (paths, captions, prompts, keys, library messages) is never read as
rich markup: :func:`error` and :func:`warn` print their messages as plain text (only the fixed prefix
is styled), and commands that mix styles with such text pass it through :func:`escape` first. A
``[/x]`` in a file name then prints as itself instead of failing with a ``MarkupError``.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import orjson
from rich.console import Console
from rich.markup import escape as _escape_markup
from rich.text import Text

console = Console(highlight=False, soft_wrap=False)
err_console = Console(stderr=True, highlight=False)


def escape(value: object) -> str:
    """``value`` as text that prints literally inside a rich markup string (``[`` is not a tag)."""
    return _escape_markup(str(value))


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


def _plain_line(label: str, style: str, message: str) -> None:
    """``label`` in ``style`` and ``message`` as plain text (no markup, no emoji codes), on stderr."""
    line = Text.assemble((label, style), " ", message)
    err_console.print(line, highlight=False, soft_wrap=True, emoji=False, markup=False)


def error(message: str, hint: str | None = None) -> None:
    """Print a one-line error (and an optional hint) on stderr as plain text; every rank of a
    multi-process run reports its own errors, prefixed with its rank."""
    _plain_line("error:", "bold red", f"{rank_prefix()}{message}")
    if hint:
        _plain_line("hint:", "dim", hint)


def warn(message: str) -> None:
    """Print a one-line warning on stderr as plain text (prefixed with the rank in a multi-process run)."""
    _plain_line("warning:", "yellow", f"{rank_prefix()}{message}")


def debug_enabled() -> bool:
    """True when tracebacks should be shown (``--debug`` or ``OSCTL_DEBUG=1``)."""
    return os.environ.get("OSCTL_DEBUG") == "1"
