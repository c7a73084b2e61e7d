"""Ulysses sequence parallelism around a diffusers attention: the state a forward shares, and the two all-to-alls.

Inside a transformer run sequence-parallel, every rank of the group holds a contiguous slice of the token
sequence (``token_sizes``, one entry per rank). Self-attention needs every token: an attention processor
turns its local queries, keys and values ``B x S_local x H x D`` into ``B x S x H/sp x D`` with one
all-to-all (:func:`gather_sequence`), attends, and turns the result back with another
(:func:`scatter_sequence`). Cross-attention to the (replicated) text needs nothing: local queries attend to
all text keys. Joint attention over ``[text; video]`` or ``[video; text]`` in one sequence (CogVideoX,
HunyuanVideo) gathers the video tokens the same way and takes the same heads of the whole text on each rank
(:func:`ulysses_joint_attention`). The all-to-all is osctl's (:mod:`osctl.parallel.ulysses`): autograd-aware, uneven splits
allowed, gloo and NCCL.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from osctl.parallel import ulysses


@dataclass
class SequenceParallelState:
    """What a sequence-parallel forward shares between its split points and its attention processors.

    ``group`` is None when the model runs on one process (every helper is then the identity);
    ``token_sizes`` is set by the first split of the token sequence in each forward.
    """

    group: Any = None
    token_sizes: list[int] = field(default_factory=list)

    @property
    def active(self) -> bool:
        """True when a group of more than one rank is set."""
        return self.group is not None and ulysses.group_size(self.group) > 1

    @property
    def size(self) -> int:
        return ulysses.group_size(self.group)

    @property
    def rank(self) -> int:
        return ulysses.group_rank(self.group)

    def split_sizes(self, total: int) -> list[int]:
        """The per-rank token counts of a sequence of ``total`` tokens (remembered for the gathers that follow)."""
        self.token_sizes = ulysses.shard_sizes(total, self.size)
        return self.token_sizes

    def local_slice(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        """This rank's tokens of the replicated ``x`` along ``dim``.

        A plain ``narrow``: its backward puts this rank's gradient in its own place and zeros elsewhere, so
        the gradients of what comes before the split, summed over the group, are the full gradient (the
        rule every strategy's averaging relies on; see :mod:`osctl.train.sequence_parallel`).
        """
        sizes = self.split_sizes(x.shape[dim])
        return x.narrow(dim, sum(sizes[: self.rank]), sizes[self.rank])

    def gather(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        """Every rank's tokens of ``x`` concatenated along ``dim`` (backward: each rank keeps its slice's gradient,
        summed over the ranks that used it)."""
        return ulysses.gather_along_dim(x.contiguous(), dim, self.group, sizes=self.token_sizes)


def gather_sequence(x: torch.Tensor, state: SequenceParallelState) -> torch.Tensor:
    """``B x S_local x H x D`` -> ``B x S x H/sp x D``: all tokens, this rank's heads."""
    return ulysses.all_to_all(x, scatter_dim=2, gather_dim=1, group=state.group, gather_sizes=state.token_sizes)


def scatter_sequence(x: torch.Tensor, state: SequenceParallelState) -> torch.Tensor:
    """``B x S x H/sp x D`` -> ``B x S_local x H x D``: this rank's tokens, all heads."""
    return ulysses.all_to_all(x, scatter_dim=1, gather_dim=2, group=state.group, scatter_sizes=state.token_sizes)


def ulysses_self_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, state: SequenceParallelState,
                           *, attention_mask: torch.Tensor | None = None, backend: Any = None) -> torch.Tensor:
    """Self-attention over a sequence split across ``state``'s group, from this rank's ``B x S_local x H x D``
    projections (normalised and rotated as the family does): all tokens of ``H/sp`` heads by one all-to-all,
    diffusers' attention there, this rank's tokens of every head back; returns ``B x S_local x H*D``."""
    from diffusers.models.attention_dispatch import dispatch_attention_fn

    query, key, value = (gather_sequence(x, state) for x in (query, key, value))
    out = dispatch_attention_fn(query, key, value, attn_mask=attention_mask, dropout_p=0.0, is_causal=False,
                                backend=backend)
    return scatter_sequence(out, state).flatten(2, 3).to(query.dtype)


def ulysses_joint_attention(video: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
                            text: tuple[torch.Tensor, torch.Tensor, torch.Tensor], state: SequenceParallelState, *,
                            text_first: bool, attention_mask: torch.Tensor | None = None,
                            backend: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Joint attention over the video tokens split across ``state``'s group and the text every rank holds whole.

    ``video``: this rank's queries, keys and values ``B x S_local x H x D`` (normalised and rotated as the family
    does); ``text``: those of the whole text ``B x L x H x D``. One all-to-all gives each rank every video token
    of ``H/sp`` heads; the text's same heads are taken locally; diffusers' attention runs over one sequence in the
    family's order (``[text; video]`` when ``text_first``, else ``[video; text]``, the order ``attention_mask``'s
    keys follow). Returns this rank's video tokens of every head ``B x S_local x H*D`` (a second all-to-all) and
    the whole text ``B x L x H*D``, gathered over the heads: its backward gives the rank that computed each head
    the gradient summed over the group, so the text's projections, summed over the ranks, get the full gradient.
    """
    from diffusers.models.attention_dispatch import dispatch_attention_fn

    video = tuple(gather_sequence(x, state) for x in video)
    heads = video[0].shape[2]
    text = tuple(x.narrow(2, state.rank * heads, heads) for x in text)
    text_length = text[0].shape[1]
    query, key, value = (torch.cat((t, v) if text_first else (v, t), dim=1) for v, t in zip(video, text, strict=True))
    out = dispatch_attention_fn(query, key, value, attn_mask=attention_mask, dropout_p=0.0, is_causal=False,
                                backend=backend)
    video_length = out.shape[1] - text_length
    if text_first:
        text_out, video_out = out.split([text_length, video_length], dim=1)
    else:
        video_out, text_out = out.split([video_length, text_length], dim=1)
    video_out = scatter_sequence(video_out.contiguous(), state)
    text_out = ulysses.gather_along_dim(text_out.contiguous(), 2, state.group)
    return video_out.flatten(2, 3).to(query.dtype), text_out.flatten(2, 3).to(query.dtype)
