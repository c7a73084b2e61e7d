"""`osctl plugins`: what is installed and who provides it."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from osctl.cli._options import JsonOpt
from osctl.cli._output import console, print_json
from osctl.errors import UsageError

app = typer.Typer(help="Inspect the installed plugins.", no_args_is_help=True)


@app.command("list")
def list_plugins(
    kind: Annotated[
        str | None, typer.Option("--kind", "-k", help="Only this kind (model, autoencoder, sampler, ...).")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """List every registered component with its kind, provider and summary.

    Example: [bold]osctl plugins list --kind sampler --json[/]
    """
    from osctl.plugin_manager import default_plugin_manager, default_registry, plugin_hooks

    registry = default_registry()
    if kind is not None and kind not in registry.kinds:
        raise UsageError(f"unknown kind {kind!r}; kinds are {', '.join(registry.kinds)}.")
    entries = [r for r in registry if kind is None or r.kind == kind]
    if as_json:
        hooks = plugin_hooks(default_plugin_manager())
        providers = {r.provider.plugin: r.provider for r in registry}
        print_json(
            {
                "components": [
                    {
                        "kind": r.kind,
                        "name": r.name,
                        "aliases": list(r.spec.aliases),
                        "summary": r.spec.summary,
                        "plugin": r.provider.plugin,
                        "distribution": r.provider.distribution,
                        "version": r.provider.version,
                    }
                    for r in entries
                ],
                "plugins": [
                    {
                        "name": name,
                        "distribution": providers[name].distribution if name in providers else None,
                        "hooks": hook_names,
                    }
                    for name, hook_names in sorted(hooks.items())
                ],
            }
        )
        return
    table = Table(title="osctl components", show_lines=False)
    for column in ("kind", "name", "provider", "summary"):
        table.add_column(column, overflow="fold")
    for r in entries:
        table.add_row(r.kind, escape(r.name), escape(f"{r.provider.distribution} ({r.provider.plugin})"), escape(r.spec.summary))
    console.print(table)
