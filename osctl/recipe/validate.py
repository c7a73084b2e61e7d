"""Check a loaded recipe against the plugins it names, collecting every problem before failing.

Each component section (``model``, ``autoencoder``, ...) is validated by the config model of the
plugin it names. The autoencoder and the model declare their halves of the latent geometry
(:mod:`osctl.geometry`); it is joined once here (:func:`recipe_geometry`), kept on
:attr:`CheckedRecipe.geometry`, and the data rules that depend on it (``num_frames``, ``hw_stride``,
force-mode sizes) are checked against it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from osctl.errors import ConfigError, OsctlError
from osctl.geometry import AutoencoderGeometry, LatentGeometry, ModelGeometry, latent_geometry
from osctl.recipe.load import LoadedRecipe
from osctl.recipe.schema import COMPONENT_SECTIONS
from osctl.registry import Registered, Registry


@dataclass
class CheckedRecipe:
    """A recipe whose component sections were validated by their plugins, with their latent geometry
    (set by :func:`check_recipe`, which refuses a recipe whose geometry cannot be known)."""

    loaded: LoadedRecipe
    components: dict[str, BaseModel] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    trackers: list[tuple[str, BaseModel]] = field(default_factory=list)  # train.trackers: (name, config)
    _geometry: LatentGeometry | None = field(default=None, repr=False)

    @property
    def geometry(self) -> LatentGeometry:
        """The latent geometry of the recipe's autoencoder and model, joined and checked by :func:`check_recipe`."""
        if self._geometry is None:
            raise RuntimeError("CheckedRecipe.geometry is known once check_recipe has accepted the recipe")
        return self._geometry


#: recipe section -> (the config method its plugin declares its half of the latent geometry with, its type)
GEOMETRY_DECLARATIONS: dict[str, tuple[str, type]] = {
    "autoencoder": ("autoencoder_geometry", AutoencoderGeometry),
    "model": ("model_geometry", ModelGeometry),
}


def recipe_geometry(loaded: LoadedRecipe, registry: Registry) -> LatentGeometry:
    """The latent geometry of the recipe's autoencoder and model, checked against the data rules that depend
    on it; one ``ConfigError`` listing every problem.

    What commands that use only the data side of a recipe (``osctl data bucket``) need of its components,
    without checking the rest of it; :func:`check_recipe` computes the geometry the same way.
    """
    components: dict[str, BaseModel] = {}
    problems: list[str] = []
    for section in GEOMETRY_DECLARATIONS:
        comp = getattr(loaded.recipe, section)
        try:
            options = component_options(loaded.recipe, section, registry)
            components[section] = registry.make_config(COMPONENT_SECTIONS[section], comp.name, options,
                                                       where=section)
        except OsctlError as exc:
            problems.extend(_located(loaded, exc, section, chosen_by=f"{section}.name"))
    geometry = None
    if not problems:
        geometry, problems = _geometry(loaded, components, registry)
    _refuse(problems)
    assert geometry is not None
    return geometry


def _geometry(loaded: LoadedRecipe, components: dict[str, BaseModel],
              registry: Registry) -> tuple[LatentGeometry | None, list[str]]:
    """The joined geometry of the recipe's autoencoder and model (None when it cannot be known) and the
    problems found: a plugin that declares no geometry, channels that do not fit, data rules it breaks."""
    recipe = loaded.recipe
    halves: dict[str, Any] = {}
    problems: list[str] = []
    for section, (method, kind) in GEOMETRY_DECLARATIONS.items():
        comp = getattr(recipe, section)
        declare = getattr(components[section], method, None)
        if not callable(declare):
            provider = registry.get(COMPONENT_SECTIONS[section], comp.name).provider
            problems.append(_at(loaded, f"{section}.name",
                                f"{section}.name: the {section} {comp.name!r} (plugin {provider.describe()}) declares "
                                f"no latent geometry: its config class {type(components[section]).__name__} has no "
                                f"{method}() returning an osctl.geometry.{kind.__name__}; add it to the plugin (see "
                                f"plugins/README.md, 'Latent geometry') or choose another {section}"))
            continue
        try:
            half = declare()
        except OsctlError as exc:
            problems.extend(_located(loaded, exc, section))
            continue
        if not isinstance(half, kind):
            problems.append(_at(loaded, f"{section}.name",
                                f"{section}.name: {type(components[section]).__name__}.{method}() of the {section} "
                                f"{comp.name!r} returned a {type(half).__name__}, not an osctl.geometry.{kind.__name__}; "
                                "fix the plugin"))
            continue
        halves[section] = half
    if problems:
        return None, problems
    try:
        geometry = latent_geometry(halves["autoencoder"], halves["model"], autoencoder_name=recipe.autoencoder.name,
                                   model_name=recipe.model.name)
    except OsctlError as exc:
        return None, [_at(loaded, "model.name", exc.message)]
    return geometry, _geometry_rule_problems(loaded, geometry)


