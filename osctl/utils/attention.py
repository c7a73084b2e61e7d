"""The attention kernel a run forces (``train.attention_backend``, ``osctl sample --attention-backend``).

Every model osctl runs attends through ``torch.nn.functional.scaled_dot_product_attention`` (the v1.3 model
directly, the diffusers families through diffusers' native dispatch), so one ``sdpa_kernel`` context around a
forward and backward decides the kernel: ``flash`` (FlashAttention-2), ``cudnn`` (cuDNN's fused attention),
``efficient`` (memory-efficient attention) or ``math`` (the unfused reference). ``auto`` leaves the choice to
torch, call by call. A forced kernel that cannot run a call (a head size or mask it does not take, a device it
does not exist on) fails that call with torch's reason instead of falling back silently.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

BACKENDS = {"flash": "FLASH_ATTENTION", "cudnn": "CUDNN_ATTENTION", "efficient": "EFFICIENT_ATTENTION",
            "math": "MATH"}


@contextlib.contextmanager
def attention_backend(name: str) -> Iterator[None]:
    """Force SDPA kernel ``name`` (a key of :data:`BACKENDS`) inside the block; ``auto``: torch chooses."""
    if name == "auto":
        yield
        return
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel([getattr(SDPBackend, BACKENDS[name])]):
        yield


def describe(name: str) -> str:
    """The plan's ``attention`` line for backend ``name``."""
    if name == "auto":
        return "scaled_dot_product_attention, kernel chosen per call by torch (auto)"
    return f"scaled_dot_product_attention, {name} kernel forced"
