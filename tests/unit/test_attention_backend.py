"""``train.attention_backend`` / ``sample.attention_backend``: a forced kernel is the one that runs."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from osctl.utils.attention import BACKENDS, attention_backend, describe


class _Ops(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.names: set[str] = set()

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        self.names.add(func.__name__)
        return func(*args, **(kwargs or {}))


def _attend() -> tuple[torch.Tensor, set[str]]:
    q, k, v = (torch.randn(1, 2, 8, 16, generator=torch.Generator().manual_seed(i)) for i in range(3))
    with _Ops() as ops:
        out = F.scaled_dot_product_attention(q, k, v)
    return out, ops.names


def test_math_forces_the_unfused_kernel_and_computes_the_same():
    fused, auto_ops = _attend()
    with attention_backend("math"):
        plain, math_ops = _attend()
    assert any("flash_attention" in name for name in auto_ops)  # torch's CPU choice when free to choose
    assert not any("flash_attention" in name for name in math_ops)
    torch.testing.assert_close(plain, fused, atol=1e-6, rtol=1e-5)


def test_a_kernel_the_device_lacks_fails_instead_of_falling_back():
    with attention_backend("efficient"), pytest.raises(RuntimeError):
        _attend()


def test_every_recipe_value_is_a_backend():
    from typing import get_args

    from osctl.recipe.schema import AttentionBackend

    assert set(get_args(AttentionBackend)) == {"auto", *BACKENDS}
    assert "forced" in describe("flash") and "auto" in describe("auto")
