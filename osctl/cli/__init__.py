"""The ``osctl`` command line: composes one Typer app per command group and maps errors to exit codes.

Exit codes: 0 success; 1 the command ran and found a problem (invalid data, failed check, a disk that
could not store the output); 2 usage or configuration error (including an output folder that cannot be
written). Errors print one plain-text sentence (and a hint) without a traceback unless ``--debug``; in a
multi-process run each rank prints its own, prefixed ``rank R:``.
"""

from __future__ import annotations

import itertools
import os
import sys
from typing import Any

import typer
from typer.core import TyperGroup

from osctl import __version__
from osctl.cli import cache as cache_cli
from osctl.cli import ckpt as ckpt_cli
from osctl.cli import curate as curate_cli
from osctl.cli import data as data_cli
from osctl.cli import eval as eval_cli
from osctl.cli import plugins as plugins_cli
from osctl.cli import recipe as recipe_cli
from osctl.cli import sample as sample_cli
from osctl.cli import synth as synth_cli
from osctl.cli import train as train_cli
from osctl.cli._output import debug_enabled, error
from osctl.errors import OsctlError, io_error
from osctl.hub import apply_network_policy


class OsctlGroup(TyperGroup):
    """The root group: the single error boundary of every command."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except OsctlError as exc:
            if debug_enabled():
                raise
            error(exc.message, exc.hint)
            raise typer.Exit(exc.exit_code) from None
        except (typer.Exit, typer.Abort, KeyboardInterrupt, BrokenPipeError):
            raise
        except Exception as exc:
            if debug_enabled() or type(exc).__module__.startswith(("click", "typer")):
                raise
            # a disk that is full or read-only where no write path named its folder: still one sentence
            known = io_error(exc) if isinstance(exc, OSError) else None
            if known is not None:
                error(known.message, known.hint)
                raise typer.Exit(known.exit_code) from None
            error(f"internal error: {type(exc).__name__}: {exc}", "rerun with --debug for the traceback.")
            raise typer.Exit(1) from None


app = typer.Typer(
    name="osctl",
    cls=OsctlGroup,
    help="Train and sample Open-Sora-Plan v1.3 style text-to-video diffusion models.",
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"osctl {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks for errors."),
    online: bool = typer.Option(False, "--online", help="Allow Hugging Face hub lookups and downloads "
                                "(default: offline; also OSCTL_ONLINE=1)."),
) -> None:
    """osctl: one command suite for data checks, training, sampling and checkpoints.

    Example: [bold]osctl plugins list --kind sampler[/]
    """
    if debug:
        os.environ["OSCTL_DEBUG"] = "1"
    apply_network_policy(online)


app.add_typer(plugins_cli.app, name="plugins")
app.add_typer(recipe_cli.app, name="recipe")
app.add_typer(ckpt_cli.app, name="ckpt")
app.add_typer(data_cli.app, name="data")
synth_cli.register(data_cli.app)
cache_cli.register(data_cli.app)
curate_cli.register(data_cli.app)
app.add_typer(eval_cli.app, name="eval")
sample_cli.register(app)
train_cli.register(app)


def _builtin_data_command(args: list[str]) -> bool:
    """``osctl [--debug] data validate|bucket ...``: built-in commands that plugin commands cannot change.

    Plugin discovery imports every plugin module (a tenth of a second or more); these commands skip
    it (``data bucket`` still loads plugins when it reads the recipe's components).
    """
    words = [arg for arg in args[:4] if not arg.startswith("-")]
    names = {command.name or command.callback.__name__ for command in data_cli.app.registered_commands
             if command.callback is not None}
    return len(words) >= 2 and words[0] == "data" and words[1] in names


def _plugin_commands() -> None:
    """Let plugins add commands through the ``register_commands`` hook."""
    if _builtin_data_command(sys.argv[1:]):
        return
    from osctl.plugin_manager import default_plugin_manager

    try:
        default_plugin_manager().hook.register_commands(app=app)
    except OsctlError as exc:
        error(exc.message, exc.hint)


def main() -> None:
    """Console-script entry point."""
    root_options = list(itertools.takewhile(lambda arg: arg.startswith("-"), sys.argv[1:]))
    apply_network_policy("--online" in root_options)  # before anything imports huggingface_hub
    _plugin_commands()
    from osctl.parallel.launch import absorb_local_rank

    sys.argv = absorb_local_rank(sys.argv)  # the deepspeed launcher appends --local_rank=N
    try:
        app(prog_name="osctl")
    except BrokenPipeError:  # e.g. `osctl ... | head`: stop quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        sys.exit(1)


if __name__ == "__main__":  # pragma: no cover
    main()
    sys.exit(0)
