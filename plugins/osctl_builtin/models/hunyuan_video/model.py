"""The HunyuanVideo transformer as an osctl model.

:class:`HunyuanVideoTransformers` says three things about HunyuanVideo on top of
:class:`osctl.families.transformers.DiffusersTransformers`:

- text: the ``hunyuan_text`` encoder's states hold CLIP's pooled vector in their first row and the
  LLaVA-Llama states of the prompt (the template cropped) after it, with the prompt's mask
  (:mod:`osctl_builtin.text_encoders.hunyuan`); they become a :class:`~osctl.families.transformers.TextCondition`
  of states, mask and pooled vector. Trailing padding is dropped first (every rank and sample keeps the
  longest prompt): the transformer masks padding out of every attention, so the prediction is the one of the
  pipeline's 256 tokens at a fraction of the cost;
- the call: ``HunyuanVideoTransformer3DModel(latents, timestep, states, mask, pooled, guidance)``, where the
  released model is guidance-distilled: the guidance scale is an input, ``guidance x 1000``. Training uses
  ``training_guidance`` (1.0, as musubi-tuner and finetrainers train), sampling (the module in eval mode)
  ``guidance`` (HunyuanVideoPipeline's 6.0);
- sampling: the pipeline's sigmas ``linspace(1, 0, N + 1)[:-1]`` (:meth:`HunyuanVideoTransformers.
  sampling_schedule`), with the flow sampler's shift (7.0 released).

Sequence parallelism is not available for HunyuanVideo yet (its single-stream blocks join text and video into
one sequence inside the block; diffusers has no plan to follow): asking for it is a ``ConfigError``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from osctl.errors import ConfigError
from osctl.families.transformers import DiffusersTransformers, TextCondition


class HunyuanVideoTransformers(DiffusersTransformers):
    """One ``HunyuanVideoTransformer3DModel`` behind osctl's model call (see the module docstring)."""

    def __init__(self, transformers: dict[str, nn.Module], *, guidance: float = 6.0,
                 training_guidance: float = 1.0) -> None:
        super().__init__(transformers)
        self.guidance = float(guidance)
        self.training_guidance = float(training_guidance)

    def prepare_text(self, text: torch.Tensor, mask: torch.Tensor | None) -> TextCondition:
        """Pooled vector (row 0), prompt states and mask (the rest), trailing padding dropped."""
        pooled = text[:, 0, : self.config.pooled_projection_dim]
        states = text[:, 1:]
        mask = torch.ones(states.shape[:2], dtype=torch.long, device=text.device) if mask is None else mask[:, 1:]
        valid = mask.bool().any(dim=0).nonzero()
        length = int(valid.max()) + 1 if valid.numel() else 1
        return TextCondition(states[:, :length], mask[:, :length], pooled)

    def call_transformer(self, transformer: nn.Module, latents: torch.Tensor, timesteps: torch.Tensor,
                         text: TextCondition) -> torch.Tensor:
        """``HunyuanVideoTransformer3DModel``'s prediction (flow velocity) for full latents."""
        guidance = None
        if transformer.config.guidance_embeds:
            scale = self.training_guidance if self.training else self.guidance
            guidance = torch.full((latents.shape[0],), scale * 1000.0, device=latents.device, dtype=latents.dtype)
        return transformer(hidden_states=latents, timestep=timesteps, encoder_hidden_states=text.states,
                           encoder_attention_mask=text.mask, pooled_projections=text.pooled, guidance=guidance,
                           return_dict=False)[0]

    def sampling_schedule(self, scheduler: Any, num_inference_steps: int, shape: tuple[int, ...]) -> dict[str, Any]:
        """``HunyuanVideoPipeline``'s ``set_timesteps`` argument: sigmas ``linspace(1, 0, N + 1)[:-1]``."""
        return {"sigmas": np.linspace(1.0, 0.0, num_inference_steps + 1)[:-1]}

    def sequence_parallel_attention(self, transformer: nn.Module, enabled: bool) -> None:
        if enabled:
            raise ConfigError("sequence parallelism is not available for HunyuanVideo yet; set parallel.sp_size: 1 "
                              "(and sample without --sp).")
