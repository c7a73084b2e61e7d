"""Which weights a recipe needs on disk, and which of them are not there yet.

A plan (``osctl train --dry-run``) needs no weights: it lists the missing ones with where they are
expected and how to get them. Training and sampling refuse to start without them, with one sentence,
before anything large is built.

A component reports its own needs: its config class may define ``missing_weights()`` returning a list
of :class:`MissingWeights` (empty when everything is there). It must only look at the file system
(never the network, never a weight file's content), so the check costs milliseconds.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

from osctl.errors import ConfigError, OsctlError

NO_DOWNLOAD_HINT = ("osctl does not download at run time; `osctl train --recipe R --dry-run` shows the plan "
                    "without the weights.")


@dataclass(frozen=True)
class MissingWeights:
    """Weights a recipe names that are not on this machine.

    ``key``: the recipe key (``text_encoder.name_or_path``); ``detail``: what is missing, naming the
    value and the place searched; ``expected``: that place (a folder, or the hub cache folder);
    ``fetch``: how to get them (a command or an instruction).
    """

    key: str
    detail: str
    expected: str
    fetch: str

    def describe(self) -> str:
        """``key: detail; fetch`` — one clause of the error sentence or one plan line."""
        return f"{self.key}: {self.detail}; {self.fetch}"

    def as_dict(self) -> dict[str, str]:
        """The four fields, for JSON output."""
        return asdict(self)


def component_missing_weights(components: dict[str, Any], sections: Iterable[str] | None = None) -> list[MissingWeights]:
    """The missing weights of the recipe's component configs (``CheckedRecipe.components``), in section order.

    ``sections`` limits the check (training needs no refiner); a config without ``missing_weights``
    needs no files. A config that cannot tell (its check raised an osctl error) reports that error as
    the missing item, since the same error would stop the run.
    """
    wanted = list(components) if sections is None else [s for s in sections if s in components]
    missing: list[MissingWeights] = []
    for section in wanted:
        check = getattr(components[section], "missing_weights", None)
        if not callable(check):
            continue
        try:
            missing.extend(check())
        except OsctlError as exc:
            missing.append(MissingWeights(key=section, detail=exc.message.rstrip("."), expected="",
                                          fetch=exc.hint or "fix the recipe section"))
    return missing


def require_weights(missing: list[MissingWeights], *, what: str) -> None:
    """Raise one ``ConfigError`` (exit 2) listing every missing item; do nothing when ``missing`` is empty.

    ``what`` names the command in the sentence, e.g. ``training`` or ``sampling``.
    """
    if missing:
        listing = "; ".join(item.describe().rstrip(".") for item in missing)
        raise ConfigError(f"{what} needs weights that are not on this machine: {listing}.", hint=NO_DOWNLOAD_HINT)
