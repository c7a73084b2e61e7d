"""A family's diffusers VAE behind osctl's ``Autoencoder`` protocol, built the ways every family builds it.

:class:`DiffusersAutoencoder` holds the diffusers module as ``self.vae`` and owns what every family shares:
loading a released folder without running code from it, random weights from a preset (deterministic for a
seed), the architecture on the meta device for plans, tiling, the dtype, the posterior as
:class:`~osctl.latent_moments.LatentMoments` (so ``osctl data cache`` stores it and training from the cache draws
exactly the latents ``encode`` draws), and the modules a pipeline export saves. A subclass names its diffusers
class and says how the family normalises latents (:meth:`~DiffusersAutoencoder.normalisation` /
:meth:`~DiffusersAutoencoder.denormalise`): exactly as the family's pipeline decodes and its trainers encode,
in float32. :func:`build_autoencoder` is the factory body of every family's
autoencoder plugin.
"""

from __future__ import annotations

import abc
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from osctl.errors import ConfigError
from osctl.latent_moments import LatentMoments
from osctl.utils.dtypes import torch_dtype


class DiffusersAutoencoder(nn.Module, abc.ABC):
    """A diffusers VAE (``self.vae``) with the family's latent normalisation (see the module docstring)."""

    #: the diffusers class name (``AutoencoderKLWan`` ...)
    diffusers_class: ClassVar[str]

    def __init__(self, vae: Any) -> None:
        super().__init__()
        self.vae = vae

    # -- what a family defines ---------------------------------------------------------------------------
    @abc.abstractmethod
    def normalisation(self) -> dict[str, torch.Tensor | None]:
        """``shift``, ``scale``, ``divisor`` (float32, broadcastable to ``B x C x T x H x W``; None where unused)
        of the normalisation ``(z - shift) * scale / divisor`` from raw latents ``z`` to the model's."""

    @abc.abstractmethod
    def denormalise(self, latents: torch.Tensor) -> torch.Tensor:
        """The VAE's raw latents from the model's (fp32)."""

    def decode_raw(self, z: torch.Tensor) -> torch.Tensor:
        """Pixels from raw latents in the VAE's dtype (default: ``vae.decode``)."""
        return self.vae.decode(z, return_dict=False)[0]

    # -- construction ---------------------------------------------------------------------------------------
    @classmethod
    def module_class(cls) -> Any:
        import diffusers

        return getattr(diffusers, cls.diffusers_class)

    @classmethod
    def from_pretrained(cls, folder: Path, *, dtype: Any = None, device: Any = None) -> DiffusersAutoencoder:
        """Load a VAE folder (config.json + diffusion_pytorch_model weights) without running code from it."""
        from osctl.families.loading import from_pretrained_safely

        vae = from_pretrained_safely(cls.module_class(), Path(folder), torch_dtype(dtype, "autoencoder dtype"))
        return cls._placed(cls(vae), device)

    @classmethod
    def from_config(cls, config: dict[str, Any], *, seed: int = 0, dtype: Any = None,
                    device: Any = None) -> DiffusersAutoencoder:
        """Random weights of the architecture ``config`` (deterministic for a seed)."""
        state = torch.random.get_rng_state()
        try:
            torch.manual_seed(seed)
            vae = cls.module_class()(**config)
        finally:
            torch.random.set_rng_state(state)
        resolved = torch_dtype(dtype, "autoencoder dtype")
        if resolved is not None:
            vae = nn.Module.to(vae, dtype=resolved)  # diffusers' .to() warns on every cast
        return cls._placed(cls(vae), device)

    @classmethod
    def on_meta(cls, config: dict[str, Any], *, dtype: Any = None) -> DiffusersAutoencoder:
        """The architecture on the meta device (a plan counts its parameters; nothing is allocated)."""
        with torch.device("meta"):
            vae = cls.module_class()(**config)
        resolved = torch_dtype(dtype, "autoencoder dtype")
        if resolved is not None:
            vae = nn.Module.to(vae, dtype=resolved)
        return cls(vae)

    @classmethod
    def _placed(cls, ae: DiffusersAutoencoder, device: Any) -> DiffusersAutoencoder:
        return ae.to(device) if device is not None else ae

    def enable_tiling(self) -> None:
        """diffusers' spatial tiling for encode and decode."""
        self.vae.enable_tiling()

    # -- the Autoencoder protocol ----------------------------------------------------------------------------
    @property
    def dtype(self) -> torch.dtype:
        return next(self.vae.parameters()).dtype

    def latent_moments(self, video: torch.Tensor) -> LatentMoments:
        """The posterior of pixel video ``B x 3 x T x H x W`` in [-1, 1] (mean and std in the VAE's dtype) and the
        family's normalisation: :meth:`encode` is ``latent_moments(video).latents(...)``."""
        posterior = self.vae.encode(video.to(self.dtype)).latent_dist
        return LatentMoments(mean=posterior.mean, std=posterior.std, dtype=torch.float32, **self.normalisation())

    def encode(self, video: torch.Tensor, *, sample: bool = True, generator: torch.Generator | None = None) -> torch.Tensor:
        """Normalised latents ``B x C x T_lat x H_lat x W_lat`` of pixel video ``B x 3 x T x H x W`` in [-1, 1]:
        a draw from the posterior (``mean + std * noise``, float32 noise from ``generator``; its mean with
        ``sample=False``), normalised in float32."""
        return self.latent_moments(video).latents(sample=sample, generator=generator)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Pixel video ``B x 3 x T x H x W`` (about [-1, 1]) from normalised latents."""
        return self.decode_raw(self.denormalise(latents.float()).to(self.dtype))

    def diffusers_modules(self) -> dict[str, Any]:
        """The pipeline components this autoencoder is (``ckpt convert --to diffusers-pipeline`` saves them)."""
        return {"vae": self.vae}


class ScaledAutoencoder(DiffusersAutoencoder):
    """A VAE whose latents are scaled by one factor, its config's ``scaling_factor`` (CogVideoX, HunyuanVideo)::

        encode: z = posterior.sample() * scaling_factor          (the posterior mean with sample=False)
        decode: video = vae.decode(z / scaling_factor)

    as their pipelines decode and their trainers encode (the strides are the plugin config's geometry)."""

    def __init__(self, vae: Any) -> None:
        super().__init__(vae)
        self.latent_channels = int(vae.config.latent_channels)
        self.scaling_factor = float(vae.config.scaling_factor)

    def normalisation(self) -> dict[str, torch.Tensor | None]:
        return {"shift": None, "scale": torch.tensor([self.scaling_factor], dtype=torch.float32), "divisor": None}

    def denormalise(self, latents: torch.Tensor) -> torch.Tensor:
        return latents / self.scaling_factor


def build_autoencoder(config: Any, wrapper: type[DiffusersAutoencoder], *, device: Any = None, dtype: Any = None,
                      meta: bool = False) -> DiffusersAutoencoder:
    """A family's autoencoder from its config (:class:`osctl.families.configs.DiffusersAutoencoderConfig`):
    on the meta device (a plan), random from a preset, or loaded from ``path``."""
    if meta:
        ae = wrapper.on_meta(config.vae_config(), dtype=dtype)
    elif config.preset_name:
        ae = wrapper.from_config(config.PRESETS[config.preset_name], seed=config.seed, dtype=dtype, device=device)
    else:
        folder = config.folder()
        if folder is None:
            raise ConfigError(f"autoencoder.path {config.path!r} is not on this machine.", hint=config.FETCH_HINT)
        ae = wrapper.from_pretrained(folder, dtype=dtype, device=device)
    if config.enable_tiling:
        ae.enable_tiling()
    return ae
