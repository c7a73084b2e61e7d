"""What went wrong with one input file: a stable code, a severity and one sentence naming the fix.

``error`` problems leave the file out of the output; ``warning`` problems are written with the record
(e.g. a variable frame rate). Every curate command reports them per file, in ``--json`` output and in
``problems.jsonl`` next to the annotations.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

ERROR = "error"
WARNING = "warning"


@dataclass(frozen=True)
class Problem:
    """One finding about one input file (``path`` as the user gave or the folder holds it)."""

    path: str
    code: str
    severity: str
    message: str

    def to_json(self) -> dict[str, Any]:
        """The ``{"path", "code", "severity", "message"}`` object of ``--json`` and ``problems.jsonl``."""
        return {"path": self.path, "code": self.code, "severity": self.severity, "message": self.message}


def count(problems: list[Problem], severity: str) -> int:
    """How many of ``problems`` have ``severity``."""
    return sum(1 for p in problems if p.severity == severity)
