"""Watching where parameters are moved, through torch's own hook for Python-level calls (nothing of osctl is
patched): a test of ``train.offload`` checks the strategy's move never took an offloaded block's weights."""

from __future__ import annotations

from typing import Any

import torch
from torch.overrides import TorchFunctionMode


class ParameterMoves(TorchFunctionMode):
    """While active, records ``(parameter, numel)`` for every ``Tensor.to`` called on a parameter itself (what
    ``Module.to`` does for each parameter it moves), keeping the parameters alive so their ids stay theirs."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[torch.nn.Parameter, int]] = []

    def __torch_function__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None) -> Any:
        if func is torch.Tensor.to and args and isinstance(args[0], torch.nn.Parameter):
            self.calls.append((args[0], args[0].numel()))
        return func(*args, **(kwargs or {}))

    def sizes_moved(self, params: list[torch.nn.Parameter]) -> list[int]:
        """The sizes ``params`` had each time one of them was moved."""
        wanted = {id(p) for p in params}
        return [numel for param, numel in self.calls if id(param) in wanted]
