"""The house reads top-down: cli -> train/sample/ckpt -> data/parallel/recipe -> registry/hookspecs.

Checked on the source with ``ast`` (every import, also those inside functions and under
``TYPE_CHECKING``): no module imports a package of a higher layer, ``osctl/data`` has no import cycle,
the data stream stands on the offline data package and not the other way round, the fast paths in
``osctl/data/_fast`` are private to ``osctl/data``, and a module over ~500 lines is one cohesive piece
with its reason written below. README.md, "Layout (for contributors)", says where each behaviour lives.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
OSCTL = REPO / "osctl"

LAYERS: dict[str, int] = {
    # 4: the command line
    "cli": 4, "__main__": 4,
    # 3: what a command does (each stands on the layers below; they may use each other)
    "train": 3, "sample": 3, "ckpt": 3, "families": 3, "curate": 3, "eval": 3, "synth": 3, "plots": 3, "cache": 3,
    "testing": 3,
    # 2: the building blocks: data, parallel layout, recipes, building components, text, media, geometry
    "data": 2, "parallel": 2, "recipe": 2, "build": 2, "text": 2, "media": 2, "hub": 2, "geometry": 2,
    "latent_moments": 2,
    # 1: the plugin system and what everything shares
    "registry": 1, "hookspecs": 1, "plugin_manager": 1, "protocols": 1, "errors": 1, "utils": 1,
    "availability": 1, "quiet": 1, "osctl": 1,
}
"""Layer of every top-level package or module of osctl (``osctl`` is the package's own ``__init__``)."""

LONG_MODULES: dict[str, str] = {
    "osctl/ckpt/convert.py": "one command (ckpt convert): every source format to every target format, then the "
                             "proof that the result loads back equal",
    "osctl/ckpt/inspect.py": "one command (ckpt inspect): what each checkpoint format holds and its integrity "
                             "checks, as one JSON description",
    "osctl/data/bucket.py": "one algorithm: the bucket settings, the rules applied to every record, the minority "
                            "rule and the result the report, the index and the plan read",
    "osctl/synth/shapes.py": "one generator: the shapes data set's scenes, motions, captions and media files",
}
"""Modules over :data:`MAX_LINES` lines, each with why it is one piece (a new one must be split or listed)."""

MAX_LINES = 500


def _modules() -> dict[str, Path]:
    """``osctl.x.y`` -> path of every module of the package."""
    out = {}
    for path in sorted(OSCTL.rglob("*.py")):
        parts = path.relative_to(REPO).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """The osctl modules ``path`` imports (``from a.b import c`` counts ``a.b.c`` when that is a module)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
        else:
            continue
        found.update(name for name in names if name in modules)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(path, modules) for name, path in modules.items()}


def _top(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "osctl"


def test_every_package_has_a_layer() -> None:
    unplaced = sorted({_top(name) for name in _modules()} - set(LAYERS))
    assert not unplaced, f"place these in LAYERS (tests/unit/test_layout.py) and README's layout section: {unplaced}"


def test_imports_go_down_the_layers() -> None:
    upward = [f"{module} imports {target}" for module, targets in _graph().items() for target in sorted(targets)
              if LAYERS.get(_top(target), 0) > LAYERS.get(_top(module), 0)]
    assert not upward, "a lower layer imports a higher one:\n" + "\n".join(upward)


def _cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import cycle of ``graph`` (empty when there is none)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return [*stack[stack.index(target):], target]
            if target not in state and (found := visit(target)):
                return found
        stack.pop()
        state[node] = 2
        return []

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return []


def test_the_data_package_has_no_import_cycle() -> None:
    data = {module: {t for t in targets if t.startswith("osctl.data")} for module, targets in _graph().items()
            if module.startswith("osctl.data")}
    assert _cycle(data) == [], f"import cycle: {' -> '.join(_cycle(data))}"


def test_the_cycle_check_finds_a_cycle() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]


def test_the_stream_stands_on_the_data_package_and_the_fast_paths_stay_private() -> None:
    graph = _graph()
    offline = [f"{m} imports {t}" for m, targets in graph.items() if m.startswith("osctl.data")
               and not m.startswith("osctl.data.stream") for t in targets if t.startswith("osctl.data.stream")]
    assert not offline, "the offline data package must not import the training stream:\n" + "\n".join(offline)
    leaks = [f"{m} imports {t}" for m, targets in graph.items() if not m.startswith("osctl.data")
             for t in targets if t.startswith("osctl.data._fast")]
    assert not leaks, "osctl/data/_fast is private to osctl/data:\n" + "\n".join(leaks)


def test_long_modules_are_one_piece() -> None:
    long = {str(path.relative_to(REPO)): len(path.read_text(encoding="utf-8").splitlines())
            for path in OSCTL.rglob("*.py")}
    unexplained = {path: lines for path, lines in long.items() if lines > MAX_LINES and path not in LONG_MODULES}
    assert not unexplained, f"split these modules by job, or say in LONG_MODULES why each is one piece: {unexplained}"
    stale = [path for path in LONG_MODULES if long.get(path, 0) <= MAX_LINES]
    assert not stale, f"no longer long, remove from LONG_MODULES: {stale}"
