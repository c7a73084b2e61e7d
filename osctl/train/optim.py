"""Optimizers by name and LR schedules by diffusers' names, configured from ``train``."""

from __future__ import annotations

import inspect
from collections.abc import Iterable
from typing import Any

import torch

from osctl.errors import ConfigError


def build_optimizer(parameters: Iterable[torch.nn.Parameter], train: Any) -> torch.optim.Optimizer:
    """AdamW with the reference defaults (epsilon 1e-15), or any ``torch.optim`` class by name."""
    params = [p for p in parameters if p.requires_grad]
    name = train.optimizer
    if name.lower() == "adamw":
        return torch.optim.AdamW(params, lr=train.learning_rate, betas=(train.adam_beta1, train.adam_beta2),
                                 weight_decay=train.adam_weight_decay, eps=train.adam_epsilon)
    candidates = {n.lower(): n for n in dir(torch.optim) if isinstance(getattr(torch.optim, n), type)}
    cls_name = candidates.get(name.lower())
    cls = getattr(torch.optim, cls_name, None) if cls_name else None
    if cls is None or not issubclass(cls, torch.optim.Optimizer):
        known = sorted(n for n in candidates.values() if issubclass(getattr(torch.optim, n), torch.optim.Optimizer)
                       and n != "Optimizer")
        raise ConfigError(f"train.optimizer: unknown optimizer {name!r}; use adamw or one of {', '.join(known)}.")
    accepted = inspect.signature(cls.__init__).parameters
    kwargs: dict[str, Any] = {"lr": train.learning_rate}
    if "weight_decay" in accepted:
        kwargs["weight_decay"] = train.adam_weight_decay
    if "betas" in accepted:
        kwargs["betas"] = (train.adam_beta1, train.adam_beta2)
    if "eps" in accepted:
        kwargs["eps"] = train.adam_epsilon
    return cls(params, **kwargs)


def build_lr_scheduler(optimizer: torch.optim.Optimizer, train: Any, total_steps: int) -> Any:
    """A diffusers LR schedule (``constant``, ``cosine``, ``linear``, ...), stepped once per optimizer step."""
    from diffusers.optimization import SchedulerType, get_scheduler

    names = [s.value for s in SchedulerType]
    if train.lr_scheduler not in names:
        raise ConfigError(f"train.lr_scheduler: unknown schedule {train.lr_scheduler!r}; use one of {', '.join(names)}.")
    return get_scheduler(train.lr_scheduler, optimizer=optimizer, num_warmup_steps=train.lr_warmup_steps,
                         num_training_steps=max(total_steps, 1))
