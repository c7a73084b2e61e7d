"""The contracts plugins implement. The core only ever talks to components through these.

:mod:`osctl.build` checks every component a plugin builds against its kind's contract
(:func:`check_contract`), and the training loop and the builders are typed with them.

Tensor layouts: videos are ``B x C x T x H x W`` with pixel values in [-1, 1]; latents are
``B x C_lat x T_lat x H_lat x W_lat`` already normalised by the autoencoder (shift/scale applied).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from pathlib import Path

    import torch


@runtime_checkable
class DiffusionModel(Protocol):
    """A diffusion transformer (a ``torch.nn.Module``) predicting noise/velocity from noisy latents.

    ``forward(hidden_states, timestep, encoder_hidden_states, attention_mask=None,
    encoder_attention_mask=None, return_dict=False)`` takes latents ``B x C x T x H x W``,
    timesteps ``B``, text states ``B x 1 x L x D`` (or ``B x L x D``), a latent validity mask
    ``B x T x H x W`` and a text mask ``B x 1 x L``; it returns a tuple whose first element has the
    latents' shape. Checkpoints are written from its ``config`` and state dict
    (:func:`osctl.train.export.save_model`; a model of several diffusers models lists them with
    ``weight_parts()``), so no ``save_pretrained`` is required.
    """

    config: Any

    def forward(self, hidden_states: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor,
                attention_mask: torch.Tensor | None = None, encoder_attention_mask: torch.Tensor | None = None,
                return_dict: bool = False) -> Any: ...


@runtime_checkable
class Autoencoder(Protocol):
    """Maps pixel videos to normalised latents and back.

    Its strides and latent channels are declared by its config (``autoencoder_geometry()``, see
    :mod:`osctl.geometry`), not read off the built object: ``T_lat = (T - 1) // stride_t + 1`` (causal
    first frame), ``H_lat = H // stride_hw``.

    Optional: ``latent_moments(video) -> osctl.latent_moments.LatentMoments`` (the posterior and the
    normalisation, with ``encode`` computed from it), so ``osctl data cache`` can store the posterior and
    training draw from it exactly as ``encode`` would.
    """

    def encode(self, video: torch.Tensor, *, sample: bool = True, generator: torch.Generator | None = None) -> torch.Tensor:
        """Normalised latents of ``video`` (posterior sample, or mean when ``sample`` is False)."""
        ...

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Pixel video in about [-1, 1] from normalised latents (inverse of the normalisation)."""
        ...


