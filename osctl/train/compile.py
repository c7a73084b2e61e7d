"""``train.compile``: torch.compile of each transformer block, every bucket shape compiled before the first step.

Regional compilation: each block (the classes the model's ``_no_split_modules`` names) is compiled in place
(``nn.Module.compile``), not the whole model. Identical blocks share one graph, so a 32-block model compiles
one or two graphs per shape in seconds instead of one model-sized graph, parameter names stay as they were
(checkpoints, EMA, LoRA and the strategies see the same module tree), and the code between blocks (patch
embedding, Skiparse rearrangements, the loss) stays eager.

Buckets: with ``dynamic: false`` every bucket shape gets its own graph (specialised kernels); torch's limit of
8 graphs per code object is raised to what the run's shapes need. ``warmup: true`` runs a forward and backward
of every bucket shape on zero inputs before the first step (no optimizer step, gradients dropped, no random
state used), so compiling happens at the start instead of in the middle of the first epoch. The
:class:`CompileWatch` counts compilations through dynamo's callbacks; the loop logs the count with every record
(``compiles``) and warns when a shape compiles after the warm-up (a recompilation the warm-up did not foresee:
a validation sample, a last short batch, a new text length).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from osctl.errors import ConfigError

log = logging.getLogger(__name__)

#: graphs a block's code object may hold per batch shape: the training forward and backward of each block kind
#: (dense, Skiparse single, Skiparse group; the two experts of a two-expert model) and validation sampling's
GRAPHS_PER_SHAPE = 8


def check_compile(settings: Any, *, strategy: str, offload: Any) -> None:
    """Refuse what ``train.compile`` does not support: DeepSpeed (its ZeRO hooks around every parameter) and
    ``train.offload`` (its hooks move block weights inside the block's call)."""
    if settings is None:
        return
    if strategy == "deepspeed":
        raise ConfigError("train.compile is not supported with parallel.strategy: deepspeed; use fsdp (or ddp) "
                          "with compile, or drop train.compile.")
    if offload is not None:
        raise ConfigError("train.compile cannot compile blocks that train.offload streams in from host memory; "
                          "drop one of train.compile and train.offload.")


def compile_blocks(model: torch.nn.Module, settings: Any, *, shapes: int) -> int:
    """Compile every transformer block of ``model`` in place (inductor, ``settings.mode`` and ``dynamic``);
    ``shapes`` is the number of batch shapes the run will see. Returns the number of blocks compiled."""
    import torch._dynamo

    from osctl.train.activations import block_modules

    blocks = block_modules(model)
    if not blocks:
        raise ConfigError(f"train.compile compiles transformer blocks, but {type(model).__name__} names none "
                          "(_no_split_modules); drop train.compile for this model.")
    needed = GRAPHS_PER_SHAPE * max(1, shapes)
    config = torch._dynamo.config
    config.recompile_limit = max(config.recompile_limit, needed)
    config.accumulated_recompile_limit = max(config.accumulated_recompile_limit, needed * 4)
    for block in blocks:
        block.compile(mode=settings.mode, dynamic=bool(settings.dynamic))
    return len(blocks)


@dataclass
class CompileWatch:
    """Counts dynamo's compilations (a new graph for a block, forward or backward) from the moment it starts."""

    compiles: int = 0
    after_warmup: int | None = None  # compiles when the warm-up ended (None: no warm-up)
    warned: bool = False  # the loop warned of compilations after the warm-up
    _callback: Any = field(default=None, repr=False)

    def start(self) -> CompileWatch:
        from torch._dynamo.callback import CallbackTrigger, callback_handler

        def ended(args: Any) -> None:
            if args.callback_trigger in (CallbackTrigger.DYNAMO, CallbackTrigger.LAZY_BACKWARD):
                self.compiles += 1

        self._callback = ended
        callback_handler.register_end_callback(ended)
        return self

    def stop(self) -> None:
        if self._callback is not None:
            from torch._dynamo.callback import callback_handler

            callback_handler.remove_end_callback(self._callback)
            self._callback = None

    @property
    def recompiles(self) -> int:
        """Compilations after the warm-up (0 when it covered every shape the run met)."""
        return 0 if self.after_warmup is None else self.compiles - self.after_warmup


@dataclass
class Warmup:
    """What the warm-up did: the latent shapes it ran and the seconds it took."""

    shapes: list[tuple[int, ...]]
    seconds: float


@dataclass
class CompiledRun:
    """A compiled run's warm-up inputs and its compilation count (``TrainParts.compiled``)."""

    settings: Any
    watch: CompileWatch
    shapes: list[tuple[int, ...]]  # latent shapes (C x T x H x W) of the run's batches
    text_shape: tuple[int, int]  # L x D of the text states a batch carries
    text_dtype: torch.dtype
    warmup: Warmup | None = None

    def warm_up(self, run_shape: Any) -> Warmup | None:
        """Run ``run_shape(latent_shape, text_shape, text_dtype)`` (one forward and backward of zero inputs,
        :func:`osctl.train.loop.warm_up_shape`) for every shape when ``warmup`` is on, then mark the count."""
        if not self.settings.warmup:
            return None
        started = time.perf_counter()
        for shape in self.shapes:
            run_shape(shape, self.text_shape, self.text_dtype)
        self.watch.after_warmup = self.watch.compiles
        self.warmup = Warmup(list(self.shapes), time.perf_counter() - started)
        return self.warmup


def plan_line(settings: Any, blocks: int) -> str:
    """The plan's ``compile`` line for ``train.compile`` settings and a model of ``blocks`` blocks."""
    mode = f"mode {settings.mode}, {'dynamic shapes' if settings.dynamic else 'one graph per batch shape'}"
    when = "every batch shape compiled before step 1" if settings.warmup else \
        "each shape compiled at its first batch (warmup: false)"
    return f"torch.compile per transformer block ({blocks} blocks), {mode}; {when}"
