"""The error tree every osctl command reports through.

Each error carries the exit code the command line uses and an optional hint (usually the next command
to run). Messages are one sentence naming the file, key or value at fault.
"""

from __future__ import annotations


class OsctlError(Exception):
    """Base of all errors osctl reports to a user without a traceback."""

    exit_code: int = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class UsageError(OsctlError):
    """The command line or its inputs are wrong (exit 2)."""

    exit_code = 2


class ConfigError(UsageError):
    """A recipe (or an override of it) is wrong (exit 2)."""


class PluginError(UsageError):
    """A plugin is missing, duplicated or broken (exit 2)."""


class DataError(OsctlError):
    """The command ran and found a problem in the data (exit 1)."""


class CheckFailed(OsctlError):
    """The command ran and a check it performs failed (exit 1)."""


class PeerFailed(OsctlError):
    """Another process of a multi-process run failed or stopped answering, so this one cannot go on (exit 1)."""
