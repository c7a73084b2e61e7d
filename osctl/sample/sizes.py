"""Video sizes ``osctl sample`` can make, from the recipe's latent geometry (:mod:`osctl.geometry`).

Sizes follow :meth:`~osctl.geometry.LatentGeometry.size_problems` (frames ``k x stride_t + 1``, height and
width multiples of the autoencoder stride x patch size); under sequence parallelism every process also
needs at least one latent frame. ``osctl sample`` checks every video it will make before it builds
anything (the recipe's sizes and each prompt line's overrides); the pipeline checks each call again.
"""

from __future__ import annotations

from osctl.errors import UsageError
from osctl.geometry import LatentGeometry


def check_size(geometry: LatentGeometry, *, where: str = "", num_frames: int | None = None,
               height: int | None = None, width: int | None = None) -> None:
    """Refuse (``UsageError``, exit 2) a video size ``geometry`` cannot represent; ``where`` prefixes the keys
    (``"sample."`` names the recipe keys the flags set)."""
    problems = geometry.size_problems(num_frames=num_frames, height=height, width=width)
    if problems:
        raise UsageError("; ".join(f"{where}{key}: {text}" for key, text in problems) + ".")


def check_sequence_parallel_frames(geometry: LatentGeometry, num_frames: int, world_size: int, *,
                                   where: str = "") -> None:
    """Refuse a video whose latent frames cannot be split over ``world_size`` sequence-parallel processes
    (each needs at least one)."""
    latent = geometry.latent_frames(num_frames)
    if latent < world_size:
        raise UsageError(f"--sp over {world_size} processes needs at least {world_size} latent frames, but "
                         f"{where}num_frames {num_frames} gives {latent} (the autoencoder compresses time "
                         f"{geometry.stride_t}x); sample more frames or use fewer processes.")
