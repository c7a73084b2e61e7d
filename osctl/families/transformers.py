"""One or more diffusers transformers behind osctl's model call: experts, sequence parallelism, weight parts.

osctl's loop and sampling pipeline call every model the same way (``osctl.protocols.DiffusionModel``)::

    model(latents B x C x T x H x W, timesteps B, text B x 1 x L x D,
          attention_mask=latent mask, encoder_attention_mask=text mask B x 1 x L, return_dict=False)[0]

:class:`DiffusersTransformers` is that model for a family from diffusers. It holds the family's
transformers as submodules named as in the released pipeline (``transformer``, ``transformer_2``), so its
state dict keys are ``transformer.<diffusers key>``, and a subclass says how one transformer is called
(:meth:`~DiffusersTransformers.call_transformer`) and how text states are prepared
(:meth:`~DiffusersTransformers.prepare_text`).

Experts. With two transformers and a boundary timestep ``b`` (Wan 2.2: ``boundary_ratio x
num_train_timesteps``), a sample whose timestep is ``>= b`` goes to the first (high-noise) transformer and
the others to the second, exactly as ``WanPipeline`` routes its steps. Untrained experts are frozen; when
only one is trained, :meth:`~DiffusersTransformers.training_timestep_window` tells the objective to draw
timesteps in its range only. When both are trained, a batch is split by expert and every trained expert
runs on every micro-step (on one token, for a zero, when no sample falls to it), so data-parallel and sharded
strategies see the same modules used in the same order on every rank.

Sequence parallelism (Ulysses). The loop and the pipeline give each rank of a group a contiguous slice of
the latent frames and of the text tokens. This module gathers them back (small tensors), then splits the
transformer's token sequence where the family's :attr:`~DiffusersTransformers.sequence_parallel_plan` says
(forward hooks on named submodules: no fork of the model code), runs self-attention through an attention
processor doing osctl's all-to-alls (:mod:`osctl.families.ulysses_attention`), gathers the tokens where the
plan says, and returns this rank's frames. Gradients follow the rule of :mod:`osctl.train.sequence_parallel`:
summed over the group they are the gradient of the sum of the group's rank losses.
"""

from __future__ import annotations

import abc
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from osctl.families.ulysses_attention import SequenceParallelState
from osctl.parallel import ulysses


@dataclass(frozen=True)
class SplitInput:
    """Split argument ``arg`` (position or keyword) of submodule ``module`` along ``dim`` before it runs;
    ``keyword`` names the argument when a module is called by keyword in one place and by position in another
    (diffusers calls blocks by keyword, and by position under gradient checkpointing).

    The first split of a forward fixes the per-rank token counts every later point uses."""

    module: str
    arg: int | str
    dim: int
    keyword: str | None = None


@dataclass(frozen=True)
class SplitOutputs:
    """Split the outputs of submodule ``module`` (a tensor, or the tuple items ``items``) along ``dim``."""

    module: str
    dim: int
    items: tuple[int, ...] = ()


@dataclass(frozen=True)
class GatherOutput:
    """Gather the output of submodule ``module`` from every rank along ``dim`` (the token sequence is whole again)."""

    module: str
    dim: int


@dataclass
class TextCondition:
    """What a family's transformer takes from the text beyond one tensor of states: their mask (LTX-Video
    attends only to the prompt's tokens), a pooled vector (HunyuanVideo's CLIP). A family whose
    :meth:`DiffusersTransformers.prepare_text` returns one passes it whole to its ``call_transformer``;
    expert routing selects samples of every part."""

    states: torch.Tensor
    mask: torch.Tensor | None = None
    pooled: torch.Tensor | None = None

    def index_select(self, dim: int, rows: torch.Tensor) -> TextCondition:
        """The samples ``rows`` (``dim`` must be 0, the batch)."""
        assert dim == 0, "a text condition is selected along the batch"
        return TextCondition(self.states.index_select(0, rows),
                             None if self.mask is None else self.mask.index_select(0, rows),
                             None if self.pooled is None else self.pooled.index_select(0, rows))

    def __getitem__(self, index: tuple[slice, slice]) -> TextCondition:
        """``[samples, tokens]`` of the states and mask; the pooled vector follows the samples."""
        samples = index[0]
        return TextCondition(self.states[index], None if self.mask is None else self.mask[index],
                             None if self.pooled is None else self.pooled[samples])


