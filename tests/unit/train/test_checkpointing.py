"""Activation checkpointing policies: which one a recipe means, and that each computes the same step.

``selective`` must give the gradients of ``off`` and ``full`` while recomputing everything of a block except its
attention kernels: counted here with a dispatch mode over the backward pass (``full`` runs attention again there,
``selective`` never does)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from osctl.train.checkpointing import (
    _ATTENTION_OPS,
    apply_checkpointing,
    checkpointing_policy,
    is_checkpointing,
)
from tests.builtin.test_osp_v13_transformer import run, tiny, tiny_inputs


@pytest.mark.parametrize(("train_value", "model_flag", "expected"), [
    (None, False, "off"), (None, True, "full"), (True, False, "full"), (False, True, "off"),
    ("selective", False, "selective"), ("off", True, "off"), ("full", False, "full"),
])
def test_policy_follows_the_train_key_then_the_model_flag(train_value, model_flag, expected):
    assert checkpointing_policy(train_value, SimpleNamespace(gradient_checkpointing=model_flag)) == expected
    if train_value is not None:
        assert checkpointing_policy(train_value, None) == expected


class _AttentionCalls(TorchDispatchMode):
    """Counts the attention kernels dispatched while it is active."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        if func in _ATTENTION_OPS:
            self.calls += 1
        return func(*args, **(kwargs or {}))


def test_selective_recomputes_the_blocks_but_not_their_attention():
    inputs = tiny_inputs()
    results = {}
    for policy in ("off", "full", "selective"):
        model = tiny().train()
        apply_checkpointing(model, policy)
        assert is_checkpointing(model) is (policy != "off")
        with _AttentionCalls() as forward:
            loss = run(model, inputs).square().mean()
        with _AttentionCalls() as backward:
            loss.backward()
        assert forward.calls > 0  # the model's attention goes through an SDPA kernel the policy knows
        results[policy] = (loss.detach(), {n: p.grad for n, p in model.named_parameters()}, backward.calls,
                           forward.calls)
    off, full, selective = results["off"], results["full"], results["selective"]
    assert full[2] == full[3]  # every block's attention ran again in backward
    assert selective[2] == 0 and off[2] == 0
    for other in (full, selective):
        torch.testing.assert_close(other[0], off[0], atol=0, rtol=0)
        for name, grad in off[1].items():
            torch.testing.assert_close(other[1][name], grad, atol=1e-7, rtol=1e-6, msg=name)


def test_off_switches_off_what_the_model_config_switched_on():
    model = tiny(gradient_checkpointing=True)
    assert is_checkpointing(model)
    apply_checkpointing(model, "off")
    assert not is_checkpointing(model)
