"""Open-Sora-Plan v1.3 text-to-video diffusion transformer (``OpenSoraT2V_v1_3``) with Skiparse attention.

A re-implementation of the reference model (Open-Sora-Plan tag v1.3.1) that loads its released
diffusers folders unchanged: the constructor arguments are the reference config keys and the
parameter names are the reference's. Structure (spec §6.1-6.3):

- per-frame 2x2 patch embedding, tokens in (t, h, w) order; RoPE-3D on self-attention Q/K only;
- PixArt-alpha AdaLN-single timestep conditioning (one shared 6*D vector plus a per-block table);
- per block: gated self-attention (AdaLN), ungated cross-attention on the projected text (no norm),
  gated tanh-GELU FFN (AdaLN); final AdaLN (2*D table) + linear + unpatchify;
- Skiparse ("skip-sparse") self-attention with ratio k on a configurable set of blocks: even block
  index = single skip (token j joins sub-sequence j mod k), odd = group skip (j = n*k^2 + m*k + r
  joins sub-sequence m); sequences are zero-padded to a multiple of k^2 and the padded keys get a
  -9980 bias.

Additions over the reference: any ``sparse_n >= 1`` and an explicit ``sparse_blocks`` list (the
reference hard-codes k in {1, 4} and blocks 2..29, which stay the default layout), per-block gradient
checkpointing through diffusers' ``enable_gradient_checkpointing()``, an Ulysses sequence-parallel
hook (``set_sequence_parallel(group)``), construction on the meta device, an optional learned
absolute position table (``abs_pos_embed``) and a switch to leave RoPE out (``rope=False``, which
needs that table: positions then come from it alone). Cross-attention in
Skiparse blocks skips the reference's query regrouping (each query sees every text token either way,
so the result is the same) and never replicates the text keys/values k times.

Internally tokens are batch-first (``B x S x D``); the reference keeps them sequence-first, which
changes nothing numerically.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.attention import FeedForward
from diffusers.models.embeddings import PixArtAlphaTextProjection
from diffusers.models.modeling_outputs import Transformer2DModelOutput
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.normalization import AdaLayerNormSingle
from torch import nn

from osctl.parallel import ulysses
from osctl_builtin.models.osp_v13.presets import check_architecture, resolve_sparse_blocks

#: additive attention bias of a masked latent token / text token (reference values)
MASK_BIAS = -10000.0
#: additive bias of the zero tokens Skiparse appends to reach a multiple of k^2 (reference value)
SKIPARSE_PAD_BIAS = -9980.0
ROPE_BASE = 10000.0
#: standard deviation of the initial learned absolute position table (``abs_pos_embed: learned``)
ABS_POS_INIT_STD = 0.5


# --------------------------------------------------------------------------------------------------
# Skiparse rearrangement
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SkiparseMode:
    """How a Skiparse block regroups tokens: ratio ``k`` and single (False) or group (True) skip."""

    k: int
    group: bool


def skiparse_pad_len(length: int, k: int) -> int:
    """Number of zero tokens appended so that ``length`` becomes a multiple of ``k * k``."""
    return (-length) % (k * k)


def skiparse_split(x: torch.Tensor, mode: SkiparseMode) -> torch.Tensor:
    """Fold the k sub-sequences into the batch: ``B x S_pad x ...`` -> ``(k*B) x (S_pad/k) x ...``.

    Sub-sequence ``i`` lands at batch rows ``i*B .. i*B+B-1`` (sub-sequence-major, as the reference).
    """
    k = mode.k
    b, s = x.shape[:2]
    rest = x.shape[2:]
    if not mode.group:
        # token j = g*k + r -> sub-sequence r, position g
        x = x.reshape(b, s // k, k, *rest).movedim(2, 0)  # k x B x S/k x ...
    else:
        # token j = n*k^2 + m*k + r -> sub-sequence m, position n*k + r
        x = x.reshape(b, s // (k * k), k, k, *rest).movedim(2, 0)  # k x B x S/k^2 x k x ...
    return x.reshape(k * b, s // k, *rest)


def skiparse_merge(x: torch.Tensor, mode: SkiparseMode, batch: int) -> torch.Tensor:
    """Inverse of :func:`skiparse_split`: ``(k*B) x (S_pad/k) x ...`` -> ``B x S_pad x ...``."""
    k = mode.k
    sk = x.shape[1]
    rest = x.shape[2:]
    if not mode.group:
        x = x.reshape(k, batch, sk, *rest).movedim(0, 2)  # B x S/k x k x ...
    else:
        x = x.reshape(k, batch, sk // k, k, *rest).movedim(0, 2)  # B x S/k^2 x k(m) x k(r) x ...
    return x.reshape(batch, sk * k, *rest)


# --------------------------------------------------------------------------------------------------
# RoPE-3D
# --------------------------------------------------------------------------------------------------


def rope_3d_tables(
    frames: int, height: int, width: int, head_dim: int, scales: tuple[float, float, float], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables (``S x head_dim``, float32) for a ``frames x height x width`` token grid.

    The head is split into three equal parts for t, y and x; each part gets standard rotate-half RoPE
    with base 10000 over the position index divided by its interpolation scale.
    """
    part = head_dim // 3
    inv_freq = 1.0 / (ROPE_BASE ** (torch.arange(0, part, 2, device=device, dtype=torch.float32) / part))

    def axis(n: int, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
        pos = torch.arange(n, device=device, dtype=torch.float32) / scale
        freqs = torch.outer(pos, inv_freq)
        freqs = torch.cat((freqs, freqs), dim=-1)  # n x part
        return freqs.cos(), freqs.sin()

    (ct, st), (cy, sy), (cx, sx) = axis(frames, scales[0]), axis(height, scales[1]), axis(width, scales[2])
    grid = (frames, height, width, part)

    def full(t: torch.Tensor, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        parts = (t[:, None, None].expand(grid), y[None, :, None].expand(grid), x[None, None, :].expand(grid))
        return torch.cat(parts, dim=-1).reshape(frames * height * width, 3 * part)  # S x head_dim

    return full(ct, cy, cx), full(st, sy, sx)


def apply_rope_3d(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` (``B x S x heads x head_dim``) by the RoPE-3D tables; math in float32, dtype kept."""
    xf = x.float()
    half = x.shape[-1] // 6
    parts = xf.unflatten(-1, (3, 2, half))  # B x S x h x 3 x 2 x half
    rotated = torch.stack((-parts[..., 1, :], parts[..., 0, :]), dim=-2).flatten(-3)  # per-part rotate-half
    out = xf * cos[None, :, None, :] + rotated * sin[None, :, None, :]
    return out.to(x.dtype)


# --------------------------------------------------------------------------------------------------
# Layers
# --------------------------------------------------------------------------------------------------


class _SequenceParallelHandle:
    """Holds the process group; shared (not copied) by ``copy.deepcopy`` so EMA copies keep working."""

    def __init__(self, group: Any = None) -> None:
        self.group = group

    def __deepcopy__(self, memo: dict) -> _SequenceParallelHandle:
        return self


@dataclass
class _ForwardContext:
    """Per-forward tensors shared by every block (rotary tables, attention biases, SP layout)."""

    cos: torch.Tensor | None  # S x head_dim (float32, global positions); None with ``rope=False``
    sin: torch.Tensor | None
    self_bias: dict[SkiparseMode | None, torch.Tensor | None]  # per attention layout: B' x 1 x 1 x S'
    text_bias: torch.Tensor | None  # B x 1 x 1 x L
    group: Any = None  # sequence-parallel group, None when off
    seq_sizes: list[int] | None = None  # video tokens held by each rank
    text_sizes: list[int] | None = None  # text tokens held by each rank


class PatchEmbed2D(nn.Module):
    """Per-frame patchify: a Conv2d with kernel = stride = ``patch_size`` applied to every latent frame."""

    def __init__(self, patch_size: int, in_channels: int, embed_dim: int, bias: bool = True) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, embed_dim, kernel_size=patch_size, stride=patch_size, bias=bias)

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        """``B x C x T x H x W`` latents -> ``B x (T*h*w) x D`` tokens in (t, h, w) order."""
        b, c, t, hh, ww = latent.shape
        x = latent.transpose(1, 2).reshape(b * t, c, hh, ww)  # (B*T) x C x H x W
        x = self.proj(x)  # (B*T) x D x h x w
        x = x.reshape(b, t, x.shape[1], -1).permute(0, 1, 3, 2)  # B x T x (h*w) x D
        return x.reshape(b, -1, x.shape[-1])


class OSPAttention(nn.Module):
    """Multi-head attention with the reference parameter names (``to_q/to_k/to_v/to_out.0``).

    ``self_attention`` runs RoPE-3D and optional Skiparse; ``cross_attention`` attends to text.
    Both go through ``F.scaled_dot_product_attention`` and honour the sequence-parallel context.
    """

    def __init__(self, query_dim: int, heads: int, head_dim: int, kv_dim: int, bias: bool, out_bias: bool,
                 dropout: float) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        inner = heads * head_dim
        self.to_q = nn.Linear(query_dim, inner, bias=bias)
        self.to_k = nn.Linear(kv_dim, inner, bias=bias)
        self.to_v = nn.Linear(kv_dim, inner, bias=bias)
        self.to_out = nn.ModuleList([nn.Linear(inner, query_dim, bias=out_bias), nn.Dropout(dropout)])

    def _project_out(self, out: torch.Tensor) -> torch.Tensor:
        return self.to_out[1](self.to_out[0](out))

    def self_attention(self, x: torch.Tensor, ctx: _ForwardContext, mode: SkiparseMode | None) -> torch.Tensor:
        """Self-attention over all video tokens (``B x S_local x D`` in and out)."""
        b = x.shape[0]
        q = self.to_q(x).unflatten(-1, (self.heads, self.head_dim))  # B x S_loc x H x Dh
        k = self.to_k(x).unflatten(-1, (self.heads, self.head_dim))
        v = self.to_v(x).unflatten(-1, (self.heads, self.head_dim))
        if ctx.group is not None:
            # gather sequence, scatter heads: B x S_loc x 3 x H x Dh -> B x S x 3 x H/sp x Dh
            qkv = ulysses.all_to_all(torch.stack((q, k, v), dim=2), scatter_dim=3, gather_dim=1, group=ctx.group,
                                     gather_sizes=ctx.seq_sizes)
            q, k, v = qkv.unbind(2)
        if ctx.cos is not None and ctx.sin is not None:  # global positions, before any Skiparse regrouping
            q = apply_rope_3d(q, ctx.cos, ctx.sin)
            k = apply_rope_3d(k, ctx.cos, ctx.sin)
        seq = q.shape[1]
        if mode is not None:
            pad = skiparse_pad_len(seq, mode.k)
            if pad:
                q, k, v = (F.pad(t, (0, 0, 0, 0, 0, pad)) for t in (q, k, v))  # B x S_pad x h x Dh
            q, k, v = (skiparse_split(t, mode) for t in (q, k, v))  # (k*B) x S_pad/k x h x Dh
        bias = ctx.self_bias[mode]
        out = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
            attn_mask=None if bias is None else bias.to(q.dtype), dropout_p=0.0,
        ).transpose(1, 2)  # B' x S' x h x Dh
        if mode is not None:
            out = skiparse_merge(out, mode, b)[:, :seq]  # B x S x h x Dh
        if ctx.group is not None:
            # scatter sequence, gather heads: B x S x H/sp x Dh -> B x S_loc x H x Dh
            out = ulysses.all_to_all(out, scatter_dim=1, gather_dim=2, group=ctx.group, scatter_sizes=ctx.seq_sizes)
        return self._project_out(out.flatten(2))

    def cross_attention(self, x: torch.Tensor, text: torch.Tensor, ctx: _ForwardContext) -> torch.Tensor:
        """Video tokens (``B x S_local x D``) attend to the projected text (``B x L_local x D``).

        Skiparse blocks in the reference regroup the queries here too; each query attends to every
        text token either way, so the result is identical and the regrouping is skipped. Under sequence
        parallelism the (small) text keys/values are all-gathered and the local queries keep all heads.
        """
        b, s = x.shape[:2]
        q = self.to_q(x).unflatten(-1, (self.heads, self.head_dim))  # B x S_loc x H x Dh
        kv = torch.stack((self.to_k(text), self.to_v(text)), dim=2)  # B x L_loc x 2 x (H*Dh)
        if ctx.group is not None:
            kv = ulysses.gather_along_dim(kv, 1, ctx.group, sizes=ctx.text_sizes)  # B x L x 2 x (H*Dh)
        k, v = (t.unflatten(-1, (self.heads, self.head_dim)) for t in kv.unbind(2))  # B x L x H x Dh
        bias = ctx.text_bias
        out = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
            attn_mask=None if bias is None else bias.to(q.dtype), dropout_p=0.0,
        ).transpose(1, 2)  # B x S_loc x H x Dh
        return self._project_out(out.reshape(b, s, -1))


class OSPTransformerBlock(nn.Module):
    """One OSP v1.3 block: AdaLN-gated self-attention, plain cross-attention, AdaLN-gated FFN."""

    def __init__(self, dim: int, heads: int, head_dim: int, cross_dim: int, *, dropout: float, activation_fn: str,
                 attention_bias: bool, norm_elementwise_affine: bool, norm_eps: float,
                 skiparse: SkiparseMode | None) -> None:
        super().__init__()
        self.skiparse = skiparse
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps, elementwise_affine=norm_elementwise_affine)
        self.attn1 = OSPAttention(dim, heads, head_dim, dim, attention_bias, True, dropout)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps, elementwise_affine=norm_elementwise_affine)
        self.attn2 = OSPAttention(dim, heads, head_dim, cross_dim, attention_bias, True, dropout)
        self.ff = FeedForward(dim, dropout=dropout, activation_fn=activation_fn, bias=True)
        self.scale_shift_table = nn.Parameter(torch.randn(6, dim) / dim**0.5)

    def forward(self, x: torch.Tensor, text: torch.Tensor, temb6: torch.Tensor, ctx: _ForwardContext) -> torch.Tensor:
        """``x``: ``B x S_local x D`` tokens; ``text``: ``B x L_local x D``; ``temb6``: ``B x 6D``."""
        b = x.shape[0]
        mod = self.scale_shift_table[None] + temb6.reshape(b, 6, -1)  # B x 6 x D
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mod.unsqueeze(2).unbind(1)  # B x 1 x D
        h = self.norm1(x) * (1 + scale_msa) + shift_msa
        x = gate_msa * self.attn1.self_attention(h, ctx, self.skiparse) + x
        x = self.attn2.cross_attention(x, text, ctx) + x
        h = self.norm2(x) * (1 + scale_mlp) + shift_mlp
        return gate_mlp * self.ff(h) + x


# --------------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------------


class OpenSoraT2V_v1_3(ModelMixin, ConfigMixin):  # the reference class name, kept for config.json
    """The OSP v1.3 text-to-video transformer; loads released diffusers folders with ``from_pretrained``.

    Constructor arguments are the reference config keys (defaults build the released 2B/122
    architecture) plus ``sparse_blocks``: explicit Skiparse block indices (default: the reference
    layout, see ``presets.default_sparse_blocks``); even index = single skip, odd = group skip.
    ``sample_size_*`` are informational, ``upcast_attention`` is accepted and ignored (as in the
    reference). Call ``set_sequence_parallel(group)`` to run attention Ulysses-style.
    """

    _supports_gradient_checkpointing = True
    _no_split_modules = ["OSPTransformerBlock"]

    @register_to_config
    def __init__(
        self,
        num_attention_heads: int = 24,
        attention_head_dim: int = 96,
        in_channels: int | None = 8,
        out_channels: int | None = 8,
        num_layers: int = 32,
        dropout: float = 0.0,
        cross_attention_dim: int | None = None,
        attention_bias: bool = True,
        sample_size_h: Any = None,
        sample_size_w: Any = None,
        sample_size_t: Any = None,
        patch_size: int = 2,
        patch_size_t: int = 1,
        activation_fn: str = "gelu-approximate",
        only_cross_attention: bool = False,
        double_self_attention: bool = False,
        upcast_attention: bool = False,
        norm_elementwise_affine: bool = False,
        norm_eps: float = 1e-6,
        caption_channels: int = 4096,
        interpolation_scale_h: float = 1.0,
        interpolation_scale_w: float = 1.0,
        interpolation_scale_t: float = 1.0,
        sparse1d: bool = True,
        sparse_n: int = 4,
        sparse_blocks: list[int] | None = None,
        abs_pos_embed: str | None = None,
        abs_pos_max_size: list[int] | None = None,
        rope: bool = True,
    ) -> None:
        super().__init__()
        check_architecture(dict(
            num_attention_heads=num_attention_heads, attention_head_dim=attention_head_dim, num_layers=num_layers,
            cross_attention_dim=cross_attention_dim, patch_size=patch_size, patch_size_t=patch_size_t,
            sparse1d=sparse1d, sparse_n=sparse_n, sparse_blocks=sparse_blocks, caption_channels=caption_channels,
            only_cross_attention=only_cross_attention, double_self_attention=double_self_attention,
            abs_pos_embed=abs_pos_embed, abs_pos_max_size=abs_pos_max_size, rope=rope,
        ))
        if in_channels is None:
            raise ValueError("in_channels is required: set it to the autoencoder's latent channels (8 for WF-VAE D8).")
        dim = num_attention_heads * attention_head_dim
        self.hidden_size = dim
        self.out_channels = in_channels if out_channels is None else out_channels
        self.gradient_checkpointing = False
        self._sp = _SequenceParallelHandle(None)

        sparse = set(resolve_sparse_blocks(num_layers, sparse1d, sparse_blocks))
        self.sparse_block_indices: list[int] = sorted(sparse)

        self.caption_projection = PixArtAlphaTextProjection(in_features=caption_channels, hidden_size=dim)
        self.pos_embed = PatchEmbed2D(patch_size, in_channels, dim)
        if abs_pos_embed is not None:
            # osctl extension (off in v1.3): one learned vector per (frame, row, column) token position,
            # drawn about as large as the patch embedding's output so that tokens can tell where they are
            t_max, h_max, w_max = (int(v) for v in abs_pos_max_size or ())
            self.abs_pos_table = nn.Parameter(torch.randn(t_max, h_max, w_max, dim) * ABS_POS_INIT_STD)
        self.transformer_blocks = nn.ModuleList([
            OSPTransformerBlock(
                dim, num_attention_heads, attention_head_dim, dim, dropout=dropout, activation_fn=activation_fn,
                attention_bias=attention_bias, norm_elementwise_affine=norm_elementwise_affine, norm_eps=norm_eps,
                skiparse=SkiparseMode(int(sparse_n), group=i % 2 == 1) if i in sparse else None,
            )
            for i in range(num_layers)
        ])
        self.norm_out = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.scale_shift_table = nn.Parameter(torch.randn(2, dim) / dim**0.5)
        self.proj_out = nn.Linear(dim, patch_size_t * patch_size * patch_size * self.out_channels)
        self.adaln_single = AdaLayerNormSingle(dim)

    # ---- sequence parallelism -------------------------------------------------------------------

    def set_sequence_parallel(self, group: Any) -> None:
        """Run attention Ulysses-style over ``group`` (a torch.distributed process group); None turns it off.

        With a group of ``sp`` ranks each rank passes its own contiguous slice of the latent time axis
        (``B x C x T_rank x H x W``, rank order = time order; uneven slices are allowed) and its own
        contiguous slice of the text tokens (``B x 1 x L_rank x C_text``); the output is the rank's
        slice. Masks may be given for the rank's slice or in full. Timesteps must be equal on all
        ranks of the group, and parameter gradients must be summed over the group (e.g. by DDP).
        """
        world = ulysses.group_size(group)
        if world > 1 and self.config.num_attention_heads % world:
            raise ValueError(
                f"num_attention_heads={self.config.num_attention_heads} cannot be split over a sequence-parallel "
                f"group of {world} ranks; use a group size that divides the head count."
            )
        self._sp = _SequenceParallelHandle(group if world > 1 else None)

    @property
    def sequence_parallel_group(self) -> Any:
        """The process group attention is parallelised over, or None."""
        return self._sp.group

    # ---- forward --------------------------------------------------------------------------------

    def forward(
        self,
        hidden_states: torch.Tensor,
        timestep: torch.Tensor | float | int | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        return_dict: bool = True,
        **kwargs: Any,
    ) -> Any:
        """Predict from noisy latents ``B x C x T x H x W`` (see ``osctl.protocols.DiffusionModel``).

        ``timestep``: ``B`` (or a scalar); ``encoder_hidden_states``: ``B x 1 x L x C_text`` (or
        ``B x L x C_text``); ``attention_mask``: latent validity ``B x T x H x W`` (1 = valid), or a
        ready additive bias ``B x 1 x S``; ``encoder_attention_mask``: text validity ``B x 1 x L``
        (or ``B x L``). Returns ``(sample,)`` or ``Transformer2DModelOutput``.
        """
        cfg = self.config
        p = cfg.patch_size
        if hidden_states.ndim != 5:
            raise ValueError(f"hidden_states has shape {tuple(hidden_states.shape)}; pass latents B x C x T x H x W.")
        if encoder_hidden_states is None:
            raise ValueError("encoder_hidden_states is required: pass the text-encoder states B x 1 x L x C.")
        b, _, frames, lat_h, lat_w = hidden_states.shape
        if lat_h % p or lat_w % p:
            raise ValueError(
                f"latent size {lat_h}x{lat_w} is not a multiple of patch_size={p}; crop or pad the latents."
            )
        h, w = lat_h // p, lat_w // p
        device, dtype = hidden_states.device, self.dtype
        group = self._sp.group

        # 1. latent tokens: B x C x T x H x W -> B x S_loc x D
        x = self.pos_embed(hidden_states.to(dtype))

        # 2. timestep -> shared 6D modulation (B x 6D) and embedded timestep (B x D)
        temb6, embedded_timestep = self.adaln_single(
            self._timestep_vector(timestep, b, device), None, batch_size=b, hidden_dtype=dtype
        )

        # 3. text -> B x L_loc x D
        if encoder_hidden_states.ndim == 4:
            if encoder_hidden_states.shape[1] != 1:
                raise ValueError(
                    f"encoder_hidden_states has shape {tuple(encoder_hidden_states.shape)}; the second dimension "
                    "must be 1 (B x 1 x L x C)."
                )
            encoder_hidden_states = encoder_hidden_states[:, 0]
        text = self.caption_projection(encoder_hidden_states.to(dtype))

        # 4. layout across sequence-parallel ranks
        text_len = text.shape[1]
        seq_sizes = text_sizes = None
        total_frames, total_text = frames, text_len
        first_frame = 0  # this rank's first latent frame in the whole video
        if group is not None:
            frame_sizes = ulysses.gather_sizes(frames, group, device)
            text_sizes = ulysses.gather_sizes(text_len, group, device)
            if min(frame_sizes) == 0:
                raise ValueError(
                    f"sequence-parallel ranks hold {frame_sizes} latent frames; every rank needs at least one, so "
                    "turn sequence parallelism off for this batch with set_sequence_parallel(None) (as the "
                    "reference does for images)."
                )
            seq_sizes = [f * h * w for f in frame_sizes]
            total_frames, total_text = sum(frame_sizes), sum(text_sizes)
            first_frame = sum(frame_sizes[: ulysses.group_rank(group)])
        seq = total_frames * h * w
        if cfg.abs_pos_embed is not None:
            x = x + self._abs_positions(first_frame, frames, total_frames, h, w).to(x.dtype)

        # 5. masks -> additive biases (float32), full sequence
        with torch.no_grad():
            latent_bias = self._latent_bias(attention_mask, b, frames, total_frames, h, w, seq, seq_sizes, group)
            text_bias = self._text_bias(encoder_attention_mask, b, text_len, total_text, text_sizes, group)
            self_bias: dict[SkiparseMode | None, torch.Tensor | None] = {}
            for block in self.transformer_blocks:
                if block.skiparse not in self_bias:
                    self_bias[block.skiparse] = self._self_bias(latent_bias, block.skiparse, b, seq, device)
        cos, sin = rope_3d_tables(
            total_frames, h, w, cfg.attention_head_dim,
            (cfg.interpolation_scale_t, cfg.interpolation_scale_h, cfg.interpolation_scale_w), device,
        ) if cfg.rope else (None, None)
        ctx = _ForwardContext(cos, sin, self_bias, text_bias, group, seq_sizes, text_sizes)

        # 6. blocks
        for block in self.transformer_blocks:
            if torch.is_grad_enabled() and self.gradient_checkpointing:
                x = self._gradient_checkpointing_func(block, x, text, temb6, ctx)
            else:
                x = block(x, text, temb6, ctx)

        # 7. output: final AdaLN, projection, unpatchify -> B x C_out x T x H x W
        shift, scale = (self.scale_shift_table[None] + embedded_timestep[:, None]).chunk(2, dim=1)  # B x 1 x D
        x = self.norm_out(x) * (1 + scale) + shift
        x = self.proj_out(x)  # B x S_loc x (pt*p*p*C)
        pt, c = cfg.patch_size_t, self.out_channels
        x = x.reshape(b, frames, h, w, pt, p, p, c).permute(0, 7, 1, 4, 2, 5, 3, 6)  # B x C x T x pt x h x p x w x p
        output = x.reshape(b, c, frames * pt, h * p, w * p)
        if not return_dict:
            return (output,)
        return Transformer2DModelOutput(sample=output)

    # ---- helpers ---------------------------------------------------------------------------------

    def _abs_positions(self, first: int, frames: int, total_frames: int, h: int, w: int) -> torch.Tensor:
        """The learned absolute position vectors of this rank's tokens, ``(frames*h*w) x D``."""
        t_max, h_max, w_max = self.abs_pos_table.shape[:3]
        if self.config.abs_pos_embed == "learned_interpolated":
            table = self.abs_pos_table
            if (total_frames, h, w) != (t_max, h_max, w_max):  # T x H x W x D -> 1 x D x T x H x W and back
                table = F.interpolate(table.permute(3, 0, 1, 2)[None], size=(total_frames, h, w), mode="trilinear",
                                      align_corners=True)[0].permute(1, 2, 3, 0)
            return table[first:first + frames].reshape(frames * h * w, -1)
        if total_frames > t_max or h > h_max or w > w_max:
            raise ValueError(
                f"a latent grid of {total_frames}x{h}x{w} tokens (frames x rows x columns) exceeds "
                f"abs_pos_max_size={[t_max, h_max, w_max]}; sample a smaller size or train a model with a larger "
                "abs_pos_max_size."
            )
        return self.abs_pos_table[first:first + frames, :h, :w].reshape(frames * h * w, -1)

    @staticmethod
    def _timestep_vector(timestep: Any, batch: int, device: torch.device) -> torch.Tensor:
        """Timesteps as a length-``batch`` vector (a scalar or a length-1 tensor is broadcast)."""
        if timestep is None:
            raise ValueError("timestep is required: pass one diffusion timestep per sample.")
        t = torch.as_tensor(timestep, device=device)
        if t.ndim == 2 and t.shape[1] == 1:
            t = t[:, 0]
        t = t.reshape(-1)
        if t.shape[0] == 1 and batch > 1:
            t = t.expand(batch)
        if t.shape[0] != batch:
            raise ValueError(f"timestep has {t.shape[0]} values for a batch of {batch}; pass one per sample.")
        return t

    def _latent_bias(self, mask: torch.Tensor | None, b: int, frames: int, total_frames: int, h: int, w: int,
                     seq: int, seq_sizes: list[int] | None, group: Any) -> torch.Tensor | None:
        """Latent validity mask -> additive bias ``B x S`` (max-pooled by the patch, -10000 where invalid)."""
        if mask is None:
            return None
        if mask.ndim == 3:  # already an additive bias B x 1 x S (the reference accepts this too)
            bias = mask.reshape(b, -1).float()
        elif mask.ndim == 4:
            p, pt = self.config.patch_size, self.config.patch_size_t
            pooled = F.max_pool3d(mask.to(self.dtype).unsqueeze(1), kernel_size=(pt, p, p), stride=(pt, p, p))
            bias = (1 - pooled.bool().float()).reshape(b, -1) * MASK_BIAS  # B x (T_m*h*w)
        else:
            raise ValueError(
                f"attention_mask has shape {tuple(mask.shape)}; pass the latent validity mask B x T x H x W."
            )
        if bias.shape[1] == seq:
            return bias
        if group is not None and bias.shape[1] == frames * h * w:
            return ulysses.gather_along_dim(bias, 1, group, sizes=seq_sizes)
        raise ValueError(
            f"attention_mask covers {bias.shape[1]} tokens but the latents have {seq}; pass a mask with the "
            "latents' T x H x W."
        )

    @staticmethod
    def _text_bias(mask: torch.Tensor | None, b: int, text_len: int, total_text: int, text_sizes: list[int] | None,
                   group: Any) -> torch.Tensor | None:
        """Text validity mask (``B x 1 x L`` or ``B x L``) -> additive bias ``B x 1 x 1 x L``."""
        if mask is None:
            return None
        if mask.ndim not in (2, 3):
            raise ValueError(f"encoder_attention_mask has shape {tuple(mask.shape)}; pass the text mask B x 1 x L.")
        bias = (1 - mask.reshape(b, -1).float()) * MASK_BIAS  # B x L_m
        if bias.shape[1] != total_text:
            if group is not None and bias.shape[1] == text_len:
                bias = ulysses.gather_along_dim(bias, 1, group, sizes=text_sizes)
            else:
                raise ValueError(
                    f"encoder_attention_mask has {bias.shape[1]} positions but the text has {total_text} tokens; "
                    "pass one mask value per text token."
                )
        return bias.reshape(b, 1, 1, total_text)

    @staticmethod
    def _self_bias(latent_bias: torch.Tensor | None, mode: SkiparseMode | None, b: int, seq: int,
                   device: torch.device) -> torch.Tensor | None:
        """The self-attention bias in a block's layout: ``B x 1 x 1 x S`` dense, ``(k*B) x 1 x 1 x S_pad/k`` Skiparse."""
        if mode is None:
            return None if latent_bias is None else latent_bias.reshape(b, 1, 1, seq)
        pad = skiparse_pad_len(seq, mode.k)
        if latent_bias is None and pad == 0:
            return None
        bias = latent_bias if latent_bias is not None else torch.zeros(b, seq, device=device)
        if pad:
            bias = F.pad(bias, (0, pad), value=SKIPARSE_PAD_BIAS)  # B x S_pad
        bias = skiparse_split(bias, mode)  # (k*B) x S_pad/k
        return bias.reshape(bias.shape[0], 1, 1, bias.shape[1])