def _geometry_rule_problems(loaded: LoadedRecipe, geometry: LatentGeometry) -> list[str]:
    """The rules that depend on the latent geometry: ``data.num_frames`` a whole number of latent frames, sizes
    in whole transformer tokens (``data.hw_stride`` and, in force mode, ``max_height``/``max_width``), and the
    ``sample`` sizes when training samples validation videos with them (``osctl sample`` checks its own
    sizes when it starts: flags and prompt lines may change them)."""
    recipe = loaded.recipe
    data = recipe.data
    problems = [_at(loaded, f"data.{key}", f"data.{key}: {text}")
                for key, text in geometry.size_problems(num_frames=data.num_frames)]
    unit = geometry.hw_unit
    if data.hw_stride % unit:
        problems.append(_at(loaded, "data.hw_stride",
                            f"data.hw_stride: {data.hw_stride} must be a multiple of the autoencoder stride x patch "
                            f"size ({geometry.stride_hw} x {geometry.patch_hw} = {unit})"))
    if data.effective_resolution_mode == "force":
        for key in ("max_height", "max_width"):
            value = getattr(data, key)
            if value % unit:
                problems.append(_at(loaded, f"data.{key}",
                                    f"data.{key}: {value} must be a multiple of {unit} (autoencoder stride x patch "
                                    "size)"))
    if recipe.train.validation_steps and recipe.train.validation_prompts:
        sizes = {key: getattr(recipe.sample, key) for key in ("num_frames", "height", "width")}
        problems += [_at(loaded, f"sample.{key}", f"sample.{key}: {text} (train.validation_prompts are sampled "
                                                  "with it)")
                     for key, text in geometry.size_problems(**sizes)]
    return problems


def sampler_objective_mismatch(sampler: Registered, objective: str) -> str | None:
    """Why ``sampler`` cannot sample a model trained with ``objective``, or None when it can.

    Why: a flow-matching model sampled by a DDPM-family scheduler (or the reverse) fails deep in
    diffusers or silently produces noise; the recipe check says so before any work. A sampler plugin
    declares its objective in ``ComponentSpec.metadata["objective"]`` (default ``ddpm``).
    """
    wanted = (sampler.spec.metadata or {}).get("objective", "ddpm")
    if wanted == objective:
        return None
    return (f"sample.sample_method: {sampler.name!r} samples {wanted} models but diffusion.objective is "
            f"{objective!r}; choose a {objective} sampler (e.g. "
            f"{'FlowMatchEulerDiscrete' if objective == 'flow_matching' else 'EulerAncestralDiscrete'}).")


def _parallel_problems(checked: CheckedRecipe, registry: Registry) -> list[str]:
    """The recipe's parallel layout: ``sp_size`` against the model's heads and, when the recipe sets its process
    count (``parallel.nproc_per_node x nnodes``), against that count, which a one-process strategy refuses.
    Without a process count (a launcher decides it) the world is checked when the run starts."""
    from osctl.build import strategy_name
    from osctl.parallel.layout import ParallelLayout

    recipe = checked.loaded.recipe

    def problem(exc: OsctlError, key: str) -> list[str]:
        where = checked.loaded.origin(("parallel", key))
        return [f"{where}: {exc.message}" if where else exc.message]

    counted = recipe.parallel.nproc_per_node is not None
    try:
        layout = ParallelLayout.from_recipe(recipe, world_size=None if counted else recipe.parallel.sp_size)
        if layout.sequence_parallel:
            architecture = _architecture(checked)
            if isinstance(architecture, dict):
                layout.check_heads(architecture.get("num_attention_heads"))
    except OsctlError as exc:
        return problem(exc, "sp_size")
    try:
        if counted:
            strategy_name(recipe, registry, layout.world_size, processes="parallel.nproc_per_node x nnodes is {n}")
    except OsctlError as exc:
        return problem(exc, "strategy")
    return []


def component_options(recipe: Any, section: str, registry: Registry) -> dict[str, Any]:
    """The plugin options of component ``section``: its recipe keys over what ``pipeline_path`` fills in.

    A released diffusers pipeline named by the recipe's ``pipeline_path`` gives every component whose config
    class defines ``pipeline_options(pipeline_path) -> dict`` its sources (e.g. ``model.path``,
    ``text_encoder.subfolder``); keys the recipe sets win. A model plugin that cannot be filled from a
    pipeline is an error (the pipeline would be silently ignored).
    """
    comp = getattr(recipe, section)
    options = comp.options
    pipeline = getattr(recipe, "pipeline_path", None)
    if not pipeline:
        return options
    fill = getattr(registry.get(COMPONENT_SECTIONS[section], comp.name).spec.config, "pipeline_options", None)
    if fill is None:
        if section == "model":
            raise ConfigError(f"pipeline_path is set but model {comp.name!r} cannot be loaded from a diffusers "
                              "pipeline; choose the model plugin of the pipeline's family or drop pipeline_path.")
        return options
    return {**fill(pipeline), **options}


