"""pyproject's dependencies match the code: each one is imported (or its indirect use is written down here),
and every third-party module osctl or a built-in imports is declared."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from functools import cache
from importlib.metadata import packages_distributions
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

#: declared, never imported, and why they are needed anyway
INDIRECT = {
    "accelerate": "diffusers' from_pretrained loads weights onto empty (meta) modules only with it "
                  "(low_cpu_mem_usage); without it every load first initialises the model at random",
}
#: modules that come with a declared distribution under another distribution's name
BUNDLED = {"pydantic_core": "pydantic"}


def _normal(name: str) -> str:
    return re.split(r"[<>=!~\[ ;]", name, maxsplit=1)[0].lower().replace("_", "-")


def _project() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


@cache
def _imported_top_modules() -> dict[str, str]:
    """Top-level module -> the first file importing it, over osctl/ and plugins/."""
    found: dict[str, str] = {}
    for root in ("osctl", "plugins"):
        for path in sorted((REPO / root).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    found.setdefault(name.split(".")[0], str(path.relative_to(REPO)))
    return found


@cache
def _module_distributions() -> dict[str, list[str]]:
    return packages_distributions()  # scans every installed distribution: once


def _distributions(module: str) -> set[str]:
    return {_normal(d) for d in _module_distributions().get(module, [])}


def test_every_dependency_is_imported_or_its_indirect_use_is_named():
    imported = set()
    for module in _imported_top_modules():
        imported |= _distributions(module)
    unused = [_normal(d) for d in _project()["dependencies"] if _normal(d) not in imported | INDIRECT.keys()]
    assert not unused, f"declared in pyproject.toml but never imported by osctl or a built-in: {unused}"


def test_every_imported_third_party_module_is_declared():
    project = _project()
    declared = {_normal(d) for d in project["dependencies"]}
    declared |= {_normal(d) for extra in project["optional-dependencies"].values() for d in extra}
    undeclared = {}
    for module, where in _imported_top_modules().items():
        if module in sys.stdlib_module_names or module in ("osctl", "osctl_builtin"):
            continue
        distributions = _distributions(module) or {module}
        if not distributions & declared and BUNDLED.get(module) not in declared:
            undeclared[module] = where
    assert not undeclared, f"imported but not declared in pyproject.toml: {undeclared}"
