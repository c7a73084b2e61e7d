"""Find, load and register osctl plugins from the ``osctl`` entry-point group.

Entry points are discovered without importing them (so duplicates and allow/deny lists are applied
first), then imported and registered with pluggy under their entry-point name. pluggy's own loader
silently skips a second entry point with the same name; this one reports it.

Environment:
- ``OSCTL_LOAD_PLUGINS=dist1,dist2``: load third-party plugins only from these distributions
  (empty value: none); osctl's own built-ins always load unless disabled.
- ``OSCTL_DISABLE_PLUGINS=name1,name2``: block plugins by entry-point name, built-ins included.
- ``OSCTL_TRACE_PLUGINS=1``: print every hook call.
"""

from __future__ import annotations

import importlib
import importlib.metadata as md
import os
import sys
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import pluggy

from osctl import hookspecs
from osctl.errors import PluginError
from osctl.registry import Provider, Registry

GROUP = "osctl"
OWN_DISTRIBUTION = "osctl"


@dataclass(frozen=True)
class FoundPlugin:
    """An entry point found in installed metadata, not yet imported."""

    name: str
    value: str
    distribution: str
    version: str

    @property
    def provider(self) -> Provider:
        return Provider(self.name, self.distribution, self.version)

    @property
    def builtin(self) -> bool:
        return self.distribution == OWN_DISTRIBUTION


def _env_list(name: str) -> list[str] | None:
    raw = os.environ.get(name)
    if raw is None:
        return None
    return [item.strip() for item in raw.split(",") if item.strip()]


def find_plugins() -> list[FoundPlugin]:
    """Every ``osctl`` entry point of every installed distribution, duplicates reported as errors.

    Only the entry-point files of the installed distributions are read, and the name and version
    (the ``METADATA`` file, parsed as an e-mail message) only of those that declare a plugin: with
    the ~80 distributions of a training environment that takes this part of every command's start-up
    from about 15 ms to 2.
    """
    found: dict[str, FoundPlugin] = {}
    for dist in md.distributions():
        ours = [ep for ep in dist.entry_points if ep.group == GROUP]
        if not ours:
            continue
        metadata = dist.metadata
        dist_name, version = metadata["Name"] or "?", metadata["Version"] or "?"
        for ep in ours:
            plugin = FoundPlugin(ep.name, ep.value, dist_name, version)
            previous = found.get(ep.name)
            if previous is not None:
                if (previous.value, previous.distribution) == (plugin.value, plugin.distribution):
                    continue  # the same distribution seen twice on sys.path
                raise PluginError(
                    f"plugin name {ep.name!r} is declared twice: by {previous.distribution} "
                    f"({previous.value}) and by {plugin.distribution} ({plugin.value}); uninstall one or "
                    f"block it with OSCTL_DISABLE_PLUGINS={ep.name}."
                )
            found[ep.name] = plugin
    return sorted(found.values(), key=lambda p: (not p.builtin, p.name))


def select_plugins(plugins: list[FoundPlugin]) -> list[FoundPlugin]:
    """Apply ``OSCTL_LOAD_PLUGINS`` and ``OSCTL_DISABLE_PLUGINS`` to a discovery result."""
    allowed = _env_list("OSCTL_LOAD_PLUGINS")
    disabled = set(_env_list("OSCTL_DISABLE_PLUGINS") or [])
    chosen = []
    for plugin in plugins:
        if plugin.name in disabled:
            continue
        if allowed is not None and not plugin.builtin and plugin.distribution not in allowed:
            continue
        chosen.append(plugin)
    return chosen


def new_plugin_manager(extra_plugins: list[tuple[str, Any]] | None = None, *,
                       found: list[FoundPlugin] | None = None) -> pluggy.PluginManager:
    """A fresh plugin manager with every selected plugin imported and registered.

    ``extra_plugins`` are (name, object) pairs registered on top, used by tests and embedding code.
    ``found`` is a discovery result to use instead of running :func:`find_plugins` again.
    """
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    pm.provider_of = {}  # type: ignore[attr-defined]
    for plugin in select_plugins(find_plugins() if found is None else found):
        try:
            module = _load(plugin.value)
        except Exception as exc:
            raise PluginError(
                f'failed to load plugin "{plugin.distribution}[{plugin.name}]": {type(exc).__name__}: {exc}'
            ) from exc
        pm.register(module, name=plugin.name)
        pm.provider_of[plugin.name] = plugin.provider  # type: ignore[attr-defined]
    for name, obj in extra_plugins or []:
        pm.register(obj, name=name)
        pm.provider_of[name] = Provider(name, "(registered at run time)", "")  # type: ignore[attr-defined]
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise PluginError(f"a plugin implements a hook osctl does not define: {exc}") from exc
    if os.environ.get("OSCTL_TRACE_PLUGINS") == "1":
        pm.add_hookcall_monitoring(
            lambda name, impls, kw: print(f"[osctl] hook {name} -> {[i.plugin_name for i in impls]}", file=sys.stderr),
            lambda outcome, name, impls, kw: None,
        )
    return pm


def _load(value: str) -> Any:
    module_name, _, attr = value.partition(":")
    module = importlib.import_module(module_name.strip())
    for part in filter(None, attr.strip().split(".")):
        module = getattr(module, part)
    return module


def build_registry(pm: pluggy.PluginManager) -> Registry:
    """Call every registry hook implementation once, recording which plugin registered what."""
    registry = Registry(list(hookspecs.KIND_HOOKS))
    providers = getattr(pm, "provider_of", {})
    for kind, hook_name in hookspecs.KIND_HOOKS.items():
        caller = getattr(pm.hook, hook_name)
        for impl in reversed(caller.get_hookimpls()):
            provider = providers.get(impl.plugin_name, Provider(impl.plugin_name, "?", ""))

            def register(spec: Any, _kind: str = kind, _provider: Provider = provider) -> None:
                registry.add(_kind, spec, _provider)

            impl.function(register=register)
    return registry


@lru_cache(maxsize=1)
def _installed_plugins() -> tuple[FoundPlugin, ...]:
    """:func:`find_plugins`, run once per process (it reads the metadata of every installed distribution)."""
    return tuple(find_plugins())


@lru_cache(maxsize=1)
def default_plugin_manager() -> pluggy.PluginManager:
    """The plugin manager of the installed plugins, built once per process."""
    return new_plugin_manager(found=list(_installed_plugins()))


@lru_cache(maxsize=1)
def default_registry() -> Registry:
    """The registry of the installed plugins, built once per process."""
    registry = build_registry(default_plugin_manager())
    if not any(p.builtin for p in _installed_plugins()):
        raise PluginError(
            "osctl's built-in plugins were not found through entry points",
            hint="osctl is not installed as a distribution; run `pip install -e .` in the checkout.",
        )
    return registry


def reset_caches() -> None:
    """Forget the cached plugin manager and registry (after installing or removing plugins)."""
    import importlib as _importlib

    _importlib.invalidate_caches()
    _installed_plugins.cache_clear()
    default_plugin_manager.cache_clear()
    default_registry.cache_clear()


def plugin_hooks(pm: pluggy.PluginManager) -> dict[str, list[str]]:
    """Plugin name -> names of the hooks it implements, for ``osctl plugins list``."""
    table: dict[str, list[str]] = {}
    for hook_name in sorted(n for n in dir(pm.hook) if not n.startswith("_")):
        for impl in getattr(pm.hook, hook_name).get_hookimpls():
            table.setdefault(impl.plugin_name, []).append(hook_name)
    return table
