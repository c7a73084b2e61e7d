"""The parallel layout of a run: how many processes, how they split into sequence-parallel groups, and
how many samples one optimizer step sees. The one owner of the global-batch formula and its checks.

``world_size`` processes form ``dp_size = world_size / sp_size`` data-parallel replicas; each replica
is a sequence-parallel (SP) group of ``sp_size`` ranks that share one stream of batches. Each replica
reads ``stream_batch`` samples per micro-step (``train.train_batch_size``, or under sequence
parallelism ``parallel.train_sp_batch_size``, the batch one SP group shares), and ``grad_accum``
micro-steps make one optimizer step::

    micro_batch  = dp_size x stream_batch            samples per micro-step, over all replicas
    global_batch = micro_batch x grad_accum          samples per optimizer step

``osctl data bucket`` (minority threshold, batches per epoch), the loader (its sampler cuts the
index into micro-batches), the training plan, the loop (samples/s) and ``osctl sample --sp`` all
take a :class:`ParallelLayout`, so they cannot disagree. (The reference computes its bucket
threshold from ``train_batch_size x world x accumulation // sp_size x train_sp_batch_size``, which
is this formula only without sequence parallelism; osctl uses this one everywhere.)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from osctl.errors import ConfigError


@dataclass(frozen=True)
class LayoutNames:
    """How a layout's error messages name its parts: the recipe keys, or the command-line flags that set them.

    ``sp`` and ``fix`` are formatted with ``sp`` (the group size) and ``n`` (the number it must divide).
    """

    sp: str = "parallel.sp_size {sp}"
    world: str = "the world size"
    fix: str = "use an sp_size that divides {n}"


RECIPE_NAMES = LayoutNames()
LAUNCH_NAMES = LayoutNames(world="--nproc-per-node x --nnodes")
SAMPLE_SP_NAMES = LayoutNames(sp="--sp over {sp} processes", world="the world size",
                              fix="use a process count that divides {n}")


@dataclass(frozen=True)
class ParallelLayout:
    """World size, sequence-parallel group size, per-replica batch and accumulation, checked on creation.

    Refuses (``ConfigError``) a size below 1 and an ``sp_size`` that does not divide ``world_size``;
    :meth:`check_heads` refuses one that does not divide the model's attention heads (Ulysses
    attention gives every rank ``heads / sp_size`` heads).
    """

    world_size: int = 1
    sp_size: int = 1
    stream_batch: int = 1
    grad_accum: int = 1
    names: LayoutNames = field(default=RECIPE_NAMES, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.sp_size < 1:
            raise ConfigError(f"parallel.sp_size is {self.sp_size}; use 1 (off) or a group size of at least 2.")
        for name, value in (("the world size", self.world_size), ("the batch per replica", self.stream_batch),
                            ("train.gradient_accumulation_steps", self.grad_accum)):
            if value < 1:
                raise ConfigError(f"{name} is {value}; it must be at least 1.")
        if self.world_size % self.sp_size:
            raise ConfigError(f"{self.names.sp.format(sp=self.sp_size)} does not divide {self.names.world} "
                              f"({self.world_size}); {self.names.fix.format(n=self.world_size)} or change the "
                              "process count.")

    @classmethod
    def from_sections(cls, train: Any, parallel: Any, *, world_size: int | None = None,
                      names: LayoutNames = RECIPE_NAMES) -> ParallelLayout:
        """The layout of a recipe's ``train`` and ``parallel`` sections on ``world_size`` processes
        (default: ``parallel.nproc_per_node x parallel.nnodes`` when set, else 1)."""
        if world_size is None:
            world_size = recipe_world_size(parallel)
        sp = parallel.sp_size
        stream = parallel.train_sp_batch_size if sp > 1 else train.train_batch_size
        return cls(world_size=world_size, sp_size=sp, stream_batch=stream,
                   grad_accum=train.gradient_accumulation_steps, names=names)

    @classmethod
    def from_recipe(cls, recipe: Any, *, world_size: int | None = None,
                    names: LayoutNames = RECIPE_NAMES) -> ParallelLayout:
        """The layout of a validated :class:`osctl.recipe.schema.Recipe` (see :meth:`from_sections`)."""
        return cls.from_sections(recipe.train, recipe.parallel, world_size=world_size, names=names)

    @property
    def sequence_parallel(self) -> bool:
        """True when ranks share samples (``sp_size > 1``)."""
        return self.sp_size > 1

    @property
    def dp_size(self) -> int:
        """Data-parallel replicas (sequence-parallel groups): each reads its own share of the data."""
        return self.world_size // self.sp_size

    @property
    def micro_batch(self) -> int:
        """Samples per micro-step over all replicas: one row of the sampler's schedule."""
        return self.dp_size * self.stream_batch

    @property
    def global_batch(self) -> int:
        """Samples per optimizer step over all replicas: ``dp_size x stream_batch x grad_accum``."""
        return self.micro_batch * self.grad_accum

    def optimizer_steps(self, micro_batches: int) -> int:
        """Optimizer steps that ``micro_batches`` micro-batches (e.g. one epoch's) make."""
        return micro_batches // self.grad_accum

    def check_heads(self, heads: int | None) -> None:
        """Refuse an ``sp_size`` that does not divide the model's ``heads`` attention heads (None: unknown)."""
        if heads is not None and self.sp_size > 1 and heads % self.sp_size:
            raise ConfigError(f"{self.names.sp.format(sp=self.sp_size)} does not divide the model's {heads} "
                              f"attention heads; {self.names.fix.format(n=heads)}.")

    def describe(self) -> str:
        """The global batch as a sum a person can check, e.g. ``2 per rank x 4 ranks x 2 accumulation = 16``."""
        if self.sequence_parallel:
            head = (f"{self.stream_batch} per sequence-parallel group of {self.sp_size} ranks x {self.dp_size} "
                    f"group(s)")
        else:
            head = f"{self.stream_batch} per rank x {self.world_size} rank(s)"
        return f"{head} x {self.grad_accum} accumulation = {self.global_batch} per optimizer step"

    def as_dict(self) -> dict[str, int]:
        """The layout's numbers (for JSON output)."""
        return {"world_size": self.world_size, "sp_size": self.sp_size, "dp_size": self.dp_size,
                "stream_batch": self.stream_batch, "grad_accum": self.grad_accum, "micro_batch": self.micro_batch,
                "global_batch": self.global_batch}


def recipe_world_size(parallel: Any) -> int:
    """Processes a recipe's ``parallel`` section asks for: ``nproc_per_node x nnodes``, or 1 when unset."""
    return parallel.nproc_per_node * parallel.nnodes if parallel.nproc_per_node else 1
