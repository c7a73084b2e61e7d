"""diffusers' ``from_pretrained`` of a released component folder, without running code from its files."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def from_pretrained_safely(cls: Any, folder: Path, dtype: Any = None, **kwargs: Any) -> Any:
    """``cls.from_pretrained(folder)``: safetensors headers are checked against the file sizes first (a truncated
    file is named), and every ``torch.load`` diffusers makes for ``*.bin`` weights is osctl's weights-only load,
    so a pickle naming anything beyond tensors is refused before it runs (a ``DataError`` naming the file)."""
    from osctl.ckpt.headers import find_weights, read_weights
    from osctl.ckpt.torch_files import hold_torch_load

    safetensors = find_weights(folder, ["diffusion_pytorch_model"])
    if safetensors is not None:
        read_weights(safetensors, root=folder.parent)
    advice = "model weights never need that: use the safetensors weights of this model"
    with hold_torch_load(allowed=(), advice=advice) as held:
        try:
            return cls.from_pretrained(str(folder), torch_dtype=dtype, use_safetensors=safetensors is not None,
                                       **kwargs)
        except Exception:
            if held.error is not None:
                raise held.error from None
            raise


def build_transformers(config: Any, transformer_class: Any, *, dtype: Any = None, meta: bool = False,
                       empty: bool = False) -> dict[str, Any]:
    """``{pipeline name: transformer}`` of a family's model config (:class:`osctl.families.configs.
    DiffusersModelConfig`): loaded from ``path``, fresh from the preset, or (``meta``) shapes only, from the
    folder's config.json or, before it is downloaded, the preset. ``empty``: what would be loaded or made, built
    from the folder's config.json (else the preset) with its parameters on the meta device and its buffers made
    as usual (:mod:`osctl.train.lean_load` fills it). Architecture errors are ``ConfigError``s."""
    from contextlib import nullcontext

    import torch

    from osctl.errors import ConfigError
    from osctl.families.sources import has_diffusers_weights
    from osctl.train.lean_load import parameters_on_meta

    found = None if meta else config.located()

    def building() -> Any:  # a fresh context per transformer (parameters_on_meta's is entered once)
        return torch.device("meta") if meta else parameters_on_meta() if empty else nullcontext()

    transformers: dict[str, Any] = {}
    try:
        if found is not None:
            for name, folder in found.folders.items():
                if not has_diffusers_weights(folder):
                    raise ConfigError(f"model.path: {str(folder)!r} has a config.json but no diffusion_pytorch_model "
                                      "weights.", hint=config.FETCH_HINT)
                if empty:
                    with building():
                        module = transformer_class.from_config(transformer_class.load_config(folder))
                    module.register_to_config(_name_or_path=str(folder))  # as from_pretrained records it
                    transformers[name] = cast_as_loaded(module, dtype)
                else:
                    transformers[name] = from_pretrained_safely(transformer_class, folder, dtype)
        else:
            arch = config.plan_architecture() if meta else config.architecture()
            for name in config.transformer_names():
                with building():
                    module = transformer_class.from_config(arch)
                transformers[name] = _cast(module, dtype)
    except ValueError as exc:
        raise ConfigError(f"model: {exc}") from None
    return transformers


def _cast(module: Any, dtype: Any) -> Any:
    """``module`` in ``dtype`` (None: as built) through ``nn.Module.to``: diffusers' own ``.to()`` warns on every
    cast."""
    import torch

    return module if dtype is None else torch.nn.Module.to(module, dtype=dtype)


def cast_as_loaded(module: Any, dtype: Any) -> Any:
    """``module`` (an ``empty`` build) in ``dtype`` as diffusers' ``from_pretrained(torch_dtype=dtype)`` leaves the
    model it loads: floating parameters and persistent buffers (what the weight files hold) in ``dtype``, buffers
    outside the state dict (computed when the model was built) as built."""
    import torch

    if dtype is None:
        return module
    for sub in module.modules():
        for name, param in sub._parameters.items():
            if param is not None and param.is_floating_point():
                sub._parameters[name] = torch.nn.Parameter(param.to(dtype), requires_grad=param.requires_grad)
        for name, buffer in sub._buffers.items():
            if buffer is not None and buffer.is_floating_point() and name not in sub._non_persistent_buffers_set:
                sub._buffers[name] = buffer.to(dtype)
    return module


def placed(model: Any, *, device: Any, meta: bool, gradient_checkpointing: bool, empty: bool = False) -> Any:
    """A model factory's last step: the built model on ``device`` (a meta or ``empty`` build stays where it is)
    with gradient checkpointing switched on when the recipe asks for it."""
    if device is not None and not (meta or empty):
        model = model.to(device)
    if gradient_checkpointing:
        model.enable_gradient_checkpointing()
    return model
