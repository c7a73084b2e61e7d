"""Read a YAML recipe: ``extends`` chain, ``--set`` overrides, validation with file:line errors.

Precedence, highest first: ``--set`` overrides > the recipe file > its ``extends`` parents (nearest
first) > schema defaults. ``extends`` is a path relative to the file that names it (or a list of
them, merged left to right). Mappings merge key by key; any other value replaces the inherited one.
"""

from __future__ import annotations

import difflib
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from osctl.errors import ConfigError
from osctl.recipe.schema import ComponentSection, Recipe

Origins = dict[tuple[str, ...], str]


@dataclass
class LoadedRecipe:
    """A validated recipe plus where each key came from (``file:line`` or ``--set``)."""

    recipe: Recipe
    raw: dict[str, Any]
    origins: Origins = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)

    def origin(self, path: tuple[str, ...]) -> str | None:
        """Where the value at ``path`` (or its closest parent) was set."""
        for cut in range(len(path), 0, -1):
            if path[:cut] in self.origins:
                return self.origins[path[:cut]]
        return None

    def resolved(self) -> dict[str, Any]:
        """The full recipe with defaults, as plain JSON-able data."""
        return self.recipe.model_dump(mode="json")

    def fingerprint(self) -> str:
        """SHA-256 of the resolved recipe (stable key order), stored in checkpoints and indexes."""
        return recipe_hash(self.resolved())


