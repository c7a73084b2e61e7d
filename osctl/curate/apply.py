"""``osctl data caption`` and ``osctl data score``: run captioner and scorer plugins over a data set.

Components are looked up and their options validated once, in the calling process, before any work
starts (a missing model folder is reported at once). What travels to the workers is the component's
factory -- a module-level function, sent by name -- and its validated config; each worker process
builds the component once and reuses it for every clip it gets (:func:`built`).

``caption`` writes ``cap`` (records that already have a non-empty one are left alone unless
``overwrite``); ``score`` writes each scorer's field (``aesthetic``, ``tech``, ``motion`` -- the fields
``data.filters`` filters on), keeping values a record already has unless ``overwrite``. A scorer may
return None (the score does not apply, e.g. the motion of an image): the field is then not written.
"""

from __future__ import annotations

import math
import pickle
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from osctl.curate.clip import Clip
from osctl.curate.engines import Engine
from osctl.curate.jobs import Job, JobResult, Merged, Progress, run_job, task_error
from osctl.errors import DataError, PluginError, UsageError

CAPTION_SCHEMA = "osctl.data.caption/1"
SCORE_SCHEMA = "osctl.data.score/1"


@dataclass(frozen=True)
class Component:
    """A resolved plugin component: what a worker needs to build it (``field``: the key a scorer writes)."""

    kind: str
    name: str
    factory: Any
    config: BaseModel
    field: str | None = None

    @property
    def token(self) -> str:
        """Identifies the built object in a worker: kind, name and the config's values."""
        return f"{self.kind}:{self.name}:{self.config.model_dump_json()}"


def parse_options(pairs: Sequence[str] | None, *, scoped: bool) -> dict[str, Any]:
    """``KEY=VALUE`` pairs as a dict; ``scoped``: ``NAME.KEY=VALUE`` into ``{NAME: {KEY: v}}``.

    Values are read as YAML (``8`` is a number, ``true`` a boolean, ``[a, b]`` a list), except that text
    which only looks like a mapping or a list to YAML (``Describe: briefly``) stays text.
    """
    options: dict[str, Any] = {}
    for pair in pairs or []:
        key, equals, text = pair.partition("=")
        key = key.strip()
        if not equals or not key:
            raise UsageError(f"--set {pair!r}: write KEY=VALUE" + (" with KEY as SCORER.OPTION" if scoped else "") + ".")
        try:
            value = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError:
            value = text
        if isinstance(value, dict | list) and not text.lstrip().startswith(("{", "[")):
            value = text  # "Describe: briefly" is a sentence, not a mapping
        if scoped:
            name, dot, option = key.partition(".")
            if not dot or not name or not option:
                raise UsageError(f"--set {pair!r}: name the scorer, e.g. --set motion.pairs=8.")
            options.setdefault(name, {})[option] = value
        else:
            options[key] = value
    return options


def resolve(kind: str, name: str, options: dict[str, Any]) -> Component:
    """Look ``name`` up among the ``kind`` components, validate ``options`` and check workers can build it."""
    from osctl.plugin_manager import default_registry

    registry = default_registry()
    config = registry.make_config(kind, name, options, where=f"{kind} {name}")
    entry = registry.get(kind, name)
    try:
        pickle.dumps(entry.spec.factory)
    except Exception:  # lambdas, nested functions and bound methods of unpicklable objects
        raise PluginError(f"the {kind} {name!r} ({entry.provider.describe()}) has a factory that cannot be sent to "
                          "worker processes; define it as a module-level function.") from None
    field = None
    if kind == "scorer":
        field = entry.spec.metadata.get("field")
        if not isinstance(field, str) or not field:
            raise PluginError(f"the scorer {name!r} ({entry.provider.describe()}) names no record field; register "
                              'it with metadata={"field": "..."}.')
    return Component(kind, entry.name, entry.spec.factory, config, field)


_BUILT: dict[str, Any] = {}


