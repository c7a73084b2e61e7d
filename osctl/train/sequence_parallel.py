"""One training micro-step under Ulysses sequence parallelism: who holds which slice, and the loss weight.

Every rank of a sequence-parallel (SP) group has the same batch, timesteps and noise. Each runs the
model on its contiguous slice of the latent frames and of the text tokens (the model's attention
swaps sequence for heads with all-to-alls, so each rank's output slice equals that slice of the
full output) and computes the loss on its slice.

Loss weight. Let a data-parallel step have ``D = world / sp`` groups, group ``g`` with full-sample
loss ``L_g = sum_s (n_gs / N_g) * l_gs``, where ``l_gs`` is the loss on slice ``s`` (a mean over its
``n_gs`` valid latent elements) and ``N_g = sum_s n_gs``. The target gradient is the data-parallel
mean ``(1/D) sum_g grad L_g``. The model's SP backward leaves each rank with a part of the gradient
that, summed over the group, is the gradient of the sum of the group's rank losses; DDP, FSDP and
DeepSpeed then average over all ``world = D * sp`` ranks. Rank ``(g, s)`` therefore back-propagates
``sp * (n_gs / N_g) * l_gs``:

    (1/world) sum_g sum_s grad[sp (n_gs/N_g) l_gs] = (1/D) sum_g grad L_g.

The same weighted value, averaged over all ranks, is the data-parallel mean loss, so it is also
the number logged. A batch with fewer latent frames than ``sp`` (images: one frame) runs without SP
on every rank of the group: each computes the full loss with weight 1, and the world mean again
gives ``(1/D) sum_g grad L_g``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch

from osctl.parallel import ulysses


@dataclass(frozen=True)
class SequenceShards:
    """This rank's slice of one batch: latent frames ``time_sizes`` and text tokens ``text_sizes`` per rank."""

    group: Any
    size: int
    rank: int
    time_sizes: list[int]
    text_sizes: list[int]

    @classmethod
    def for_batch(cls, group: Any, frames: int, text_len: int) -> SequenceShards | None:
        """The slices for a batch of ``frames`` latent frames and ``text_len`` tokens, or None when the
        batch runs without sequence parallelism (no group, or fewer frames than ranks)."""
        size = ulysses.group_size(group)
        if size == 1 or frames < size:
            return None
        return cls(group, size, ulysses.group_rank(group), ulysses.shard_sizes(frames, size),
                   ulysses.shard_sizes(text_len, size))

    def time(self, x: torch.Tensor, dim: int = 2) -> torch.Tensor:
        """This rank's frames of ``x`` (``dim`` is the time axis: 2 for latents, 1 for ``B x T x H x W`` masks)."""
        return ulysses.split_along_dim(x, dim, self.group, self.time_sizes)

    def text(self, x: torch.Tensor, dim: int = 2) -> torch.Tensor:
        """This rank's text tokens of ``x`` (``B x 1 x L x D`` states or ``B x 1 x L`` masks)."""
        return ulysses.split_along_dim(x, dim, self.group, self.text_sizes)

    def model_inputs(self, noisy: torch.Tensor, text: torch.Tensor, latent_mask: torch.Tensor,
                     text_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """This rank's slices of the model inputs: latents ``B x C x T x H x W``, text states ``B x 1 x L x D``,
        latent mask ``B x T x H x W`` and text mask ``B x 1 x L``."""
        return self.time(noisy), self.text(text), self.time(latent_mask, 1), self.text(text_mask)

    def noised(self, batch: Any) -> Any:
        """The objective's noised batch cut to this rank's frames (timesteps and per-sample values kept)."""
        cut = {f.name: self.time(getattr(batch, f.name)) if f.name != "timesteps" else batch.timesteps
               for f in dataclasses.fields(batch)}
        local = type(batch)(**cut)
        for name, value in vars(batch).items():  # extras such as flow matching's per-sample sigmas
            if not hasattr(local, name):
                setattr(local, name, value)
        return local

    def loss(self, objective: Any, prediction: torch.Tensor, batch: Any, latent_mask: torch.Tensor | None) -> torch.Tensor:
        """``sp x (valid elements here / valid elements in the batch) x`` the loss on this rank's slice.

        A slice without valid elements contributes zero but still back-propagates through the model,
        because the backward all-to-alls need every rank of the group.
        """
        local_mask = self.time(latent_mask, 1) if latent_mask is not None else None
        if latent_mask is None:
            share = self.time_sizes[self.rank] / sum(self.time_sizes)
        else:
            share = float(local_mask.float().sum()) / max(float(latent_mask.float().sum()), 1.0)
        if share == 0.0:
            return prediction.float().sum() * 0.0
        return objective.loss(prediction, self.noised(batch), local_mask) * (self.size * share)
