"""The LTX-Video transformer as an osctl model, and the attention processor that runs it sequence-parallel.

:class:`LTXVideoTransformers` says four things about LTX-Video on top of
:class:`osctl.families.transformers.DiffusersTransformers`:

- the call: ``LTXVideoTransformer3DModel`` takes latents packed into tokens (``B x T*H*W x C`` with its 1x1x1
  patch, ``LTXPipeline._pack_latents``), the latent size, and the scale of its rotary positions
  ``(8 / frame_rate, 32, 32)`` (the VAE's strides over the clip's frame rate), exactly as ``LTXPipeline`` calls
  it;
- text: the T5 states with the prompt's mask (:class:`~osctl.families.transformers.TextCondition`): LTX's
  cross-attention ignores the padding tokens (their states come from an encoder run without a mask,
  ``text_encoder.attend_padding: true``);
- sampling: the pipeline's schedule, sigmas ``linspace(1, 1/N, N)`` shifted by ``mu``, a line through the
  scheduler's ``(base_image_seq_len, base_shift)`` and ``(max_image_seq_len, max_shift)`` at the video's
  token count (:meth:`LTXVideoTransformers.sampling_schedule`);
- sequence parallelism: diffusers' own context-parallel plan for LTX-Video (``_cp_plan``): the rotary tables
  and the token sequence are split (at ``proj_in``), the output projection is gathered; self-attention
  (``attn1``) runs through :class:`UlyssesLTXAttnProcessor`, cross-attention to the replicated text as it is.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from diffusers.models.transformers.transformer_ltx import LTXVideoAttnProcessor, apply_rotary_emb
from diffusers.pipelines.ltx.pipeline_ltx import LTXPipeline, calculate_shift
from torch import nn

from osctl.families.transformers import (
    DiffusersTransformers,
    GatherOutput,
    SplitInput,
    SplitOutputs,
    TextCondition,
)
from osctl.families.ulysses_attention import SequenceParallelState, ulysses_self_attention

#: the strides of every LTX-Video VAE (8x time, 32x space): the rotary positions count pixels and frames with them
VAE_STRIDES = (8, 32)


class LTXVideoTransformers(DiffusersTransformers):
    """One ``LTXVideoTransformer3DModel`` behind osctl's model call (see the module docstring)."""

    block_classes = ("LTXVideoTransformerBlock",)  # diffusers' LTXVideoTransformer3DModel declares no block class
    sequence_parallel_plan = (
        SplitOutputs("rope", dim=1, items=(0, 1)),   # cos, sin: B x S x D
        SplitInput("proj_in", arg=0, dim=1),         # packed latents: B x S x C
        GatherOutput("proj_out", dim=1),             # B x S_local x C -> B x S x C
    )

    def __init__(self, transformers: dict[str, nn.Module], *, frame_rate: float = 25.0) -> None:
        super().__init__(transformers)
        self.frame_rate = float(frame_rate)

    def prepare_text(self, text: torch.Tensor, mask: torch.Tensor | None) -> TextCondition:
        """The states and the prompt's mask (LTX attends only to the prompt's tokens)."""
        return TextCondition(text, mask)

    def rope_interpolation_scale(self) -> tuple[float, float, float]:
        """``(8 / frame_rate, 32, 32)``: what ``LTXPipeline`` passes for a clip of ``frame_rate`` fps."""
        stride_t, stride_hw = VAE_STRIDES
        return (stride_t / self.frame_rate, float(stride_hw), float(stride_hw))

    def call_transformer(self, transformer: nn.Module, latents: torch.Tensor, timesteps: torch.Tensor,
                         text: TextCondition) -> torch.Tensor:
        """``LTXVideoTransformer3DModel``'s prediction (flow velocity) for full latents ``B x C x T x H x W``."""
        p, p_t = transformer.config.patch_size, transformer.config.patch_size_t
        frames, height, width = (n // d for n, d in zip(latents.shape[2:], (p_t, p, p), strict=True))
        packed = LTXPipeline._pack_latents(latents, p, p_t)
        out = transformer(hidden_states=packed, encoder_hidden_states=text.states, timestep=timesteps,
                          encoder_attention_mask=text.mask, num_frames=frames, height=height, width=width,
                          rope_interpolation_scale=self.rope_interpolation_scale(), return_dict=False)[0]
        return LTXPipeline._unpack_latents(out, frames, height, width, p, p_t)

    def sampling_schedule(self, scheduler: Any, num_inference_steps: int, shape: tuple[int, ...]) -> dict[str, Any]:
        """``LTXPipeline``'s ``set_timesteps`` arguments for latents of ``shape``: sigmas and the shift ``mu``."""
        config = self.config
        tokens = int(np.prod(shape[2:])) // (config.patch_size_t * config.patch_size ** 2)
        settings = scheduler.config
        mu = calculate_shift(tokens, settings.get("base_image_seq_len", 256), settings.get("max_image_seq_len", 4096),
                             settings.get("base_shift", 0.5), settings.get("max_shift", 1.15))
        return {"sigmas": np.linspace(1.0, 1 / num_inference_steps, num_inference_steps), "mu": mu}

    def sequence_parallel_attention(self, transformer: nn.Module, enabled: bool) -> None:
        """Self-attention of every block through :class:`UlyssesLTXAttnProcessor` (or back to diffusers')."""
        for block in transformer.transformer_blocks:
            block.attn1.set_processor(UlyssesLTXAttnProcessor(self.sp_state) if enabled else LTXVideoAttnProcessor())


class UlyssesLTXAttnProcessor(LTXVideoAttnProcessor):
    """``LTXVideoAttnProcessor`` for self-attention over a token sequence split across a sequence-parallel group.

    Queries, keys and values are projected, RMS-normalised and rotated on this rank's tokens (per-token
    operations, as in diffusers), then one all-to-all gives each rank every token of ``heads / sp`` heads,
    attention runs there, and a second all-to-all brings this rank's tokens of every head back. Cross-attention
    (``encoder_hidden_states`` given) is diffusers' processor unchanged.
    """

    def __init__(self, state: SequenceParallelState) -> None:
        super().__init__()
        self.state = state

    def __call__(self, attn: Any, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None,
                 image_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        if encoder_hidden_states is not None or not self.state.active:
            return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb)
        query = attn.norm_q(attn.to_q(hidden_states))
        key = attn.norm_k(attn.to_k(hidden_states))
        value = attn.to_v(hidden_states)
        if image_rotary_emb is not None:
            query = apply_rotary_emb(query, image_rotary_emb)
            key = apply_rotary_emb(key, image_rotary_emb)
        query, key, value = (x.unflatten(2, (attn.heads, -1)) for x in (query, key, value))
        out = ulysses_self_attention(query, key, value, self.state, attention_mask=attention_mask,
                                     backend=self._attention_backend)
        return attn.to_out[1](attn.to_out[0](out))