class DiffusersTransformers(nn.Module, abc.ABC):
    """A family's diffusers transformer(s) as one osctl model (see the module docstring)."""

    #: where the family's token sequence is split and gathered (submodule names relative to one transformer)
    sequence_parallel_plan: tuple[SplitInput | SplitOutputs | GatherOutput, ...] = ()

    def __init__(self, transformers: dict[str, nn.Module], *, boundary_timestep: float | None = None,
                 trained: Iterable[str] | None = None) -> None:
        super().__init__()
        if not transformers:
            raise ValueError("DiffusersTransformers needs at least one transformer.")
        if len(transformers) > 2:
            raise ValueError("at most two transformers (a high-noise and a low-noise expert) are supported.")
        if len(transformers) == 2 and boundary_timestep is None:
            raise ValueError("two transformers need the boundary timestep that routes samples between them.")
        for name, module in transformers.items():
            self.add_module(name, module)
        self.transformer_names: tuple[str, ...] = tuple(transformers)
        self.boundary_timestep = boundary_timestep
        self.trained: tuple[str, ...] = tuple(self.transformer_names if trained is None else trained)
        unknown = [name for name in self.trained if name not in transformers]
        if unknown:
            raise ValueError(f"trained transformers {unknown} are not among {list(transformers)}.")
        for name in self.transformer_names:
            if name not in self.trained:
                getattr(self, name).requires_grad_(False)
        self.sp_state = SequenceParallelState()
        for name in self.transformer_names:
            self._install_split_points(getattr(self, name))

    # -- what a family defines ---------------------------------------------------------------------------
    @abc.abstractmethod
    def call_transformer(self, transformer: nn.Module, latents: torch.Tensor, timesteps: torch.Tensor,
                         text: Any) -> torch.Tensor:
        """One transformer's prediction (latents' shape) for full latents, timesteps ``B`` and the text
        :meth:`prepare_text` made (states ``B x L x D``, or a :class:`TextCondition`)."""

    def prepare_text(self, text: torch.Tensor, mask: torch.Tensor | None) -> Any:
        """The text the transformer sees, from the encoder's states and mask (default: the states unchanged)."""
        return text

    @abc.abstractmethod
    def sequence_parallel_attention(self, transformer: nn.Module, enabled: bool) -> None:
        """Install (``enabled``) or remove the family's Ulysses attention processors on ``transformer``."""

    # -- the module ------------------------------------------------------------------------------------
    @property
    def config(self) -> Any:
        """The first transformer's diffusers config (patch size, heads, channels)."""
        return getattr(self, self.transformer_names[0]).config

    block_classes: tuple[str, ...] = ()
    """Names of the family's repeated block classes when its diffusers class declares none in
    ``_no_split_modules`` (LTX-Video's is None): FSDP, offload, the fp8 base and the memory plan need them."""

    @property
    def _no_split_modules(self) -> list[str]:
        """The block classes FSDP shards one by one (every transformer's ``_no_split_modules``, else
        :attr:`block_classes`)."""
        names: list[str] = []
        for name in self.transformer_names:
            declared = getattr(getattr(self, name), "_no_split_modules", None) or self.block_classes
            for block in declared:
                if block not in names:
                    names.append(block)
        return names

    def transformers(self) -> list[tuple[str, nn.Module]]:
        """``(pipeline name, module)`` of each transformer, high-noise expert first."""
        return [(name, getattr(self, name)) for name in self.transformer_names]

    def weight_parts(self) -> list[tuple[str, str, nn.Module]]:
        """``(subfolder, state-dict prefix, module)`` per saved folder: one transformer is saved as the folder
        itself (a diffusers folder ``from_pretrained`` loads), several under their pipeline names."""
        if len(self.transformer_names) == 1:
            name = self.transformer_names[0]
            return [("", f"{name}.", getattr(self, name))]
        return [(name, f"{name}.", getattr(self, name)) for name in self.transformer_names]

    def enable_gradient_checkpointing(self, gradient_checkpointing_func: Any = None) -> None:
        """Recompute each transformer block in backward (diffusers' own checkpointing, through
        ``gradient_checkpointing_func`` when given: see :mod:`osctl.train.checkpointing`)."""
        for _, module in self.transformers():
            module.enable_gradient_checkpointing(gradient_checkpointing_func=gradient_checkpointing_func)

    def disable_gradient_checkpointing(self) -> None:
        """Keep every block's activations again."""
        for _, module in self.transformers():
            module.disable_gradient_checkpointing()

    def expert_index(self, timesteps: torch.Tensor) -> torch.Tensor:
        """0 (first transformer) for timesteps ``>= boundary``, 1 below it; all 0 with one transformer."""
        if len(self.transformer_names) == 1:
            return torch.zeros(timesteps.shape, dtype=torch.long, device=timesteps.device)
        return (timesteps < self.boundary_timestep).long()

    def training_timestep_window(self) -> tuple[float, float] | None:
        """``(low, high)``: the timesteps training draws (``low <= t < high``) when only one of two experts is
        trained; None when every timestep is trained."""
        if len(self.transformer_names) == 1 or len(self.trained) == len(self.transformer_names):
            return None
        assert self.boundary_timestep is not None
        if self.trained == (self.transformer_names[0],):
            return (float(self.boundary_timestep), float("inf"))
        return (float("-inf"), float(self.boundary_timestep))

    def set_sequence_parallel(self, group: Any) -> None:
        """Run Ulysses-style over ``group`` (None: one process); every rank of the group calls it."""
        was = self.sp_state.active
        self.sp_state.group = group
        if self.sp_state.active != was:
            for _, module in self.transformers():
                self.sequence_parallel_attention(module, self.sp_state.active)

    @property
    def sequence_parallel_group(self) -> Any:
        return self.sp_state.group

    def forward(self, hidden_states: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor,
                attention_mask: torch.Tensor | None = None, encoder_attention_mask: torch.Tensor | None = None,
                return_dict: bool = False) -> tuple[torch.Tensor]:
        """osctl's model call (module docstring); ``attention_mask`` (latent validity) is not used: padded
        positions only leave the loss, as the families' own trainers do."""
        del attention_mask, return_dict
        text = encoder_hidden_states.squeeze(1) if encoder_hidden_states.ndim == 4 else encoder_hidden_states
        mask = encoder_attention_mask
        if mask is not None and mask.ndim == 3:
            mask = mask.squeeze(1)
        latents = hidden_states
        state = self.sp_state
        frame_sizes: list[int] | None = None
        if state.active:
            frame_sizes = ulysses.gather_sizes(latents.shape[2], state.group, latents.device)
            latents = ulysses.gather_along_dim(latents.contiguous(), 2, state.group, sizes=frame_sizes)
            text_sizes = ulysses.gather_sizes(text.shape[1], state.group, latents.device)
            text = ulysses.gather_along_dim(text.contiguous(), 1, state.group, sizes=text_sizes)
            if mask is not None:
                mask = ulysses.gather_along_dim(mask.contiguous(), 1, state.group, sizes=text_sizes)
        timesteps = timestep.reshape(-1).expand(latents.shape[0]) if timestep.numel() == 1 else timestep
        output = self._route(latents, timesteps, self.prepare_text(text, mask))
        if frame_sizes is not None:
            output = output.narrow(2, sum(frame_sizes[: state.rank]), frame_sizes[state.rank])
        return (output,)

    def _route(self, latents: torch.Tensor, timesteps: torch.Tensor, text: Any) -> torch.Tensor:
        """Each sample through its expert (see the module docstring for why trained experts always run)."""
        names = self.transformer_names
        if len(names) == 1:
            return self.call_transformer(getattr(self, names[0]), latents, timesteps, text)
        index = self.expert_index(timesteps)
        training = torch.is_grad_enabled()
        must_run = {name for name in self.trained if training and any(
            p.requires_grad for p in getattr(self, name).parameters())}
        if bool((index == index[0]).all()) and not (must_run - {names[int(index[0])]}):
            return self.call_transformer(getattr(self, names[int(index[0])]), latents, timesteps, text)
        output: torch.Tensor | None = None
        idle: list[torch.Tensor] = []
        for i, name in enumerate(names):
            rows = (index == i).nonzero().flatten()
            if rows.numel() == 0:
                if name in must_run:
                    idle.append(self._touch(getattr(self, name), latents, timesteps, text))
                continue
            part = self.call_transformer(getattr(self, name), latents.index_select(0, rows),
                                         timesteps.index_select(0, rows), text.index_select(0, rows))
            if output is None:
                output = part.new_zeros((latents.shape[0], *part.shape[1:]))
            output = output.index_copy(0, rows, part)
        assert output is not None
        for zero in idle:
            output = output + zero
        return output

    def _touch(self, transformer: nn.Module, latents: torch.Tensor, timesteps: torch.Tensor,
               text: Any) -> torch.Tensor:
        """Zero, computed by ``transformer`` on one token of one sample: every parameter takes part in the step
        (with a zero gradient) at the cost of one token, so every rank runs the same modules in the same order
        (DDP's gradient buckets, FSDP's all-gathers) whatever its samples' timesteps. Run without sequence
        parallelism: every rank of the group computes the same zero."""
        patch = tuple(getattr(transformer.config, "patch_size", (1, 1, 1)))
        piece = latents[:1, :, : patch[0], : patch[1], : patch[2]]
        group, self.sp_state.group = self.sp_state.group, None
        try:
            out = self.call_transformer(transformer, piece, timesteps[:1], text[:1, :1])
        finally:
            self.sp_state.group = group
        return out.sum() * 0.0

    # -- sequence-parallel split points -----------------------------------------------------------------
    def _install_split_points(self, transformer: nn.Module) -> None:
        state = self.sp_state
        for point in self.sequence_parallel_plan:
            target = transformer.get_submodule(point.module)
            if isinstance(point, SplitInput):
                target.register_forward_pre_hook(_split_input_hook(state, point), with_kwargs=True)
            elif isinstance(point, SplitOutputs):
                target.register_forward_hook(_split_outputs_hook(state, point))
            else:
                target.register_forward_hook(_gather_output_hook(state, point))


