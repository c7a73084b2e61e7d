"""Activation checkpointing: which policy a run uses, and how it is put on the model.

Three policies, chosen by ``train.gradient_checkpointing``:

- ``off``: autograd keeps every block's activations (fastest, most memory);
- ``full``: each transformer block keeps only its input and is recomputed whole in backward (diffusers'
  ``enable_gradient_checkpointing``; least memory, one more forward of every block);
- ``selective``: as ``full``, but the attention kernels' outputs (the output and its log-sum-exp) are kept, so
  the recomputation runs the projections, norms and MLPs but never attention again (torch's selective
  activation checkpointing, ``create_selective_checkpoint_contexts``). At video lengths attention is most of
  a block's time, so this costs a fraction of ``full``'s recomputation for one attention output per block.

``null`` (the default) follows the model section's own ``gradient_checkpointing`` switch (true: ``full``), so
a family recipe that sets it there keeps working; a train-level value wins over it. :func:`checkpointing_policy`
is the one place that decides; the run, the memory plan and the benchmarks take its answer.
"""

from __future__ import annotations

from typing import Any, Literal

import torch

Policy = Literal["off", "full", "selective"]
POLICIES: tuple[Policy, ...] = ("off", "full", "selective")


def checkpointing_policy(train_value: Any, model_config: Any = None) -> Policy:
    """The run's policy: ``train.gradient_checkpointing`` (a policy name or a bool) when set, else the model
    config's ``gradient_checkpointing`` flag (``full`` when true)."""
    if train_value is None:
        return "full" if bool(getattr(model_config, "gradient_checkpointing", False)) else "off"
    if isinstance(train_value, bool):
        return "full" if train_value else "off"
    if train_value not in POLICIES:  # the recipe schema allows no other value
        raise ValueError(f"unknown checkpointing policy {train_value!r}")
    return train_value


def recipe_policy(checked: Any) -> Policy:
    """:func:`checkpointing_policy` of a checked recipe (its train section and its model's own config)."""
    components = getattr(checked, "components", None) or {}
    return checkpointing_policy(checked.loaded.recipe.train.gradient_checkpointing, components.get("model"))


#: the aten attention kernels whose outputs ``selective`` keeps (every SDPA backend, on GPUs and the CPU)
_ATTENTION_OPS = tuple(
    getattr(torch.ops.aten, name).default for name in (
        "_scaled_dot_product_flash_attention", "_scaled_dot_product_efficient_attention",
        "_scaled_dot_product_cudnn_attention", "_scaled_dot_product_flash_attention_for_cpu",
        "_scaled_dot_product_fused_attention_overrideable", "_flash_attention_forward",
        "_efficient_attention_forward",
    ) if hasattr(torch.ops.aten, name)
)


def _keep_attention(ctx: Any, op: Any, *args: Any, **kwargs: Any) -> Any:
    from torch.utils.checkpoint import CheckpointPolicy

    return CheckpointPolicy.MUST_SAVE if op in _ATTENTION_OPS else CheckpointPolicy.PREFER_RECOMPUTE


def _attention_kept_contexts() -> Any:
    from torch.utils.checkpoint import create_selective_checkpoint_contexts

    return create_selective_checkpoint_contexts(_keep_attention)


def selective_checkpoint(module: Any, *args: Any) -> Any:
    """diffusers' ``gradient_checkpointing_func`` for ``selective``: the block recomputed in backward except its
    attention kernels, whose outputs were kept."""
    from torch.utils.checkpoint import checkpoint

    return checkpoint(module.__call__, *args, use_reentrant=False, context_fn=_attention_kept_contexts)


def apply_checkpointing(model: torch.nn.Module, policy: Policy) -> None:
    """Put ``policy`` on ``model`` (a diffusers ``ModelMixin`` or an osctl family model): switched on with the
    right recomputation function, or off (also when the model's config had switched it on)."""
    if policy == "off":
        if hasattr(model, "disable_gradient_checkpointing"):
            model.disable_gradient_checkpointing()
        return
    if not hasattr(model, "enable_gradient_checkpointing"):
        return
    if policy == "full":
        model.enable_gradient_checkpointing()
    else:
        model.enable_gradient_checkpointing(gradient_checkpointing_func=selective_checkpoint)


def is_checkpointing(model: torch.nn.Module) -> bool:
    """True when any module of ``model`` recomputes its blocks in backward."""
    return any(getattr(m, "gradient_checkpointing", False) is True for m in model.modules())
