"""The CogVideoX transformer as an osctl model, and the attention processor that runs it sequence-parallel.

:class:`CogVideoXTransformers` says four things about CogVideoX on top of
:class:`osctl.families.transformers.DiffusersTransformers`:

- the call: ``CogVideoXTransformer3DModel`` takes latents frames-first (``B x T x C x H x W``) and, for the 5B
  and 1.5 models, 3D rotary tables that depend on the latent size; they are computed here exactly as
  ``CogVideoXPipeline._prepare_rotary_positional_embeddings`` does (a crop of the ``sample_height x
  sample_width`` base grid for 1.0, a slice of it for 1.5);
- CogVideoX 1.5's 2x2x2 patch needs an even number of latent frames: an odd one gets the first latent frame
  repeated in front and its prediction dropped, as CogVideo's own fine-tuning code pads (``CogVideoXPipeline``
  instead samples one more noise frame and drops it at decode: both agree whenever the frames are even);
- noise: initial latents are drawn frames-first, like the pipeline's (:meth:`CogVideoXTransformers.initial_noise`;
  the ``CogVideoXDPM`` sampler steps frames-first too), so a seed gives the pipeline's video;
- text: the encoder's states as they are (CogVideoX's T5 runs without a mask, so the padding tokens' states are
  part of the condition; ``text_encoder.attend_padding: true``);
- sequence parallelism: CogVideoX has no context-parallel plan in diffusers. Its blocks keep the text and the
  video tokens apart and join them only inside attention, so the video tokens are split at the first block's
  input and gathered at the output projection, the (replicated) text stays whole on every rank, and
  :class:`UlyssesCogVideoXAttnProcessor` does joint attention over the gathered video tokens and the text.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers.models.attention_processor import CogVideoXAttnProcessor2_0
from diffusers.models.embeddings import apply_rotary_emb, get_3d_rotary_pos_embed
from torch import nn

from osctl.families.transformers import DiffusersTransformers, GatherOutput, SplitInput
from osctl.families.ulysses_attention import SequenceParallelState, ulysses_joint_attention


class CogVideoXTransformers(DiffusersTransformers):
    """One ``CogVideoXTransformer3DModel`` behind osctl's model call (see the module docstring)."""

    sequence_parallel_plan = (
        SplitInput("transformer_blocks.0", arg=0, keyword="hidden_states", dim=1),  # video tokens B x S x C
        GatherOutput("proj_out", dim=1),                                            # B x S_local x C_out
    )

    def prepare_text(self, text: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """The encoder's states unchanged; a model with sine-cosine positions (2B) needs exactly its
        ``max_text_seq_length`` tokens (its position table starts after them)."""
        config = self.config
        if not config.use_rotary_positional_embeddings and text.shape[1] != config.max_text_seq_length:
            raise ValueError(f"this CogVideoX model's positions need {config.max_text_seq_length} text tokens, got "
                             f"{text.shape[1]}; set text_encoder.max_length: {config.max_text_seq_length}.")
        return text

    def initial_noise(self, shape: tuple[int, ...], generator: torch.Generator | None) -> torch.Tensor:
        """Gaussian latents ``B x C x T x H x W`` drawn frames-first (``B x T x C x H x W``), as
        ``CogVideoXPipeline.prepare_latents`` draws them: a seed gives the pipeline's initial noise."""
        batch, channels, frames, *space = shape
        drawn = torch.randn((batch, frames, channels, *space), generator=generator, dtype=torch.float32)
        return drawn.transpose(1, 2)

    def call_transformer(self, transformer: nn.Module, latents: torch.Tensor, timesteps: torch.Tensor,
                         text: torch.Tensor) -> torch.Tensor:
        """``CogVideoXTransformer3DModel``'s prediction (v) for full latents ``B x C x T x H x W``."""
        x = latents.transpose(1, 2)  # B x T x C x H x W
        frames = x.shape[1]
        patch_t = transformer.config.patch_size_t
        extra = (-frames) % patch_t if patch_t else 0
        if extra:
            x = torch.cat([x[:, :1].expand(-1, extra, -1, -1, -1), x], dim=1)
        rotary = rotary_embedding(transformer.config, x.shape[1], x.shape[3], x.shape[4], x.device)
        out = transformer(hidden_states=x, encoder_hidden_states=text, timestep=timesteps, image_rotary_emb=rotary,
                          return_dict=False)[0]
        return out[:, extra:].transpose(1, 2)

    def sequence_parallel_attention(self, transformer: nn.Module, enabled: bool) -> None:
        """Every block's attention through :class:`UlyssesCogVideoXAttnProcessor` (or back to diffusers')."""
        for block in transformer.transformer_blocks:
            block.attn1.set_processor(UlyssesCogVideoXAttnProcessor(self.sp_state) if enabled
                                      else CogVideoXAttnProcessor2_0())


def rotary_embedding(config: Any, frames: int, height: int, width: int,
                     device: torch.device) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The 3D rotary tables (cos, sin: ``tokens x head_dim``) of latents ``frames x height x width``, as
    ``CogVideoXPipeline`` computes them; None for a model with sine-cosine positions."""
    if not config.use_rotary_positional_embeddings:
        return None
    from diffusers.pipelines.cogvideo.pipeline_cogvideox import get_resize_crop_region_for_grid

    p, p_t = config.patch_size, config.patch_size_t
    grid = (height // p, width // p)
    base_height, base_width = config.sample_height // p, config.sample_width // p
    if p_t is None:
        crops = get_resize_crop_region_for_grid(grid, base_width, base_height)
        return get_3d_rotary_pos_embed(embed_dim=config.attention_head_dim, crops_coords=crops, grid_size=grid,
                                       temporal_size=frames, device=device)
    return get_3d_rotary_pos_embed(embed_dim=config.attention_head_dim, crops_coords=None, grid_size=grid,
                                   temporal_size=(frames + p_t - 1) // p_t, grid_type="slice",
                                   max_size=(base_height, base_width), device=device)


class UlyssesCogVideoXAttnProcessor(CogVideoXAttnProcessor2_0):
    """CogVideoX's joint text-video attention over video tokens split across a sequence-parallel group.

    Queries, keys and values of this rank's video tokens are projected, normalised and rotated (the rotary
    rows of its tokens), those of the (replicated) text projected and normalised, and
    :func:`~osctl.families.ulysses_attention.ulysses_joint_attention` attends over ``[text; video]`` as
    diffusers does (every video token of ``heads / sp`` heads by an all-to-all, the text's same heads taken
    locally; through diffusers' attention dispatcher, whose default native backend is the
    ``scaled_dot_product_attention`` diffusers' processor calls); both parts go through the output projection.
    Without a group: diffusers' processor unchanged.
    """

    def __init__(self, state: SequenceParallelState) -> None:
        super().__init__()
        self.state = state

    def __call__(self, attn: Any, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor,
                 attention_mask: torch.Tensor | None = None,
                 image_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        state = self.state
        if not state.active:
            return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb)
        if attention_mask is not None:
            raise ValueError("sequence-parallel CogVideoX attention takes no attention mask (the pipeline passes none).")
        heads = attn.heads

        def project(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            """``B x S x H x D`` queries, keys (normalised per head) and values of tokens ``x``."""
            q, k, v = (proj(x).unflatten(2, (heads, -1)) for proj in (attn.to_q, attn.to_k, attn.to_v))
            if attn.norm_q is not None:
                q = attn.norm_q(q)
            if attn.norm_k is not None:
                k = attn.norm_k(k)
            return q, k, v

        video_q, video_k, video_v = project(hidden_states)
        if image_rotary_emb is not None:
            start = sum(state.token_sizes[: state.rank])
            local = tuple(t.narrow(0, start, hidden_states.shape[1]) for t in image_rotary_emb)
            video_q = apply_rotary_emb(video_q.transpose(1, 2), local).transpose(1, 2)
            video_k = apply_rotary_emb(video_k.transpose(1, 2), local).transpose(1, 2)
        video_out, text_out = ulysses_joint_attention((video_q, video_k, video_v), project(encoder_hidden_states),
                                                      state, text_first=True)
        video_out, text_out = (attn.to_out[1](attn.to_out[0](x.type_as(hidden_states))) for x in (video_out, text_out))
        return video_out, text_out
