"""The Wan transformer(s) as one osctl model, and the attention processor that runs them sequence-parallel.

:class:`WanTransformers` says three things about Wan on top of :class:`osctl.families.transformers.
DiffusersTransformers`:

- text: the encoder's states past the prompt are zeros and the sequence is padded with zeros to 512 tokens,
  exactly what ``WanPipeline._get_t5_prompt_embeds`` feeds the transformer (the transformer has no text mask:
  padding tokens are attended to, so their number and value matter);
- the call: ``WanTransformer3DModel(hidden_states, timestep, encoder_hidden_states)``;
- sequence parallelism: diffusers' own context-parallel plan for Wan (``WanTransformer3DModel._cp_plan``):
  the rotary tables and the input of the first block are split along the tokens, the output projection is
  gathered; self-attention (``attn1``) runs through :class:`UlyssesWanAttnProcessor`.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers.models.transformers.transformer_wan import WanAttnProcessor
from torch import nn

from osctl.families.transformers import DiffusersTransformers, GatherOutput, SplitInput, SplitOutputs
from osctl.families.ulysses_attention import SequenceParallelState, ulysses_self_attention


class WanTransformers(DiffusersTransformers):
    """One Wan transformer, or Wan 2.2's high-noise and low-noise experts (see the module docstring)."""

    sequence_parallel_plan = (
        SplitOutputs("rope", dim=1, items=(0, 1)),   # cos, sin: 1 x S x 1 x D
        SplitInput("blocks.0", arg=0, dim=1),        # hidden_states: B x S x C
        GatherOutput("proj_out", dim=1),             # B x S_local x C_out -> B x S x C_out
    )

    def __init__(self, transformers: dict[str, nn.Module], *, boundary_timestep: float | None = None,
                 trained: Any = None, text_length: int = 512) -> None:
        super().__init__(transformers, boundary_timestep=boundary_timestep, trained=trained)
        self.text_length = int(text_length)

    def prepare_text(self, text: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """States past the prompt zeroed, then zeros up to ``text_length`` tokens (``WanPipeline``'s embeddings)."""
        if mask is not None:
            text = text * mask.to(text.dtype).unsqueeze(-1)
        missing = self.text_length - text.shape[1]
        if missing > 0:
            text = torch.cat([text, text.new_zeros(text.shape[0], missing, text.shape[2])], dim=1)
        return text

    def call_transformer(self, transformer: nn.Module, latents: torch.Tensor, timesteps: torch.Tensor,
                         text: torch.Tensor) -> torch.Tensor:
        """``WanTransformer3DModel``'s prediction (flow velocity) for full latents."""
        return transformer(hidden_states=latents, timestep=timesteps, encoder_hidden_states=text,
                           return_dict=False)[0]

    def sequence_parallel_attention(self, transformer: nn.Module, enabled: bool) -> None:
        """Self-attention of every block through :class:`UlyssesWanAttnProcessor` (or back to diffusers')."""
        for block in transformer.blocks:
            block.attn1.set_processor(UlyssesWanAttnProcessor(self.sp_state) if enabled else WanAttnProcessor())


class UlyssesWanAttnProcessor(WanAttnProcessor):
    """``WanAttnProcessor`` for self-attention over a token sequence split across a sequence-parallel group.

    Queries, keys and values are projected, RMS-normalised and rotated on this rank's tokens (all per-token
    operations, as in diffusers), then one all-to-all gives each rank every token of ``heads / sp`` heads,
    attention runs there, and a second all-to-all brings this rank's tokens of every head back. Cross-attention
    (``encoder_hidden_states`` given) is diffusers' processor unchanged.
    """

    def __init__(self, state: SequenceParallelState) -> None:
        super().__init__()
        self.state = state

    def __call__(self, attn: Any, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None,
                 rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        if encoder_hidden_states is not None or not self.state.active:
            return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, rotary_emb)
        if getattr(attn, "fused_projections", False):
            query, key, value = attn.to_qkv(hidden_states).chunk(3, dim=-1)
        else:
            query, key, value = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        query = attn.norm_q(query).unflatten(2, (attn.heads, -1))
        key = attn.norm_k(key).unflatten(2, (attn.heads, -1))
        value = value.unflatten(2, (attn.heads, -1))
        if rotary_emb is not None:
            query = apply_rotary_emb(query, *rotary_emb)
            key = apply_rotary_emb(key, *rotary_emb)
        out = ulysses_self_attention(query, key, value, self.state, attention_mask=attention_mask,
                                     backend=self._attention_backend)
        out = attn.to_out[0](out)
        return attn.to_out[1](out)


def apply_rotary_emb(x: torch.Tensor, freqs_cos: torch.Tensor, freqs_sin: torch.Tensor) -> torch.Tensor:
    """Wan's rotary embedding on ``B x S x H x D`` (interleaved pairs), as ``WanAttnProcessor`` applies it."""
    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)
    cos = freqs_cos[..., 0::2]
    sin = freqs_sin[..., 1::2]
    out = torch.empty_like(x)
    out[..., 0::2] = x1 * cos - x2 * sin
    out[..., 1::2] = x1 * sin + x2 * cos
    return out.type_as(x)
