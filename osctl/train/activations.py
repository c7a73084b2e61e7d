"""What autograd keeps for backward in one forward of a model, traced on the meta device (no memory, no compute).

A saved-tensors hook adds up the bytes of every tensor autograd saves, outside the transformer blocks and per
block (the block classes ``_no_split_modules`` names), with each block's input. Attention runs through a
flash-style stand-in (the S x S scores are never kept, as in the GPU and CPU kernels), its workspace counted
apart. Identical blocks are traced twice and replayed (:class:`_BlockReplays`). :mod:`osctl.train.memory` turns
the trace into the memory of a training step.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F


class _FlashLike(torch.autograd.Function):
    """Stand-in for attention during the trace: keeps what a flash kernel keeps (q, k, v, out, logsumexp)."""

    @staticmethod
    def forward(ctx: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        out = torch.empty_like(q.expand(*q.shape[:-1], v.shape[-1]))
        ctx.save_for_backward(q, k, v, out, torch.empty(q.shape[:-1], dtype=torch.float32, device=q.device), mask)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, ...]:  # pragma: no cover - never run
        q, k, v, _, _, _ = ctx.saved_tensors
        return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v), None


@dataclass
class ActivationTrace:
    """What the trace saw: saved bytes outside blocks, per block, block inputs, the largest tensor and attention."""

    outside: int = 0
    blocks: list[int] = field(default_factory=list)
    block_inputs: list[int] = field(default_factory=list)
    largest: int = 0
    attention: int = 0
    block_attention: list[int] = field(default_factory=list)  # per block: attention outputs (out, logsumexp)


@contextlib.contextmanager
def _tracing(model: torch.nn.Module, trace: ActivationTrace) -> Iterator[None]:
    params = {p.untyped_storage()._cdata for p in model.parameters()}
    seen: set[int] = set()
    kept: list[torch.Tensor] = []  # every counted tensor until the trace ends (no memory on meta)
    current: list[int | None] = [None]

    def pack(tensor: torch.Tensor) -> Any:
        key = tensor.untyped_storage()._cdata
        if key in params or key in seen:
            return tensor
        # held here, not only by the graph: a branch whose graph is dropped mid-trace (an output nothing uses)
        # frees its saved tensors whenever the garbage collector runs, and a new storage at a freed address
        # would be taken for one already counted
        kept.append(tensor)
        seen.add(key)
        size = tensor.untyped_storage().nbytes()
        trace.largest = max(trace.largest, size)
        if current[0] is None:
            trace.outside += size
        else:
            trace.blocks[current[0]] += size
        return tensor

    def sdpa(*args: Any, **kwargs: Any) -> torch.Tensor:  # called positionally (osctl) or by keyword (diffusers)
        names = ("query", "key", "value", "attn_mask")
        given = dict(zip(names, args, strict=False)) | {k: v for k, v in kwargs.items() if k in names}
        q, k, v, attn_mask = given["query"], given["key"], given["value"], given.get("attn_mask")
        # flash-style workspace: fp32 output accumulators and logsumexp per query block, plus the grads of q, k, v
        trace.attention = max(trace.attention, 3 * q.numel() * q.element_size() + 2 * k.numel() * k.element_size())
        if current[0] is not None:  # what selective checkpointing keeps of this call: its output and logsumexp
            rows = q.numel() // q.shape[-1]
            trace.block_attention[current[0]] += rows * (v.shape[-1] * q.element_size() + 4)
        mask = attn_mask if isinstance(attn_mask, torch.Tensor) else torch.empty(0, device=q.device)
        return _FlashLike.apply(q, k, v, mask)

    blocks = block_modules(model)
    handles = []
    replays = _BlockReplays()
    own_forward: list[Any] = []
    for index, block in enumerate(blocks):
        trace.blocks.append(0)
        trace.block_inputs.append(0)
        trace.block_attention.append(0)

        def enter(module: torch.nn.Module, args: Any, index: int = index) -> None:
            current[0] = index
            first = next((a for a in args if isinstance(a, torch.Tensor)), None)
            if first is not None:
                trace.block_inputs[index] = first.numel() * first.element_size()

        handles.append(block.register_forward_pre_hook(enter))
        handles.append(block.register_forward_hook(lambda *_: current.__setitem__(0, None)))
        own_forward.append(block.__dict__.get("forward"))  # a hook's wrapper (accelerate's) is put back after
        block.forward = replays.wrap(block, index, trace)  # type: ignore[method-assign]
    original = F.scaled_dot_product_attention
    F.scaled_dot_product_attention = sdpa
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda _: None):
            yield
    finally:
        F.scaled_dot_product_attention = original
        for handle in handles:
            handle.remove()
        for block, forward in zip(blocks, own_forward, strict=False):
            if forward is None:
                del block.forward  # the class's forward again
            else:
                block.forward = forward


class _BlockReplays:
    """Trace each kind of transformer block twice, not once per block: tracing on the meta device costs about
    a tenth of a second per block and the released models have 28 to 60 identical ones.

    A block's kind is everything its forward can depend on besides tensor values: its class, every parameter's
    shape, dtype and ``requires_grad``, the plain attributes of all its submodules (a sparse ratio, a flag set
    per block), and the shapes, dtypes and plain values of its arguments. The first two blocks of a kind run for
    real (the first may save less, when its input was saved before it); later ones add the second's saved bytes
    and return empty tensors shaped like its outputs. A block whose output is not tensors always runs.
    """

    def __init__(self) -> None:
        self.seen: dict[Any, int] = {}
        self.recorded: dict[Any, tuple[int, Any]] = {}
        self.alive: list[Any] = []

    def wrap(self, block: torch.nn.Module, index: int, trace: ActivationTrace) -> Any:
        forward = block.forward
        kind_of_block = _block_kind(block)

        def replayed(*args: Any, **kwargs: Any) -> Any:
            key = (kind_of_block, _argument_kind(args), _argument_kind(tuple(sorted(kwargs.items()))))
            if key in self.recorded:
                saved, attention, outputs = self.recorded[key]
                trace.blocks[index] += saved
                trace.block_attention[index] += attention
                made = _empty_like(outputs)
                self.alive.append(made)  # as a traced output is kept by the graph: its storage's address stays taken
                return made
            output = forward(*args, **kwargs)
            self.seen[key] = self.seen.get(key, 0) + 1
            outputs = _output_spec(output)
            if self.seen[key] >= 2 and outputs is not None:
                self.recorded[key] = (trace.blocks[index], trace.block_attention[index], outputs)
            return output

        return replayed


_PLAIN = (int, float, str, bool, type(None))


_UNSEEN = object()


def _plain_value(value: Any) -> Any:
    """``value`` as a comparable key when it is plain data (numbers, strings, enums, dataclasses and tuples of
    them, e.g. a block's Skiparse mode), else :data:`_UNSEEN` (objects compared by identity say nothing)."""
    if isinstance(value, (*_PLAIN, enum.Enum)):
        return value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return (type(value).__qualname__, tuple(_plain_value(getattr(value, f.name)) for f in dataclasses.fields(value)))
    if isinstance(value, (tuple, list)):
        return tuple(_plain_value(v) for v in value)
    return _UNSEEN


def _block_kind(block: torch.nn.Module) -> Any:
    params = tuple((name, tuple(p.shape), p.dtype, p.requires_grad) for name, p in block.named_parameters())
    attributes = []
    for name, module in block.named_modules():
        plain = [(k, _plain_value(v)) for k, v in vars(module).items() if k != "training"]
        attributes.append((name, tuple((k, v) for k, v in plain if v is not _UNSEEN)))
    return type(block), params, tuple(attributes)


def _argument_kind(values: Any) -> Any:
    if isinstance(values, torch.Tensor):
        return ("tensor", tuple(values.shape), tuple(values.stride()), values.dtype, values.requires_grad)
    if isinstance(values, (tuple, list)):
        return tuple(_argument_kind(v) for v in values)
    if isinstance(values, dict):
        return tuple((k, _argument_kind(v)) for k, v in sorted(values.items()))
    return values if isinstance(values, _PLAIN) else ("object", type(values).__name__, id(values))


@dataclass(frozen=True)
class _TensorSpec:
    shape: tuple[int, ...]
    stride: tuple[int, ...]
    dtype: torch.dtype
    requires_grad: bool

    def empty(self) -> torch.Tensor:
        """A meta tensor of this layout (a leaf: what it was computed from is not traced again)."""
        tensor = torch.empty_strided(self.shape, self.stride, dtype=self.dtype, device="meta")
        return tensor.requires_grad_(self.requires_grad)


def _output_spec(output: Any) -> Any:
    """The layout of a block's tensor output, or of a tuple of tensors and Nones; None for anything else."""
    if isinstance(output, torch.Tensor):
        return _TensorSpec(tuple(output.shape), tuple(output.stride()), output.dtype, output.requires_grad)
    if isinstance(output, tuple) and output and all(isinstance(o, torch.Tensor) or o is None for o in output):
        return tuple(None if o is None else _output_spec(o) for o in output)
    return None


def _empty_like(spec: Any) -> Any:
    if isinstance(spec, _TensorSpec):
        return spec.empty()
    return tuple(None if s is None else s.empty() for s in spec)


def block_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The model's repeated blocks in forward order (the classes its ``_no_split_modules`` names): what the trace
    counts per block, FSDP and ZeRO-3 shard one at a time, and ``train.offload`` streams."""
    names = set(getattr(model, "_no_split_modules", None) or ())
    return [m for m in model.modules() if m is not model and type(m).__name__ in names]


def trace_activations(model: torch.nn.Module, *, batch: int, latent: tuple[int, int, int], channels: int,
                      text_tokens: int, text_dim: int, dtype: torch.dtype) -> ActivationTrace:
    """Run ``model`` (on the meta device) forward on one micro-batch of ``latent`` (T x H x W) and record what
    autograd saves. The model is traced as it will train (its adapters, its frozen parameters)."""
    device = torch.device("meta")
    t, h, w = latent
    trace = ActivationTrace()
    hidden = torch.empty(batch, channels, t, h, w, device=device, dtype=dtype, requires_grad=False)
    text = torch.empty(batch, 1, text_tokens, text_dim, device=device, dtype=dtype)
    mask = torch.ones(batch, t, h, w, device=device)
    text_mask = torch.ones(batch, 1, text_tokens, device=device)
    # trace every block's own activations (combined with checkpointing's rule by the caller): switch it off in
    # the model and in every diffusers model inside it, and back on afterwards
    checkpointed = [m for m in model.modules() if getattr(m, "gradient_checkpointing", False) is True]
    for module in checkpointed:
        module.gradient_checkpointing = False
    try:
        with torch.enable_grad(), _tracing(model, trace):
            model(hidden, torch.zeros(batch, device=device), text, attention_mask=mask,
                  encoder_attention_mask=text_mask, return_dict=False)
    finally:
        for module in checkpointed:
            module.gradient_checkpointing = True
    return trace
