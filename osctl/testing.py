"""Small real pieces for testing osctl and its plugins: a tiny recipe and an in-memory, resumable batch source.

Used by osctl's own tests and benchmarks, and available to plugin authors who want to run a training
step of their component in seconds on a CPU::

    from osctl.testing import SyntheticClips, write_tiny_recipe
    from osctl.train.run import TrainOptions, setup_training

    recipe = write_tiny_recipe(tmp, tmp / "out", tmp / "cache")     # the built-in tiny model, pixel AE, tiny T5
    ...
    parts = setup_training(checked, registry, TrainOptions(data_source=SyntheticClips(encoder.tokenize)))

The recipe names built-in components (``opensora_v1_3``, ``pixel``, ``tiny_t5``) by name only; nothing
here imports a plugin.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

TINY_RECIPE = """
model:
  name: opensora_v1_3
  preset: tiny
  in_channels: 48
  out_channels: 48
autoencoder:
  name: pixel
  spatial_stride: 4
  temporal_stride: 1
text_encoder:
  name: tiny_t5
  d_model: 32
  max_length: 16
  cache_dir: {cache}
data:
  num_frames: 5
  hw_stride: 8
  max_height: 16
  max_width: 16
diffusion:
  prediction_type: v_prediction
  rescale_betas_zero_snr: true
  snr_gamma: 5.0
train:
  output_dir: {out}
  max_steps: 6
  train_batch_size: 2
  learning_rate: 1.0e-3
  mixed_precision: fp32
  checkpointing_steps: 3
  log_interval: 1
  ema_decay: 0.9
  seed: 7
parallel:
  strategy: single
sample:
  num_frames: 5
  height: 16
  width: 16
  num_sampling_steps: 3
  dtype: fp32
"""


def write_tiny_recipe(folder: Path, out: Path, cache: Path) -> Path:
    """A recipe for a ~0.2 M parameter model on 5 x 16 x 16 clips that trains in seconds on CPU."""
    path = folder / "tiny.yaml"
    path.write_text(TINY_RECIPE.format(out=out, cache=cache))
    return path


class SyntheticClips:
    """A fixed set of coloured clips with captions, served in a seeded order, epoch after epoch.

    The position (epoch, batches consumed) is the whole state, so a resumed stream continues with
    exactly the batches an uninterrupted one would have produced. With ``dp_size`` replicas, each
    global batch of ``batch_size * dp_size`` clips is cut into ``dp_size`` consecutive parts and
    replica ``dp_rank`` gets its part, so one process with ``dp_size=1`` and the doubled batch sees
    the union of what the replicas see, in the same order.

    ``invalid_tail`` (cycled over clips) marks that many trailing latent frames of each clip as padding
    in a ``latent_mask`` of shape ``latent_shape`` (``T_lat x H_lat x W_lat``).
    """

    def __init__(self, tokenize: Any, *, num_clips: int = 8, batch_size: int = 2, frames: int = 5, size: int = 16,
                 seed: int = 0, dp_rank: int = 0, dp_size: int = 1, invalid_tail: list[int] | None = None,
                 latent_shape: tuple[int, int, int] | None = None) -> None:
        g = torch.Generator().manual_seed(seed)
        colours = torch.rand(num_clips, 3, generator=g) * 2 - 1
        self.videos = colours[:, :, None, None, None].expand(num_clips, 3, frames, size, size).clone()
        self.videos += 0.1 * torch.randn(self.videos.shape, generator=g)
        self.captions = [f"clip number {i}" for i in range(num_clips)]
        self.tokens = tokenize(self.captions)
        self.latent_mask = None
        if invalid_tail:
            assert latent_shape is not None, "invalid_tail needs latent_shape"
            self.latent_mask = torch.ones(num_clips, *latent_shape)
            for i in range(num_clips):
                tail = invalid_tail[i % len(invalid_tail)]
                if tail:
                    self.latent_mask[i, -tail:] = 0
        self.batch_size = batch_size
        self.dp_rank, self.dp_size = dp_rank, dp_size
        self.seed = seed
        self.epoch = 0
        self.position = 0
        self.steps_per_epoch = num_clips // (batch_size * dp_size)

    def _order(self, epoch: int) -> torch.Tensor:
        return torch.randperm(len(self.captions), generator=torch.Generator().manual_seed(self.seed + epoch))

    def __iter__(self):
        while True:
            order = self._order(self.epoch)
            while self.position < self.steps_per_epoch:
                start = (self.position * self.dp_size + self.dp_rank) * self.batch_size
                idx = order[start:start + self.batch_size]
                self.position += 1
                batch = {"pixel_values": self.videos[idx], "input_ids": self.tokens["input_ids"][idx],
                         "attention_mask": self.tokens["attention_mask"][idx]}
                if self.latent_mask is not None:
                    batch["latent_mask"] = self.latent_mask[idx]
                yield batch
            self.epoch += 1
            self.position = 0

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