def recipe_hash(resolved: dict[str, Any]) -> str:
    """SHA-256 of a resolved recipe dict in canonical JSON form."""
    blob = json.dumps(resolved, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


class _LineLoader(yaml.SafeLoader):
    """A safe YAML loader that remembers the line of every mapping key."""


def _read_yaml(path: Path) -> tuple[dict[str, Any], Origins]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"recipe file {path} does not exist.") from None
    except OSError as exc:
        raise ConfigError(f"cannot read recipe file {path}: {exc.strerror}.") from None
    try:
        node = yaml.compose(text, Loader=_LineLoader)
        data = yaml.load(text, Loader=_LineLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{where}: YAML syntax error: {problem}.") from None
    if data is None:
        return {}, {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a recipe must be a mapping of sections, got {type(data).__name__}.")
    origins: Origins = {}
    _collect_origins(node, (), path, origins)
    return data, origins


def _collect_origins(node: Any, prefix: tuple[str, ...], path: Path, out: Origins) -> None:
    """The ``file:line`` of every mapping key and list item (items are keyed by their index, ``"0"``...)."""
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = (*prefix, str(key_node.value))
            out[key] = f"{path}:{key_node.start_mark.line + 1}"
            _collect_origins(value_node, key, path, out)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            key = (*prefix, str(index))
            out[key] = f"{path}:{item.start_mark.line + 1}"
            _collect_origins(item, key, path, out)


def _merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            # a component section that switches plugin drops the parent's plugin options
            if "name" in value and value.get("name") != merged[key].get("name") and "name" in merged[key]:
                merged[key] = dict(value)
            else:
                merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _load_chain(path: Path, seen: tuple[Path, ...]) -> tuple[dict[str, Any], Origins, list[Path]]:
    path = path.resolve()
    if path in seen:
        chain = " -> ".join(str(p) for p in (*seen, path))
        raise ConfigError(f"recipe `extends` forms a cycle: {chain}.")
    data, origins = _read_yaml(path)
    parents = data.pop("extends", None)
    origins.pop(("extends",), None)
    if parents is None:
        return data, origins, [path]
    if isinstance(parents, str):
        parents = [parents]
    if not isinstance(parents, list) or not all(isinstance(p, str) for p in parents):
        raise ConfigError(f"{path}: `extends` must be a path or a list of paths.")
    merged: dict[str, Any] = {}
    merged_origins: Origins = {}
    files: list[Path] = []
    for parent in parents:
        parent_path = (path.parent / parent).resolve()
        if parent_path.is_dir():
            raise ConfigError(f"{path}: `extends: {parent}` points to {parent_path}, which is a folder; "
                              "name a recipe file in it (paths are relative to the file that names them).")
        if not parent_path.is_file():
            raise ConfigError(
                f"{path}: `extends: {parent}` points to {parent_path}, which does not exist; "
                "paths are relative to the file that names them."
            )
        pdata, porigins, pfiles = _load_chain(parent_path, (*seen, path))
        merged = _merge(merged, pdata)
        merged_origins.update(porigins)
        files.extend(pfiles)
    merged = _merge(merged, data)
    merged_origins.update(origins)
    return merged, merged_origins, [*files, path]


def parse_override(item: str) -> tuple[tuple[str, ...], Any]:
    """Split ``a.b.c=value`` into a key path and a YAML-typed value (``2e-5`` is coerced later)."""
    key, sep, text = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {item!r} must look like section.key=value.")
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        value = text
    return tuple(part.strip() for part in key.strip().split(".")), value


def apply_overrides(data: dict[str, Any], overrides: list[str], origins: Origins) -> dict[str, Any]:
    """Apply ``--set`` overrides; a key that the schema does not know is an error before anything runs."""
    for item in overrides:
        path, value = parse_override(item)
        _check_override_path(path, item)
        node = data
        for depth, part in enumerate(path[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = _required_defaults(path[:depth + 1])
            elif not isinstance(child, dict):
                raise ConfigError(f"--set {item}: {'.'.join(path[:-1])} is a value, not a section.")
            node = child
        node[path[-1]] = value
        origins[path] = f"--set {item}"
    return data


def _required_defaults(path: tuple[str, ...]) -> dict[str, Any]:
    """The required keys of the section at ``path`` as its schema default sets them (``{}`` for most).

    A ``--set model.path=M`` into a recipe without a ``model`` section starts that section from its
    default: the required ``name`` (``opensora_v1_3``) stays, the override is added on top.
    """
    model: Any = Recipe
    info = None
    for part in path:
        fields = getattr(model, "model_fields", None)
        if not fields or part not in fields:
            return {}
        info = fields[part]
        model = _submodel(info.annotation)
    if info is None or info.is_required():
        return {}
    default = info.get_default(call_default_factory=True)
    if not isinstance(default, BaseModel):
        return {}
    return {name: getattr(default, name) for name, field_info in type(default).model_fields.items()
            if field_info.is_required()}


def _check_override_path(path: tuple[str, ...], item: str) -> None:
    model: Any = Recipe
    for depth, part in enumerate(path):
        if model is None:
            return
        if isinstance(model, type) and issubclass(model, ComponentSection):
            return  # plugin options are checked against the plugin's own config
        fields = getattr(model, "model_fields", None)
        if fields is None:
            return
        if part not in fields:
            section = ".".join(path[:depth]) or "the recipe"
            close = difflib.get_close_matches(part, list(fields), n=1, cutoff=0.5)
            hint = f"; did you mean {'.'.join((*path[:depth], close[0]))!r}?" if close else "."
            raise ConfigError(f"--set {item}: {section} has no key {part!r}{hint}")
        annotation = fields[part].annotation
        model = _submodel(annotation)


def _submodel(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        sub = _submodel(arg)
        if sub is not None:
            return sub
    return None


def load_recipe(path: Path | str | None, overrides: list[str] | None = None) -> LoadedRecipe:
    """Load, merge, override and validate a recipe; every problem is a one-line ``ConfigError``.

    ``path=None`` starts from the schema defaults (used by commands that run from flags alone).
    """
    if path is None:
        data, origins, files = {}, {}, []
    else:
        data, origins, files = _load_chain(Path(path), ())
    data = apply_overrides(data, list(overrides or []), origins)
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe_errors(exc, origins)) from None
    return LoadedRecipe(recipe=recipe, raw=data, origins=origins, files=files)


def _describe_errors(exc: ValidationError, origins: Origins) -> str:
    messages = []
    for err in exc.errors():
        loc = tuple(str(p) for p in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "value_error":
            # cross-field rules start their message with the key they are about: point at that key
            first = msg.split(" ", 1)[0]
            if first in _fields_of(loc):
                loc, msg = (*loc, first), msg.split(" ", 1)[1]
        where = _origin_for(loc, origins)
        key = ".".join(loc) or "recipe"
        if err["type"] == "extra_forbidden":
            fields = _fields_of(loc[:-1])
            close = difflib.get_close_matches(loc[-1], fields, n=1, cutoff=0.5)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            text = f"{key}: unknown key{hint}"
        elif err["type"] == "value_error":
            text = f"{key}: {msg}"
        else:
            value = err.get("input")
            shown = "" if isinstance(value, dict | list) else f", got {value!r}"
            text = f"{key}: {err['msg'].lower()}{shown}"
        messages.append(f"{where}: {text}" if where else text)
    return "; ".join(messages) + "."


def _origin_for(loc: tuple[str, ...], origins: Origins) -> str | None:
    for cut in range(len(loc), 0, -1):
        if loc[:cut] in origins:
            return origins[loc[:cut]]
    return None


def _fields_of(loc: tuple[str, ...]) -> list[str]:
    model: Any = Recipe
    for part in loc:
        fields = getattr(model, "model_fields", None)
        if not fields or part not in fields:
            return []
        model = _submodel(fields[part].annotation)
    return sorted(getattr(model, "model_fields", {}) or [])
