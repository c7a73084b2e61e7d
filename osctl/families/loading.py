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