@runtime_checkable
class TextEncoder(Protocol):
    """A frozen text encoder with its tokenizer."""

    hidden_size: int
    max_length: int

    def tokenize(self, texts: list[str], max_length: int | None = None) -> dict[str, torch.Tensor]:
        """``input_ids`` and ``attention_mask`` (``B x L``), padded and truncated to ``max_length``."""
        ...

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Last hidden states ``B x L x hidden_size`` computed with the attention mask, no grad."""
        ...


@runtime_checkable
class Refiner(Protocol):
    """Rewrites prompts before they are encoded."""

    def __call__(self, prompts: list[str]) -> list[str]: ...


@runtime_checkable
class Strategy(Protocol):
    """A parallel training strategy: wraps model and optimizer, backward, step and state saving.

    The training loop only talks to this interface, so single-process, DDP, FSDP and DeepSpeed runs
    share one loop. ``prepare`` is called once; afterwards ``model`` is what the loop calls forward
    on and ``module`` is the unwrapped model (for configs, exporting and the sequence-parallel hook).

    Optional attributes, read with ``getattr``: ``shards_parameters`` (each rank holds only part of
    the weights, so every rank saves its own ``ema-rank-R.pt``), ``supports_resharding`` (resuming
    on another world size works), and ``saves_ema`` with ``attach_ema(ema)`` (the strategy keeps
    the EMA inside its own state, e.g. to re-shard it; no ``ema-rank-R.pt`` is written), and
    ``prepare_empty(model, fill, *, optimizer_factory, lr_scheduler_factory)`` for a strategy that loads sharded
    (``osctl.train.lean_load.loads_sharded``): ``prepare`` for a model whose parameters are on the meta device
    (any that come with values, such as a LoRA adapter added to the empty base, keep them); the strategy places
    (shards) them, then calls ``fill(model)`` to read their values where they live, or ``fill(model, modules)``
    for those modules' tensors alone, a part at a time (``osctl.train.lean_load.PendingFill``).
    """

    name: str
    model: Any
    module: Any
    optimizer: Any
    lr_scheduler: Any

    def prepare(self, model: Any, *, optimizer_factory: Any, lr_scheduler_factory: Any) -> None:
        """Wrap ``model`` and build the optimizer and LR scheduler from the factories."""
        ...

    def autocast(self) -> Any:
        """Context manager for the forward pass in the configured mixed precision."""
        ...

    def no_sync(self, sync: bool) -> Any:
        """Context manager for one micro-step; gradients are synchronised only when ``sync``."""
        ...

    def backward(self, loss: Any) -> None:
        """Back-propagate ``loss`` (scaled when the precision needs it)."""
        ...

    def clip_grad_norm(self, max_norm: float | None) -> float | None:
        """Clip the global gradient norm; returns the norm before clipping."""
        ...

    def optimizer_step(self) -> None:
        """Optimizer step, LR-scheduler step and gradient reset."""
        ...

    def local_parameters(self) -> list[tuple[str, Any]]:
        """(name, tensor) of the trainable parameters this rank holds, in a fixed order (for EMA)."""
        ...

    def full_state_dict(self, local: list[tuple[str, Any]] | None = None) -> dict[str, Any] | None:
        """The full model state dict on rank 0 (None elsewhere); ``local`` replaces parameter values."""
        ...

    def save_state(self, folder: Any) -> None:
        """Write optimizer/scheduler/engine state into ``folder`` (every rank calls it)."""
        ...

    def load_state(self, folder: Any) -> None:
        """Restore what ``save_state`` wrote, never running code from it (``osctl.train.checkpoint.restore_file``
        for torch/JSON files); a damaged or refused file is a ``DataError`` naming it."""
        ...


@runtime_checkable
class Tracker(Protocol):
    """An experiment tracker (TensorBoard, a web service, ...) fed by the training loop on rank 0.

    The run calls ``log_config`` once at the start, ``log_metrics`` every ``train.log_interval``
    steps with the same record that goes to ``logs/metrics.jsonl`` (loss, loss_avg, lr, grad_norm,
    samples_per_s, the loader's ``data_*`` counters, ...; values may be None), ``log_videos`` after
    each validation, and ``close`` once at the end, also after an error or a stop signal. A method
    that raises disables the tracker for the rest of the run with one warning; training goes on.
    """

    def log_config(self, config: dict[str, Any]) -> None:
        """Record the resolved recipe (plain JSON-able data)."""
        ...

    def log_metrics(self, step: int, metrics: dict[str, Any]) -> None:
        """Record one logged step's values (numbers, None or strings) at optimizer step ``step``."""
        ...

    def log_videos(self, step: int, tag: str, paths: list[Path]) -> None:
        """Record the validation samples written at ``step`` (``.mp4``, or ``.png`` for one frame)."""
        ...

    def close(self) -> None:
        """Flush and release everything; called exactly once."""
        ...


@runtime_checkable
class Captioner(Protocol):
    """Describes one clip in words (``osctl data caption``).

    ``clip`` is an ``osctl.curate.clip.Clip``: the media path, its usable span (``cut``), fps, size and
    record, with ``frames(count)`` returning ``count`` evenly spread frames (crop applied) as
    ``K x H x W x 3`` uint8 RGB. Raise ``osctl.DataError`` for a clip that cannot be captioned; it is
    reported for that record and the others go on.
    """

    def caption(self, clip: Any) -> str:
        """One caption for ``clip`` (non-empty text)."""
        ...


@runtime_checkable
class Scorer(Protocol):
    """Gives one clip a quality number (``osctl data score``), written to the record key the spec's
    ``metadata["field"]`` names. ``clip`` is as for :class:`Captioner`."""

    def score(self, clip: Any) -> float | None:
        """A finite number, or None when the score does not apply (e.g. motion of an image)."""
        ...


#: registry kind -> the contract its components follow (samplers are diffusers schedulers; commands have none)
CONTRACTS: dict[str, type] = {
    "model": DiffusionModel, "autoencoder": Autoencoder, "text_encoder": TextEncoder, "refiner": Refiner,
    "strategy": Strategy, "tracker": Tracker, "captioner": Captioner, "scorer": Scorer,
}
#: attributes a contract declares that exist only after a later call, not when the factory returns
SET_LATER: dict[str, frozenset[str]] = {"strategy": frozenset({"model", "module", "optimizer", "lr_scheduler"})}


def contract_members(contract: type) -> list[str]:
    """The attributes and methods ``contract`` declares (``__call__`` included, other dunders not)."""
    names: set[str] = set()
    for klass in contract.__mro__:
        if klass is object or klass.__module__ == "typing":
            continue
        names.update(getattr(klass, "__annotations__", {}))
        names.update(name for name, value in vars(klass).items()
                     if callable(value) and (not name.startswith("_") or name == "__call__"))
    return sorted(names)


def check_contract(component: Any, kind: str, name: str) -> Any:
    """``component`` itself when it has every member of its kind's contract, else a ``ConfigError`` naming them.

    The core calls this on what a plugin's factory returns, so a component that does not follow its
    contract fails where it is built, naming the plugin, instead of with an ``AttributeError`` deep inside
    a run. Only presence is checked (what ``isinstance`` of a runtime-checkable protocol checks), and not
    of the attributes in :data:`SET_LATER` (a strategy's ``model`` appears with ``prepare``).
    """
    from osctl.errors import ConfigError

    contract = CONTRACTS.get(kind)
    if contract is None:
        return component
    later = SET_LATER.get(kind, frozenset())
    missing = [member for member in contract_members(contract) if member not in later and not hasattr(component, member)]
    if missing:
        raise ConfigError(f"the {kind} {name!r} built a {type(component).__name__} without {', '.join(missing)}, "
                          f"which osctl.protocols.{contract.__name__} requires; fix the plugin that registers it.")
    return component
