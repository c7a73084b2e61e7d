"""Latent geometry: how pixels become latents and latents become transformer tokens, from one owner.

The autoencoder and the model plugins each declare their half from their configuration alone (no
weights, no network); :func:`latent_geometry` joins them and checks that they fit. The joined
:class:`LatentGeometry` is computed once at recipe check (``CheckedRecipe.geometry``) and passed to
everything that needs a stride or a patch size: bucketing and frame snapping, ``hw_stride`` checks,
the loader's padding, the plan, sampling size checks and sequence-parallel divisibility. No other
module holds a default stride or patch size.

How a plugin declares its half: its config class (the pydantic model it registers) defines

- ``autoencoder_geometry() -> AutoencoderGeometry`` (autoencoders), and
- ``model_geometry() -> ModelGeometry`` (diffusion transformers).

Shapes (all autoencoders osctl knows encode the first frame on its own, "causal first frame")::

    latent frames  T_lat = (T - 1) // stride_t + 1          T must be k * stride_t + 1
    latent size    H_lat = H // stride_hw, W_lat = W // stride_hw
    tokens         (T_lat // patch_t) x (H_lat // patch_hw) x (W_lat // patch_hw)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from osctl.errors import ConfigError


@dataclass(frozen=True)
class AutoencoderGeometry:
    """What an autoencoder does to a clip's shape: frames per latent frame after the first, pixels per
    latent position, and the channels of its latents."""

    stride_t: int
    stride_hw: int
    latent_channels: int

    def __post_init__(self) -> None:
        _positive(self, ("stride_t", "stride_hw", "latent_channels"))


@dataclass(frozen=True)
class ModelGeometry:
    """What a diffusion transformer expects of its latents: its patch sizes and channels in and out."""

    patch_t: int
    patch_hw: int
    in_channels: int
    out_channels: int

    def __post_init__(self) -> None:
        _positive(self, ("patch_t", "patch_hw", "in_channels", "out_channels"))


@dataclass(frozen=True)
class LatentGeometry:
    """The autoencoder's and the model's halves joined and checked (see :func:`latent_geometry`)."""

    stride_t: int
    stride_hw: int
    latent_channels: int
    patch_t: int
    patch_hw: int

    @property
    def hw_unit(self) -> int:
        """Pixels per transformer token along H and W (``stride_hw x patch_hw``): sizes are multiples of it."""
        return self.stride_hw * self.patch_hw

    def latent_frames(self, frames: int) -> int:
        """Latent frames of a clip of ``frames`` frames (causal first frame)."""
        return (frames - 1) // self.stride_t + 1

    def frames_for(self, latent_frames: int) -> int:
        """Pixel frames that encode to exactly ``latent_frames`` latent frames (``k x stride_t + 1``)."""
        return (latent_frames - 1) * self.stride_t + 1

    def valid_frames(self, frames: int) -> bool:
        """True when ``frames`` is ``k x stride_t + 1`` (no frame is lost or padded by the autoencoder)."""
        return frames >= 1 and (frames - 1) % self.stride_t == 0

    def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int]:
        """(T_lat, H_lat, W_lat) of a clip."""
        return self.latent_frames(frames), height // self.stride_hw, width // self.stride_hw

    def tokens(self, frames: int, height: int, width: int) -> int:
        """Transformer tokens of one clip."""
        t, h, w = self.latent_shape(frames, height, width)
        return (t // self.patch_t) * (h // self.patch_hw) * (w // self.patch_hw)

    def size_problems(self, *, num_frames: int | None = None, height: int | None = None,
                      width: int | None = None) -> list[tuple[str, str]]:
        """``(key, "must be ..., got ...; use ...")`` for each given video size this geometry cannot represent:
        frames not ``k x stride_t + 1``, height or width not a multiple of :attr:`hw_unit`. The recipe check
        (``data.num_frames``, validation sizes) and ``osctl sample`` say it with these words."""
        problems = []
        if num_frames is not None and not self.valid_frames(num_frames):
            stride = self.stride_t
            lower = max(1, num_frames - (num_frames - 1) % stride)
            problems.append(("num_frames", f"must be {stride}k+1 (the autoencoder compresses time {stride}x with a "
                                           f"causal first frame), got {num_frames}; use {lower} or {lower + stride}"))
        unit = self.hw_unit
        for key, value in (("height", height), ("width", width)):
            if value is not None and (value <= 0 or value % unit):
                lower = value - value % unit
                problems.append((key, f"must be a multiple of {unit} (autoencoder stride {self.stride_hw} x patch "
                                      f"size {self.patch_hw}), got {value}; use {max(lower, unit)} or {lower + unit}"))
        return problems

    def describe(self) -> str:
        """One line for plans: ``autoencoder 4x8x8 (8 latent channels), patch 1x2x2: 4k+1 frames, sizes in
        multiples of 16``."""
        return (f"autoencoder {self.stride_t}x{self.stride_hw}x{self.stride_hw} ({self.latent_channels} latent "
                f"channels), patch {self.patch_t}x{self.patch_hw}x{self.patch_hw}: {self.stride_t}k+1 frames, sizes "
                f"in multiples of {self.hw_unit}")

    def as_dict(self) -> dict[str, int]:
        """The numbers, for plans, indexes and JSON output."""
        return asdict(self)


def latent_geometry(autoencoder: AutoencoderGeometry, model: ModelGeometry, *,
                    autoencoder_name: str = "autoencoder", model_name: str = "model") -> LatentGeometry:
    """Join the two halves; refuse (``ConfigError``) a model whose input or output channels are not the
    autoencoder's latent channels (it would fail inside the first step with a shape error)."""
    problems = []
    for key in ("in_channels", "out_channels"):
        value = getattr(model, key)
        if value != autoencoder.latent_channels:
            problems.append(f"model {model_name!r} has {key} {value} but autoencoder {autoencoder_name!r} makes "
                            f"latents with {autoencoder.latent_channels} channels")
    if problems:
        raise ConfigError("; ".join(problems) + "; choose an autoencoder and a model that fit (or set the model's "
                          "in_channels/out_channels to the autoencoder's latent channels).")
    return LatentGeometry(stride_t=autoencoder.stride_t, stride_hw=autoencoder.stride_hw,
                          latent_channels=autoencoder.latent_channels, patch_t=model.patch_t,
                          patch_hw=model.patch_hw)


def _positive(obj: Any, names: tuple[str, ...]) -> None:
    for name in names:
        value = getattr(obj, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"{type(obj).__name__}.{name} must be a whole number of at least 1, got {value!r}.")
