"""The HunyuanVideo transformer as an osctl model.

:class:`HunyuanVideoTransformers` says four things about HunyuanVideo on top of
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
  sampling_schedule`), with the flow sampler's shift (7.0 released);
- sequence parallelism (Ulysses): diffusers has no context-parallel plan for HunyuanVideo. The rotary tables
  (computed for the full latent size) and the video tokens at the first dual-stream block's input are split,
  the output projection is gathered; the text (refined by the token refiner, with the timestep, pooled and
  guidance embeddings before the blocks) stays whole on every rank, and so does the attention mask the
  transformer builds over ``[video; text]`` for the whole sequence. Both block kinds attend jointly over
  ``[video; text]``: the dual-stream blocks with the text's own projections, the single-stream blocks (which
  join this rank's video tokens and the text into one sequence for their per-token norm and MLP) with shared
  ones; :class:`UlyssesHunyuanVideoAttnProcessor` runs that attention over the video tokens of every rank.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from diffusers.models.embeddings import apply_rotary_emb
from diffusers.models.transformers.transformer_hunyuan_video import HunyuanVideoAttnProcessor2_0
from torch import nn

from osctl.families.transformers import (
    DiffusersTransformers,
    GatherOutput,
    SplitInput,
    SplitOutputs,
    TextCondition,
)
from osctl.families.ulysses_attention import SequenceParallelState, ulysses_joint_attention


class HunyuanVideoTransformers(DiffusersTransformers):
    """One ``HunyuanVideoTransformer3DModel`` behind osctl's model call (see the module docstring)."""

    sequence_parallel_plan = (
        SplitOutputs("rope", dim=0, items=(0, 1)),                                   # cos, sin: S x D
        SplitInput("transformer_blocks.0", arg=0, keyword="hidden_states", dim=1),  # video tokens B x S x C
        GatherOutput("proj_out", dim=1),                                            # B x S_local x C_out
    )

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
        """The attention of every dual- and single-stream block through :class:`UlyssesHunyuanVideoAttnProcessor`
        (or back to diffusers'); the token refiner's attention, over the replicated text, is left as it is."""
        for block in (*transformer.transformer_blocks, *transformer.single_transformer_blocks):
            block.attn.set_processor(UlyssesHunyuanVideoAttnProcessor(self.sp_state) if enabled
                                     else HunyuanVideoAttnProcessor2_0())


class UlyssesHunyuanVideoAttnProcessor(HunyuanVideoAttnProcessor2_0):
    """HunyuanVideo's joint video-text attention over video tokens split across a sequence-parallel group.

    As ``HunyuanVideoAttnProcessor2_0`` does: queries, keys and values of this rank's video tokens are projected,
    normalised per head and rotated (the rotary rows of its tokens: the plan splits the tables), those of the
    (replicated) text by the block's text projections (``add_q_proj``..., dual-stream) or by the same ones
    (single-stream) and not rotated; :func:`~osctl.families.ulysses_attention.ulysses_joint_attention` attends
    over ``[video; text]`` with the transformer's mask (the keys of the text's padding masked out, as diffusers
    builds it for the whole sequence), and the parts go through ``to_out`` and ``to_add_out`` where the block
    has them (the single-stream block projects after its MLP). Without a group: diffusers' processor unchanged.
    """

    def __init__(self, state: SequenceParallelState) -> None:
        super().__init__()
        self.state = state

    def __call__(self, attn: Any, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None,
                 image_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.state.active:
            return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb)
        if encoder_hidden_states is None:
            raise ValueError("sequence-parallel HunyuanVideo attention needs the text (its blocks always pass it).")
        video_q, video_k, video_v = _heads(attn, hidden_states, text=False)
        if image_rotary_emb is not None:
            video_q = apply_rotary_emb(video_q, image_rotary_emb, sequence_dim=1)
            video_k = apply_rotary_emb(video_k, image_rotary_emb, sequence_dim=1)
        video_out, text_out = ulysses_joint_attention(
            (video_q, video_k, video_v), _heads(attn, encoder_hidden_states, text=True), self.state,
            text_first=False, attention_mask=attention_mask, backend=self._attention_backend)
        if getattr(attn, "to_out", None) is not None:
            video_out = attn.to_out[1](attn.to_out[0](video_out))
        if getattr(attn, "to_add_out", None) is not None:
            text_out = attn.to_add_out(text_out)
        return video_out, text_out


def _heads(attn: Any, x: torch.Tensor, *, text: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``B x S x H x D`` queries, keys (normalised per head) and values of tokens ``x``: the text's own projections
    when ``text`` and the block has them (dual-stream), else the video's (single-stream blocks share them)."""
    added = text and attn.add_q_proj is not None
    projections = (attn.add_q_proj, attn.add_k_proj, attn.add_v_proj) if added else (attn.to_q, attn.to_k, attn.to_v)
    q, k, v = (proj(x).unflatten(2, (attn.heads, -1)) for proj in projections)
    norm_q, norm_k = (attn.norm_added_q, attn.norm_added_k) if added else (attn.norm_q, attn.norm_k)
    if norm_q is not None:
        q = norm_q(q)
    if norm_k is not None:
        k = norm_k(k)
    return q, k, v
