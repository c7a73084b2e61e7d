"""Typed registries of components, filled by the plugin hooks and looked up by name.

A lookup of an unknown name lists the known ones with the closest match; a name registered twice
is an error naming both providers. Configs are pydantic models owned by each component, so a
recipe section can be checked without building anything.
"""

from __future__ import annotations

import difflib
import importlib.util
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from osctl.errors import ConfigError, PluginError


class ComponentConfig(BaseModel):
    """Base for component configs: strict (unknown keys are errors), assignment validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


class EmptyConfig(ComponentConfig):
    """Config of a component that takes no options."""


@dataclass(frozen=True)
class ComponentSpec:
    """What a plugin registers: a named factory, its config schema and a one-line summary.

    ``factory(config, **runtime)`` builds the component from a validated ``config`` instance plus
    runtime objects (device, dtype, ...) that the calling command passes. ``metadata`` holds static
    facts other parts may need before building (e.g. an autoencoder's strides); its optional
    ``requires`` entry maps Python modules the component needs to the command that installs them, so
    selecting the component without them fails when the recipe is checked, not mid-run.
    """

    name: str
    summary: str
    factory: Callable[..., Any]
    config: type[BaseModel] = EmptyConfig
    aliases: tuple[str, ...] = ()
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Provider:
    """Who registered a component: the plugin (entry-point) name and its distribution."""

    plugin: str
    distribution: str
    version: str

    def describe(self) -> str:
        """A short human form such as ``osctl 0.1.0 (osctl.samplers.diffusers)``."""
        return f"{self.distribution} {self.version} ({self.plugin})"


@dataclass(frozen=True)
class Registered:
    """A registered component: its kind, its spec and its provider."""

    kind: str
    spec: ComponentSpec
    provider: Provider

    @property
    def name(self) -> str:
        return self.spec.name


class Registry:
    """All components by kind and name; the only place that resolves names."""

    def __init__(self, kinds: list[str]) -> None:
        self._by_kind: dict[str, dict[str, Registered]] = {kind: {} for kind in kinds}
        self._aliases: dict[str, dict[str, str]] = {kind: {} for kind in kinds}

    @property
    def kinds(self) -> list[str]:
        return list(self._by_kind)

    def add(self, kind: str, spec: ComponentSpec, provider: Provider) -> None:
        """Register ``spec`` under ``kind``; a name or alias taken twice raises ``PluginError``."""
        if not isinstance(spec, ComponentSpec):
            raise PluginError(
                f"plugin {provider.plugin!r} registered a {type(spec).__name__} as a {kind}; "
                "pass an osctl.ComponentSpec to register()."
            )
        table = self._by_kind[kind]
        for key in (spec.name, *spec.aliases):
            owner = table.get(self._aliases[kind].get(key, key))
            if owner is not None:
                raise PluginError(
                    f"{kind} {key!r} is registered twice: by {owner.provider.describe()} and by "
                    f"{provider.describe()}; uninstall or disable one of them (OSCTL_DISABLE_PLUGINS)."
                )
        table[spec.name] = Registered(kind, spec, provider)
        for alias in spec.aliases:
            self._aliases[kind][alias] = spec.name

    def names(self, kind: str) -> list[str]:
        """Registered names of ``kind``, sorted."""
        return sorted(self._by_kind[kind])

    def get(self, kind: str, name: str) -> Registered:
        """The component ``name`` of ``kind``; an unknown name lists the known ones and the closest."""
        if kind not in self._by_kind:
            raise PluginError(f"unknown component kind {kind!r}; kinds are {', '.join(self._by_kind)}.")
        table = self._by_kind[kind]
        key = self._aliases[kind].get(name, name)
        if key in table:
            return table[key]
        known = self.names(kind)
        candidates = known + list(self._aliases[kind])
        close = difflib.get_close_matches(name, candidates, n=1, cutoff=0.5)
        lowered = {c.lower(): c for c in candidates}
        if not close and name.lower() in lowered:
            close = [lowered[name.lower()]]
        did_you_mean = f" Did you mean {close[0]!r}?" if close else ""
        listing = ", ".join(known) if known else "none (is osctl installed? run `pip install -e .`)"
        raise PluginError(f"unknown {kind} {name!r}; available: {listing}.{did_you_mean}")

    def __iter__(self) -> Iterator[Registered]:
        for kind in self._by_kind:
            yield from (self._by_kind[kind][n] for n in sorted(self._by_kind[kind]))

    def make_config(self, kind: str, name: str, options: dict[str, Any], where: str) -> BaseModel:
        """Validate ``options`` against the component's config; errors name ``where`` (a key path).

        A module listed in the spec's ``metadata["requires"]`` that cannot be found is a ``ConfigError``
        naming the install command, so a missing optional dependency stops a run before it starts.
        """
        entry = self.check_requirements(kind, name, where=where)
        try:
            return entry.spec.config.model_validate(options)
        except ValidationError as exc:
            problems = validation_problems(exc, prefix=where, model=entry.spec.config)
            raise ConfigError(_joined(problems), problems=problems) from None

    def check_requirements(self, kind: str, name: str, *, where: str) -> Registered:
        """The component ``name`` of ``kind``, after checking the modules its ``metadata["requires"]`` lists.

        A missing module is a ``ConfigError`` naming ``where`` (the recipe key that chose the component)
        and the install command the plugin gave, so a recipe selecting, say, ``parallel.strategy:
        deepspeed`` without deepspeed installed fails when it is checked, not in the middle of a run.
        """
        entry = self.get(kind, name)
        for module, install in dict(entry.spec.metadata.get("requires", {})).items():
            if not module_available(module):
                raise ConfigError(f"{where}: the {kind} {name!r} needs the Python package {module!r}, which is not "
                                  f"installed; install it with `{install}`.")
        return entry

    def build(self, kind: str, name: str, config: BaseModel | dict[str, Any] | None = None, **runtime: Any) -> Any:
        """Build component ``name`` of ``kind`` from its config and runtime arguments."""
        entry = self.get(kind, name)
        if config is None or isinstance(config, dict):
            config = self.make_config(kind, name, dict(config or {}), where=kind)
        return entry.spec.factory(config, **runtime)


def module_available(name: str) -> bool:
    """True when ``import name`` can find the module (without importing it: this runs for every recipe check)."""
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def format_validation_error(exc: ValidationError, *, prefix: str = "", model: type[BaseModel] | None = None) -> str:
    """One line per pydantic error, as ``dotted.key: message`` with a did-you-mean for unknown keys."""
    return _joined(validation_problems(exc, prefix=prefix, model=model))


def _joined(problems: list[tuple[str, str]]) -> str:
    return "; ".join(f"{key}: {text}" for key, text in problems)


def validation_problems(exc: ValidationError, *, prefix: str = "",
                        model: type[BaseModel] | None = None) -> list[tuple[str, str]]:
    """``(dotted.key, message)`` per pydantic error, with a did-you-mean for unknown keys."""
    problems = []
    for err in exc.errors():
        path = ".".join(str(p) for p in (prefix, *err["loc"]) if p != "")
        if err["type"] == "extra_forbidden":
            allowed = _fields_at(model, err["loc"][:-1]) if model is not None else []
            close = difflib.get_close_matches(str(err["loc"][-1]), allowed, n=1, cutoff=0.5)
            hint = f"; did you mean {close[0]!r}?" if close else (f"; known keys: {', '.join(allowed)}" if allowed else "")
            problems.append((path, f"unknown key{hint}"))
        else:
            value = err.get("input")
            shown = "" if isinstance(value, dict) else f" (got {value!r})"
            problems.append((path, f"{err['msg']}{shown}"))
    return problems


def _fields_at(model: type[BaseModel] | None, loc: tuple[Any, ...]) -> list[str]:
    """Field names of the (nested) pydantic model reached by following ``loc``."""
    current: Any = model
    for part in loc:
        if current is None or not hasattr(current, "model_fields"):
            return []
        info = current.model_fields.get(str(part))
        if info is None:
            return []
        current = _model_of(info.annotation)
    if current is None or not hasattr(current, "model_fields"):
        return []
    return sorted(current.model_fields)


def _model_of(annotation: Any) -> Any:
    """The BaseModel class inside an annotation such as ``Foo | None``."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _model_of(arg)
        if found is not None:
            return found
    return None
