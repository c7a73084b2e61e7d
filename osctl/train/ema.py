"""Exponential moving average of the trainable weights, with the reference's decay schedule.

The decay at optimizer step ``s`` is ``min(ema_decay, (1 + k) / (10 + k))`` with
``k = s - start_step - 1`` (0 while ``k <= 0``: the average simply copies the weights), as
diffusers' ``EMAModel`` does for the reference. The EMA works on whatever tensors it is given —
full parameters, or the local shards of FSDP/ZeRO-3 — so it never needs gathered weights.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch


class EMA:
    """Shadow fp32 copies of a list of parameters (or parameter shards)."""

    def __init__(self, parameters: Iterable[torch.Tensor], *, decay: float = 0.9999, start_step: int = 0,
                 offload: bool = False) -> None:
        params = list(parameters)
        device = torch.device("cpu") if offload else None
        self.shadow = [p.detach().to(device=device or p.device, dtype=torch.float32, copy=True) for p in params]
        self.decay = decay
        self.start_step = start_step
        self.offload = offload
        self.optimization_step = 0

    def current_decay(self, optimization_step: int) -> float:
        """Decay used for the update made at ``optimization_step`` (1-based)."""
        k = optimization_step - self.start_step - 1
        if k <= 0:
            return 0.0
        return min(self.decay, (1 + k) / (10 + k))

    @torch.no_grad()
    def update(self, parameters: Iterable[torch.Tensor]) -> None:
        """Fold the current weights in after one optimizer step."""
        self.optimization_step += 1
        decay = self.current_decay(self.optimization_step)
        for shadow, param in zip(self.shadow, parameters, strict=True):
            value = param.detach().to(shadow.device, torch.float32)
            shadow.lerp_(value, 1.0 - decay)

    @torch.no_grad()
    def copy_to(self, parameters: Iterable[torch.Tensor]) -> None:
        """Write the averaged weights into ``parameters`` (e.g. a model to export)."""
        for shadow, param in zip(self.shadow, parameters, strict=True):
            param.copy_(shadow.to(param.device, param.dtype))

    def state_dict(self) -> dict[str, object]:
        """Everything needed to resume the average exactly."""
        return {"shadow": [t.cpu() for t in self.shadow], "optimization_step": self.optimization_step,
                "decay": self.decay, "start_step": self.start_step}

    def load_state_dict(self, state: dict[str, object]) -> None:
        """Restore from ``state_dict()``."""
        shadow = state["shadow"]
        assert isinstance(shadow, list) and len(shadow) == len(self.shadow), "EMA parameter count changed"
        for mine, saved in zip(self.shadow, shadow, strict=True):
            mine.copy_(saved)
        self.optimization_step = int(state["optimization_step"])  # type: ignore[arg-type]
