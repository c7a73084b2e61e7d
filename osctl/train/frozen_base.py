"""The frozen base of a LoRA run stored in less memory: ``train.base_dtype`` bf16, fp8_e4m3 or fp8_e5m2.

Every frozen ``nn.Linear`` inside the model's repeated blocks (the classes its ``_no_split_modules``
names: almost all of a transformer's weights) keeps its weight in the storage dtype and computes in the
input's dtype: the weight is upcast for the product and, in backward, upcast again from the stored copy
(:class:`UpcastLinear`), so no full-precision copy of a weight outlives its layer's forward. Embeddings,
norms, the output projection and the adapter itself stay float32 (so ``model.dtype``, which models use to
cast their inputs, stays float32).

Why not diffusers' layerwise casting: its hook re-casts the module for compute and back after forward, and
autograd keeps the compute-dtype weight alive until backward, so a training step would hold a
full-precision copy of every weight at the peak.
"""

from __future__ import annotations

import contextlib
import types
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F

from osctl.errors import ConfigError

STORAGE_DTYPES: dict[str, torch.dtype] = {
    "bf16": torch.bfloat16,
    "fp8_e4m3": torch.float8_e4m3fn,
    "fp8_e5m2": torch.float8_e5m2,
}
#: strategies that keep a low-precision frozen base as it is (FSDP2 needs one dtype per sharded group and
#: DeepSpeed casts the whole module to its compute dtype)
SUPPORTED_STRATEGIES = ("single", "ddp")


class UpcastLinear(torch.autograd.Function):
    """``F.linear`` with a low-precision frozen weight: upcast for the product, saved in its storage dtype."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        ctx.save_for_backward(weight)
        ctx.input_dtype = x.dtype
        compute = torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type) else x.dtype
        with torch.autocast(x.device.type, enabled=False):
            return F.linear(x.to(compute), weight.to(compute), None if bias is None else bias.to(compute))

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        (weight,) = ctx.saved_tensors
        return (grad @ weight.to(grad.dtype)).to(ctx.input_dtype), None, None


def _upcast_forward(self: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    return UpcastLinear.apply(x, self.weight, self.bias)


def block_linear_layers(model: torch.nn.Module) -> list[tuple[str, torch.nn.Linear]]:
    """Every ``nn.Linear`` layer inside the model's repeated blocks (``_no_split_modules``), by name."""
    block_names = set(getattr(model, "_no_split_modules", None) or ())
    found: list[tuple[str, torch.nn.Linear]] = []
    for name, module in model.named_modules():
        if module is model or type(module).__name__ not in block_names:
            continue
        for sub_name, sub in module.named_modules():
            if isinstance(sub, torch.nn.Linear):
                found.append((f"{name}.{sub_name}", sub))
    return found


def block_linears(model: torch.nn.Module) -> list[tuple[str, torch.nn.Linear]]:
    """Frozen ``nn.Linear`` layers inside the model's repeated blocks (``_no_split_modules``), by name."""
    return [(name, layer) for name, layer in block_linear_layers(model)
            if not any(p.requires_grad for p in layer.parameters(recurse=False))]


def storage_plan(model: torch.nn.Module, base_dtype: str) -> dict[str, torch.dtype]:
    """The weights a LoRA base in ``base_dtype`` keeps in its storage dtype (every block linear's), by state-dict
    key: the lean loader (:func:`osctl.train.lean_load.materialise`) casts them as it reads them."""
    dtype = STORAGE_DTYPES.get(base_dtype)
    return {} if dtype is None else {f"{name}.weight": dtype for name, _ in block_linear_layers(model)}


@contextlib.contextmanager
def float32_placeholders(model: torch.nn.Module) -> Iterator[None]:
    """While peft adds an adapter: every layer whose weight is stored in a smaller dtype (``train.base_dtype``, as
    it was loaded) or not loaded yet (on the meta device: a base the strategy shards empty, see
    :func:`osctl.train.lean_load.loads_sharded`) shows a float32 weight of the same shape instead (one value,
    expanded: 4 bytes), on the weight's device or, for a meta weight, the CPU. peft makes a new adapter in its
    base weight's dtype and on its device: so the adapter is float32 and has real values, as for a float32 base
    in memory (an adapter on the meta device would lose its init). The weights are put back afterwards; the
    adapter inits osctl allows never read them."""
    swapped = []
    for layer in model.modules():
        weight = layer._parameters.get("weight")
        if weight is not None and weight.is_floating_point() and (weight.is_meta or weight.dtype != torch.float32):
            device = "cpu" if weight.is_meta else weight.device
            placeholder = torch.nn.Parameter(torch.zeros((), device=device).expand(weight.shape),
                                             requires_grad=weight.requires_grad)
            swapped.append((layer, weight, placeholder))
            layer._parameters["weight"] = placeholder
    try:
        yield
    finally:
        for layer, weight, placeholder in swapped:  # frozen (or not) as the placeholder was meanwhile
            weight.requires_grad_(placeholder.requires_grad)
            layer._parameters["weight"] = weight


def store_frozen_base(model: torch.nn.Module, base_dtype: str, *, strategy: str) -> list[str]:
    """Store the frozen block weights of ``model`` in ``base_dtype`` (nothing for fp32); returns plan notes."""
    if base_dtype == "fp32":
        return []
    if strategy not in SUPPORTED_STRATEGIES:
        raise ConfigError(f"train.base_dtype {base_dtype} needs the single or ddp strategy (the {strategy} strategy "
                          "would cast the frozen base back to one dtype); set parallel.strategy: ddp or "
                          "train.base_dtype: fp32.")
    layers = block_linears(model)
    if not layers:
        raise ConfigError(f"train.base_dtype {base_dtype}: {type(model).__name__} names no block classes "
                          "(_no_split_modules), so no frozen layer can be stored in less memory; use fp32.")
    dtype = STORAGE_DTYPES[base_dtype]
    before = after = 0
    for _, layer in layers:
        before += layer.weight.numel() * 4  # float32 (a lean load may have stored it in the smaller dtype already)
        layer.weight.data = layer.weight.data.to(dtype)
        after += layer.weight.numel() * layer.weight.element_size()
        layer.forward = types.MethodType(_upcast_forward, layer)
    return [f"frozen base: {len(layers)} block linear layers stored in {base_dtype}: {before / 1024**2:.1f} MiB -> "
            f"{after / 1024**2:.1f} MiB"]


def frozen_bytes(model: torch.nn.Module) -> dict[str, int]:
    """Bytes of the frozen parameters by dtype name (what ``train.base_dtype`` shrinks)."""
    out: dict[str, int] = {}
    for param in model.parameters():
        if not param.requires_grad:
            key = str(param.dtype).removeprefix("torch.")
            out[key] = out.get(key, 0) + param.numel() * param.element_size()
    return out
