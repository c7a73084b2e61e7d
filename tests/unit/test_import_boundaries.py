"""Import boundaries that ruff cannot express: benchmarks stand on osctl, not on tests; a built-in plugin uses
only the public names of osctl and of other built-in modules."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _imports(path: Path) -> list[tuple[str, str]]:
    """(module, imported name) of every absolute import in ``path`` (name "" for ``import module``)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(alias.name, "") for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found += [(node.module, alias.name) for alias in node.names]
    return found


def test_benchmarks_do_not_import_tests():
    offenders = [f"{path.name}: {module}" for path in sorted((REPO / "benchmarks").glob("*.py"))
                 for module, _ in _imports(path) if module.split(".")[0] == "tests"]
    assert not offenders, f"benchmarks import test helpers (move what they share into osctl): {offenders}"


def test_built_in_plugins_import_no_private_names_of_other_modules():
    offenders = []
    for path in sorted((REPO / "plugins").rglob("*.py")):
        for module, name in _imports(path):
            private = name.startswith("_") and not name.startswith("__")
            if module.split(".")[0] in ("osctl", "osctl_builtin") and private:
                offenders.append(f"{path.relative_to(REPO)}: {module}.{name}")
    assert not offenders, f"private names imported across modules (make them public where they belong): {offenders}"