def _architecture(checked: CheckedRecipe) -> Any:
    """The model's constructor arguments when its config exposes them (``architecture()``), else None.

    An architecture that cannot be read yet (e.g. weights not downloaded) becomes a warning, not an
    error: the recipe itself may still be right.
    """
    read = getattr(checked.components["model"], "architecture", None)
    if not callable(read):
        return None
    try:
        return read()
    except OsctlError as exc:
        checked.warnings.append(exc.message)
        return None


def check_recipe(loaded: LoadedRecipe, registry: Registry) -> CheckedRecipe:
    """Validate plugin sections and cross-plugin rules; raise one ``ConfigError`` listing every problem."""
    recipe = loaded.recipe
    problems: list[str] = []
    checked = CheckedRecipe(loaded=loaded)
    for section, kind in COMPONENT_SECTIONS.items():
        comp = getattr(recipe, section)
        try:
            options = component_options(recipe, section, registry)
            checked.components[section] = registry.make_config(kind, comp.name, options, where=section)
        except OsctlError as exc:
            problems.extend(_located(loaded, exc, section, chosen_by=f"{section}.name"))
    try:
        sampler = registry.check_requirements("sampler", recipe.sample.sample_method, where="sample.sample_method")
    except OsctlError as exc:
        problems.extend(_located(loaded, exc, "sample.sample_method"))
    else:
        mismatch = sampler_objective_mismatch(sampler, recipe.diffusion.objective)
        if mismatch:
            problems.append(mismatch)
    for i, tracker in enumerate(recipe.train.trackers):
        key = f"train.trackers.{i}"
        try:
            checked.trackers.append((tracker.name, registry.make_config("tracker", tracker.name, tracker.options,
                                                                        where=key)))
        except OsctlError as exc:
            problems.extend(_located(loaded, exc, key, chosen_by=f"{key}.name"))
    if recipe.parallel.strategy != "auto":
        try:
            registry.check_requirements("strategy", recipe.parallel.strategy, where="parallel.strategy")
        except OsctlError as exc:
            problems.extend(_located(loaded, exc, "parallel.strategy"))

    if "autoencoder" in checked.components and "model" in checked.components:
        checked._geometry, found = _geometry(loaded, checked.components, registry)
        problems += found
    if not problems:
        problems += _parallel_problems(checked, registry)
    if recipe.train.pretrained and recipe.train.resume_from_checkpoint and recipe.train.lora is None:
        # (a LoRA run's checkpoint holds the adapter alone: its base always comes from train.pretrained)
        checked.warnings.append(
            "both train.pretrained and train.resume_from_checkpoint are set: resuming restores the checkpoint's "
            "weights, so pretrained is ignored when a checkpoint is found"
        )
    _refuse(problems)
    return checked


def _refuse(problems: list[str]) -> None:
    """Raise one ``ConfigError`` listing ``problems`` (nothing when there are none)."""
    if problems:
        joined = "; ".join(p.rstrip(".") for p in problems)
        raise ConfigError(joined if joined.endswith("?") else joined + ".")


def _at(loaded: LoadedRecipe, key: str, message: str) -> str:
    """``message`` prefixed with the file and line of the recipe key ``key`` (or the closest key set above it)."""
    where = loaded.origin(tuple(key.split(".")))
    return f"{where}: {message}" if where else message


def _located(loaded: LoadedRecipe, exc: OsctlError, key: str, *, chosen_by: str | None = None) -> list[str]:
    """The problems of ``exc`` (raised for the recipe key ``key``), each as ``file:line: key: message``.

    Each problem points at the line of its own key (``model.num_layers``), else at the closest key
    above it that the recipe sets; a problem with the component itself (unknown, or a module it
    needs is missing) points at the key that chose it (``chosen_by``, e.g. ``model.name``). A message
    that does not name its key gets ``key`` in front.
    """
    problems = getattr(exc, "problems", None) or []
    if not problems:
        text = exc.message if exc.message.startswith(key) else f"{key}: {exc.message}"
        parts = [(chosen_by or key, text)]
    else:
        parts = [(dotted, f"{dotted}: {message}") for dotted, message in problems]
    located = []
    for dotted, text in parts:
        where = loaded.origin(tuple(dotted.split(".")))
        located.append(f"{where}: {text}" if where else text)
    return located
