"""Every extension point of osctl: the table of contents for plugin authors.

A plugin is a module (or object) with functions decorated by ``osctl.hookimpl`` and named after the
hooks below. It is found through the ``osctl`` entry-point group; the built-ins in
``plugins/osctl_builtin`` register exactly that way. Registry hooks receive a ``register`` callback
taking an ``osctl.ComponentSpec``; the core owns the registries, so duplicates and unknown names are
reported in one place. The kind of a component is the hook it was registered through.
"""

from __future__ import annotations

from typing import Any

import pluggy

PROJECT = "osctl"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

#: registry kind -> the hook that fills it
KIND_HOOKS: dict[str, str] = {
    "model": "register_models",
    "autoencoder": "register_autoencoders",
    "text_encoder": "register_text_encoders",
    "sampler": "register_samplers",
    "refiner": "register_refiners",
    "strategy": "register_strategies",
    "tracker": "register_trackers",
    "captioner": "register_captioners",
    "scorer": "register_scorers",
}


@hookspec
def register_models(register: Any) -> None:
    """Register diffusion transformers (kind ``model``).

    :param register: call ``register(ComponentSpec(...))`` once per model. The spec's ``factory`` is
        called as ``factory(config, **runtime)`` and returns a ``torch.nn.Module`` that follows
        ``osctl.protocols.DiffusionModel``.
    """


@hookspec
def register_autoencoders(register: Any) -> None:
    """Register autoencoders that map pixels to latents and back (kind ``autoencoder``).

    :param register: call ``register(ComponentSpec(...))`` once per autoencoder; the factory returns
        an object following ``osctl.protocols.Autoencoder``.
    """


@hookspec
def register_text_encoders(register: Any) -> None:
    """Register text encoders with their tokenizers (kind ``text_encoder``).

    :param register: call ``register(ComponentSpec(...))`` once per text encoder; the factory returns
        an object following ``osctl.protocols.TextEncoder``.
    """


@hookspec
def register_samplers(register: Any) -> None:
    """Register noise schedulers used for sampling (kind ``sampler``).

    :param register: call ``register(ComponentSpec(...))`` once per sampler; the factory returns a
        diffusers-compatible scheduler (``set_timesteps``, ``scale_model_input``, ``step``).
    """


@hookspec
def register_refiners(register: Any) -> None:
    """Register caption refiners that rewrite a prompt before encoding (kind ``refiner``).

    :param register: call ``register(ComponentSpec(...))`` once per refiner; the factory returns a
        callable ``refine(prompts: list[str]) -> list[str]``.
    """


@hookspec
def register_strategies(register: Any) -> None:
    """Register parallel training strategies (kind ``strategy``): single, DDP, FSDP, DeepSpeed, ...

    :param register: call ``register(ComponentSpec(...))`` once per strategy; the factory returns an
        object following ``osctl.protocols.Strategy``.
    """


@hookspec
def register_trackers(register: Any) -> None:
    """Register experiment trackers that receive a training run's config, metrics and videos (kind ``tracker``).

    Recipes select them with ``train.trackers``; ``logs/metrics.jsonl`` is always written besides them.

    :param register: call ``register(ComponentSpec(...))`` once per tracker. The factory is called on
        rank 0 only, as ``factory(config, output_dir=Path, start_step=int)`` (``start_step`` is the step
        a resumed run continues from, 0 for a new run), and returns an object following
        ``osctl.protocols.Tracker``. List Python packages the tracker needs in
        ``metadata={"requires": {"module": "pip install ..."}}`` so a recipe selecting it fails before
        training when one is missing.
    """


@hookspec
def register_captioners(register: Any) -> None:
    """Register captioners that describe a clip in words (kind ``captioner``), used by ``osctl data caption``.

    :param register: call ``register(ComponentSpec(...))`` once per captioner. The factory is called as
        ``factory(config)`` inside each worker process of the chosen engine (once per process) and
        returns an object following ``osctl.protocols.Captioner``. The factory must be a module-level
        function (workers import it by name); its config model is validated before any work starts, so
        a missing model folder is reported at once. Never download weights: take a local path.
    """


@hookspec
def register_scorers(register: Any) -> None:
    """Register quality scorers that add one number to each record (kind ``scorer``), used by ``osctl data score``.

    :param register: call ``register(ComponentSpec(...))`` once per scorer, with
        ``metadata={"field": "motion"}`` naming the record key it writes (``aesthetic``, ``tech`` and
        ``motion`` are the ones ``data.filters`` filters on). The factory is called as ``factory(config)``
        inside each worker process and returns an object following ``osctl.protocols.Scorer``; like a
        captioner's, it must be a module-level function.
    """


@hookspec
def register_commands(app: Any) -> None:
    """Add command groups or commands to the ``osctl`` command line.

    :param app: the root ``typer.Typer`` application; call ``app.add_typer(...)`` or
        ``app.command()(...)`` on it.
    """