def built(component: Component) -> Any:
    """The component built from its factory, once per worker process."""
    found = _BUILT.get(component.token)
    if found is None:
        found = component.factory(component.config)
        _BUILT[component.token] = found
    return found


def caption_task(component: Component, clip: Clip) -> dict[str, Any]:
    """The per-record work of ``data caption`` (runs on an engine's worker)."""
    try:
        text = built(component).caption(clip)
    except (DataError, OSError) as exc:
        return task_error(exc)
    if not isinstance(text, str) or not text.strip():
        return {"error": ["empty_caption", f"the captioner {component.name!r} returned {text!r}, expected some text"]}
    return {"ok": " ".join(text.split())}


def score_task(components: tuple[Component, ...], clip: Clip) -> dict[str, Any]:
    """The per-record work of ``data score``: every scorer on one clip (runs on an engine's worker)."""
    scores: dict[str, float | None] = {}
    for component in components:
        try:
            value = built(component).score(clip)
        except (DataError, OSError) as exc:
            return task_error(exc)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)
                                  or not math.isfinite(float(value))):
            return {"error": ["bad_score", f"the scorer {component.name!r} returned {value!r}, expected a finite "
                                           "number or None"]}
        scores[str(component.field)] = None if value is None else round(float(value), 6)
    return {"ok": scores}


def _has_caption(record: dict[str, Any]) -> bool:
    cap = record.get("cap")
    if isinstance(cap, str):
        return bool(cap.strip())
    return isinstance(cap, list) and bool(cap) and all(isinstance(c, str) and c.strip() for c in cap)


def caption_data(data_txt: Path, out: Path, *, captioner: str, options: dict[str, Any] | None = None,
                 overwrite: bool = False, engine: Engine | None = None, progress: Progress | None = None) -> JobResult:
    """Caption the records of ``data_txt`` with the ``captioner`` plugin and write the data set under ``out``."""
    component = resolve("captioner", captioner, dict(options or {}))

    def merge(record: dict[str, Any], text: str) -> Merged:
        return [(None, {**record, "cap": text})]

    job = Job(command="caption", task=caption_task, context=component,
              options={"captioner": component.token}, wants=lambda r: overwrite or not _has_caption(r), merge=merge)
    return run_job(data_txt, out, job, engine=engine, progress=progress)


def score_data(data_txt: Path, out: Path, *, scorers: Sequence[str], options: dict[str, dict[str, Any]] | None = None,
               overwrite: bool = False, engine: Engine | None = None, progress: Progress | None = None) -> JobResult:
    """Score the records of ``data_txt`` with each of ``scorers`` and write the data set under ``out``."""
    names = list(dict.fromkeys(scorers))
    if not names:
        raise UsageError("name at least one scorer with --scorer (see `osctl plugins list --kind scorer`).")
    options = dict(options or {})
    unknown = sorted(set(options) - set(names))
    if unknown:
        raise UsageError(f"--set {unknown[0]}.…: {unknown[0]!r} is not one of the chosen scorers ({', '.join(names)}).")
    components = tuple(resolve("scorer", name, dict(options.get(name, {}))) for name in names)
    fields = [c.field for c in components]
    taken = sorted({f for f in fields if fields.count(f) > 1})
    if taken:
        raise UsageError(f"two chosen scorers write the field {taken[0]!r}; choose one of them.")

    def wants(record: dict[str, Any]) -> bool:
        return overwrite or any(record.get(f) is None for f in fields)

    def merge(record: dict[str, Any], scores: dict[str, float | None]) -> Merged:
        new = dict(record)
        for field, value in scores.items():
            if value is not None and (overwrite or new.get(field) is None):
                new[field] = value
        return [(None, new)]

    job = Job(command="score", task=score_task, context=components, options={"scorers": [c.token for c in components]},
              wants=wants, merge=merge)
    return run_job(data_txt, out, job, engine=engine, progress=progress)