def _split_input_hook(state: SequenceParallelState, point: SplitInput) -> Any:
    def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if not state.active:
            return None
        if point.keyword is not None and point.keyword in kwargs:
            kwargs = {**kwargs, point.keyword: state.local_slice(kwargs[point.keyword], point.dim)}
        elif isinstance(point.arg, str) and point.arg in kwargs:
            kwargs = {**kwargs, point.arg: state.local_slice(kwargs[point.arg], point.dim)}
        elif isinstance(point.arg, int) and point.arg < len(args):
            args = (*args[: point.arg], state.local_slice(args[point.arg], point.dim), *args[point.arg + 1:])
        else:
            raise RuntimeError(f"sequence parallelism: {point.module} was called without argument {point.arg!r}.")
        return args, kwargs

    return hook


def _split_outputs_hook(state: SequenceParallelState, point: SplitOutputs) -> Any:
    def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> Any:
        if not state.active:
            return None
        if not point.items:
            return state.local_slice(output, point.dim)
        items = list(output)
        for i in point.items:
            items[i] = state.local_slice(items[i], point.dim)
        return type(output)(items) if isinstance(output, tuple) else items

    return hook


def _gather_output_hook(state: SequenceParallelState, point: GatherOutput) -> Any:
    def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> Any:
        if not state.active:
            return None
        return state.gather(output, point.dim)

    return hook
