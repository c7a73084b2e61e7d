"""Precision names to torch dtypes, and the rule every component's weights dtype follows."""

from __future__ import annotations

import pytest
import torch

from osctl.errors import ConfigError
from osctl.utils.dtypes import component_dtype, torch_dtype


def test_names_and_dtypes():
    assert torch_dtype("bf16") is torch.bfloat16 and torch_dtype("torch.float16") is torch.float16
    assert torch_dtype(torch.float32) is torch.float32 and torch_dtype(None) is None


def test_component_dtype_prefers_its_own_setting_then_the_command_then_float32():
    assert component_dtype("fp16", torch.bfloat16) is torch.float16
    assert component_dtype(None, "bf16") is torch.bfloat16
    assert component_dtype(None, None) is torch.float32
    with pytest.raises(ConfigError, match="refiner dtype 'fp8' is unknown"):
        component_dtype("fp8", None, "refiner dtype")
