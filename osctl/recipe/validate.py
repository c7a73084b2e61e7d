"""Check a loaded recipe against the plugins it names, collecting every problem before failing.

Each component section (``model``, ``autoencoder``, ...) is validated by the config model of the
plugin it names; rules that need facts from plugins (strides, patch sizes) are checked here too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from osctl.errors import ConfigError, OsctlError
from osctl.recipe.load import LoadedRecipe
from osctl.recipe.schema import COMPONENT_SECTIONS
from osctl.registry import Registered, Registry


@dataclass
class CheckedRecipe:
    """A recipe whose component sections were validated by their plugins."""

    loaded: LoadedRecipe
    components: dict[str, BaseModel] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    trackers: list[tuple[str, BaseModel]] = field(default_factory=list)  # train.trackers: (name, config)


def _component_fact(config: BaseModel, name: str, warnings: list[str]) -> Any:
    """A static fact a component config exposes (attribute or zero-argument method), else None.

    A fact that cannot be read yet (e.g. weights not downloaded) becomes a warning, not an error:
    the recipe itself may still be right.
    """
    value = getattr(config, name, None)
    if not callable(value):
        return value
    try:
        return value()
    except OsctlError as exc:
        warnings.append(exc.message)
        return None


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
            architecture = _component_fact(checked.components["model"], "architecture", checked.warnings)
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

    ae = checked.components.get("autoencoder")
    model = checked.components.get("model")
    if ae is not None and model is not None:
        stride = _component_fact(ae, "spatial_stride", checked.warnings)
        patch = _component_fact(model, "spatial_patch_size", checked.warnings)
        if stride and patch and recipe.data.hw_stride % (stride * patch):
            problems.append(
                f"data.hw_stride: {recipe.data.hw_stride} must be a multiple of the autoencoder stride x patch "
                f"size ({stride} x {patch} = {stride * patch})"
            )
        if stride and patch and recipe.data.effective_resolution_mode == "force":
            for key in ("max_height", "max_width"):
                value = getattr(recipe.data, key)
                if value % (stride * patch):
                    problems.append(
                        f"data.{key}: {value} must be a multiple of {stride * patch} (autoencoder stride x patch size)"
                    )
    if not problems:
        problems += _parallel_problems(checked, registry)
    if recipe.train.pretrained and recipe.train.resume_from_checkpoint and recipe.train.lora is None:
        # (a LoRA run's checkpoint holds the adapter alone: its base always comes from train.pretrained)
        checked.warnings.append(
            "both train.pretrained and train.resume_from_checkpoint are set: resuming restores the checkpoint's "
            "weights, so pretrained is ignored when a checkpoint is found"
        )
    if problems:
        joined = "; ".join(p.rstrip(".") for p in problems)
        raise ConfigError(joined if joined.endswith("?") else joined + ".")
    return checked


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
