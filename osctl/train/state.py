"""Per-rank training state that must survive a resume: step counters and random streams.

Noise and timesteps come from generators owned by the run (never the global RNG), seeded from
``(train.seed, stream)``; their states are saved in every checkpoint, so N steps + resume + N steps
replays the same draws as 2N uninterrupted steps. The stream is the rank itself, except under
sequence parallelism, where all ranks of a group use their data-parallel rank so they draw the
same timesteps and noise for the samples they share.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

import torch

from osctl.train.checkpoint import restore_file


@dataclass
class TrainState:
    """Optimizer-step counter and the random streams of this rank (``stream`` defaults to ``rank``)."""

    seed: int
    rank: int
    step: int = 0
    stream: int | None = None
    noise_generator: torch.Generator = field(init=False)
    timestep_rng: random.Random = field(init=False)

    def __post_init__(self) -> None:
        stream = self.rank if self.stream is None else self.stream
        self.noise_generator = torch.Generator().manual_seed(self.seed * 1000 + stream)
        self.timestep_rng = random.Random(self.seed * 1000 + stream)

    def rng_state(self) -> dict[str, object]:
        """States of every stream (tensors and plain containers only: safe to load with weights_only)."""
        version, internal, gauss = self.timestep_rng.getstate()
        return {
            "noise_generator": self.noise_generator.get_state(),
            "timestep_rng": {"version": version, "internal": list(internal), "gauss": gauss},
            "torch_global": torch.get_rng_state(),
        }

    def load_rng_state(self, state: dict[str, object]) -> None:
        """Restore ``rng_state()``."""
        self.noise_generator.set_state(state["noise_generator"])  # type: ignore[arg-type]
        saved = state["timestep_rng"]
        assert isinstance(saved, dict)
        self.timestep_rng.setstate((saved["version"], tuple(saved["internal"]), saved["gauss"]))
        torch.set_rng_state(state["torch_global"])  # type: ignore[arg-type]

    def save(self, folder: Path) -> None:
        """Write this rank's RNG file ``rng/rank-R.pt``."""
        folder.mkdir(parents=True, exist_ok=True)
        torch.save(self.rng_state(), folder / f"rank-{self.rank}.pt")

    def load(self, folder: Path) -> bool:
        """Read this rank's RNG file (never running code from it); False when the checkpoint has none for this rank."""
        path = folder / f"rank-{self.rank}.pt"
        if not path.is_file():
            return False
        restore_file(path, self.load_rng_state)
        return True
