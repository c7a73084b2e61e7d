"""Options shared by several commands, declared once."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON instead of tables.")]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", metavar="KEY=VALUE", help="Override a recipe key, e.g. --set train.learning_rate=2e-5."),
]
RecipeOpt = Annotated[Path, typer.Option("--recipe", "-r", help="YAML recipe file.", show_default=False)]
RecipeArg = Annotated[Path, typer.Argument(help="YAML recipe file.", show_default=False)]
