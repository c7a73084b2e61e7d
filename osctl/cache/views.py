"""Which frames of a sample a cache stores, and which stored draw a training step takes.

The loader picks a sample's frames with the ticket's ``random.Random`` (:func:`osctl.data.stream.sampler.sample_rng`):
a temporal crop when the clip has more candidate frames than the bucket needs, nothing random
otherwise (images, clips that fit exactly). The cache asks the loader's own frame choice
(:meth:`osctl.data.stream.dataset.SampleDataset.frame_indices`) with a recording generator to tell the two apart:

- a **deterministic** sample stores one view, the frames the loader always reads;
- a **random** sample stores ``views`` draws, view ``v`` read with :func:`view_rng` ``(seed, sample, v)``;
  a training read takes view :func:`view_choice`, a hash of its ticket's generator state (so it depends
  on the seed, epoch, position and retry) that draws nothing from it: the caption choice and CFG
  dropout that follow stay exactly the loader's.
"""

from __future__ import annotations

import hashlib
import random
from typing import Any

import numpy as np

_VIEW_TAG = 0x56494557  # "VIEW": keeps these streams apart from the sampler's


class RecordingRandom(random.Random):
    """A ``random.Random`` that remembers whether anything was drawn from it."""

    def __init__(self, seed: int = 0) -> None:
        self.used = False
        super().__init__(seed)

    def random(self) -> float:
        self.used = True
        return super().random()

    def getrandbits(self, k: int) -> int:
        self.used = True
        return super().getrandbits(k)


def frames_are_random(dataset: Any, sample: int) -> bool:
    """Whether the loader's frame choice for ``sample`` depends on its generator (a frame-count refusal:
    False, the read reports it)."""
    rng = RecordingRandom()
    try:
        dataset.frame_indices(sample, rng)
    except Exception:  # the read itself reports the problem as bad media
        return False
    return rng.used


def _words(*values: int) -> list[int]:
    out: list[int] = []
    for value in values:
        value = int(value) & ((1 << 64) - 1)
        out += [value & 0xFFFFFFFF, value >> 32]
    return out


def view_rng(seed: int, sample: int, view: int) -> random.Random:
    """The generator the loader's read of ``sample``'s stored view ``view`` uses (independent of the epoch)."""
    state = np.random.SeedSequence([*_words(seed, sample, view), _VIEW_TAG]).generate_state(4, np.uint32)
    return random.Random(int.from_bytes(state.tobytes(), "little"))


def view_choice(rng: random.Random, views: int) -> int:
    """The stored view a training read takes, from the state of its ticket's generator ``rng`` (a hash of the
    state: nothing is drawn, so the caption choice and CFG dropout that follow are the loader's own)."""
    if views <= 1:
        return 0
    state = np.asarray(rng.getstate()[1], dtype=np.uint64)
    digest = hashlib.blake2b(state.tobytes(), digest_size=8, person=b"osctl-view").digest()
    return int.from_bytes(digest, "little") % views
