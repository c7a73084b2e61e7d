"""The osctl-facing WF-VAE autoencoder: loading, latent normalisation and the ``Autoencoder`` protocol.

Latent normalisation follows the reference wrapper (``WFVAEModelWrapper``) with the per-channel
``shift``/``scale`` of the VAE's ``config.json``::

    encode: z = (posterior.sample() - shift) * scale        (or the posterior mean when sample=False)
    decode: video = vae.decode(z / scale + shift)

Unlike the reference wrapper, ``decode`` returns ``B x C x T x H x W`` (channel-first, the layout of
``encode``'s input and of every osctl video tensor); the reference returns ``B x T x C x H x W``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from osctl.errors import ConfigError
from osctl.latent_moments import LatentMoments
from osctl.utils.dtypes import torch_dtype
from osctl_builtin.autoencoders.wfvae.model import WFVAEModel
from osctl_builtin.autoencoders.wfvae.register import FETCH_HINT, WEIGHT_FILES

# Constructor arguments of the presets that build randomly initialised weights (no files needed).
PRESETS: dict[str, dict[str, Any]] = {
    # The released D8 4x8x8 VAE's topology (about 147M parameters).
    "released": dict(latent_dim=8, base_channels=128, encoder_num_resblocks=2, encoder_energy_flow_hidden_size=64,
                     decoder_num_resblocks=2, decoder_energy_flow_hidden_size=128, use_attention=True, dropout=0.0,
                     norm_type="layernorm", t_interpolation="trilinear", connect_res_layer_num=2),
    # Same topology with narrow layers (about 0.6M parameters) for tests and CPU demos.
    "tiny": dict(latent_dim=8, base_channels=8, encoder_num_resblocks=2, encoder_energy_flow_hidden_size=4,
                 decoder_num_resblocks=2, decoder_energy_flow_hidden_size=8, use_attention=True, dropout=0.0,
                 norm_type="layernorm", t_interpolation="trilinear", connect_res_layer_num=2),
}



def resolve_dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    """A ``torch.dtype`` from a dtype or a name such as ``bf16``/``fp32`` (None stays None)."""
    return torch_dtype(dtype, "autoencoder dtype")


class WFVAEAutoencoder(nn.Module):
    """WF-VAE behind the osctl ``Autoencoder`` protocol (``B x C x T x H x W`` in and out).

    ``latent_channels`` comes from the VAE config (8 for the released model); strides are 4 in time
    (causal first frame) and 8 in space. The wrapped diffusers model is ``self.vae``; moving or
    freezing this module moves or freezes it. ``shift``/``scale`` are float32 buffers (not saved).
    """

    temporal_stride: int = 4
    spatial_stride: int = 8

    def __init__(self, vae: WFVAEModel) -> None:
        super().__init__()
        self.vae = vae
        self.latent_channels = int(vae.config.latent_dim)
        view = (1, self.latent_channels, 1, 1, 1)
        self.register_buffer("shift", torch.tensor(list(vae.config.shift), dtype=torch.float32).view(view),
                             persistent=False)
        self.register_buffer("scale", torch.tensor(list(vae.config.scale), dtype=torch.float32).view(view),
                             persistent=False)

    # construction ----------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, *, dtype: torch.dtype | str | None = None,
                        device: torch.device | str | None = None) -> WFVAEAutoencoder:
        """Load a VAE folder (``config.json`` + ``diffusion_pytorch_model.safetensors`` or a ``*.ckpt``).

        Problems with the folder are reported as ``ConfigError`` naming the file and the fix.
        """
        folder = check_vae_folder(path)
        try:
            vae = WFVAEModel.from_pretrained(str(folder), torch_dtype=resolve_dtype(dtype))
        except (ValueError, RuntimeError, OSError) as exc:  # unsupported config, weights that do not fit it
            raise ConfigError(f"autoencoder.path: cannot load {folder}: {exc}",
                              hint="point autoencoder.path (--ae_path) at the WF-VAE 'vae' folder of "
                                   "Open-Sora-Plan v1.3.") from None
        return cls._finish(vae, device)

    @classmethod
    def from_preset(cls, name: str, *, seed: int = 0, dtype: torch.dtype | str | None = None,
                    device: torch.device | str | None = None, **overrides: Any) -> WFVAEAutoencoder:
        """A randomly initialised VAE of preset ``name`` (``tiny`` or ``released``), seeded, global RNG untouched."""
        if name not in PRESETS:
            raise ConfigError(f"autoencoder.preset {name!r} is unknown; use one of {', '.join(PRESETS)}.")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            vae = WFVAEModel(**{**PRESETS[name], **overrides})
        dtype = resolve_dtype(dtype)
        if dtype is not None:
            vae = vae.to(dtype)
        return cls._finish(vae.eval(), device)

    @classmethod
    def on_meta(cls, path: str | os.PathLike | None, preset: str, *,
                dtype: torch.dtype | str | None = None) -> WFVAEAutoencoder:
        """The VAE on the meta device (shapes only, nothing allocated) for a plan: ``path``'s config.json
        when it is readable, else preset ``preset``'s architecture."""
        arch: dict[str, Any] = dict(PRESETS.get(preset, PRESETS["released"]))
        config_file = Path(path).expanduser() / "config.json" if path is not None else None
        if config_file is not None and config_file.is_file():  # never a hub lookup: local files only
            try:
                loaded = json.loads(config_file.read_text())
            except (OSError, ValueError):
                loaded = None
            if isinstance(loaded, dict):
                arch = loaded
        with torch.device("meta"):
            vae = WFVAEModel.from_config(arch)
            dtype = resolve_dtype(dtype)
            if dtype is not None:
                vae = vae.to(dtype)
            return cls(vae).eval()

    @classmethod
    def _finish(cls, vae: WFVAEModel, device: torch.device | str | None) -> WFVAEAutoencoder:
        ae = cls(vae).eval()
        return ae.to(device) if device is not None else ae

    # properties ------------------------------------------------------------------------------------
    @property
    def dtype(self) -> torch.dtype:
        """Dtype of the VAE weights (inputs are cast to it)."""
        return self.vae.dtype

    @property
    def device(self) -> torch.device:
        """Device of the VAE weights (inputs are moved to it)."""
        return self.vae.device

    @property
    def tiling(self) -> bool:
        """Whether temporal tiling is on."""
        return bool(self.vae.use_tiling)

    def enable_tiling(self, t_chunk_enc: int | None = None, t_chunk_dec: int | None = None) -> None:
        """Encode/decode in temporal chunks (same numbers up to float rounding, less memory).

        ``t_chunk_enc``: wavelet frames per encoder chunk (even, default 16); ``t_chunk_dec``: latent
        frames per decoder chunk (default 4); the first frame is always a chunk of its own.
        """
        self.vae.enable_tiling(True, t_chunk_enc=t_chunk_enc, t_chunk_dec=t_chunk_dec)

    def disable_tiling(self) -> None:
        """Process whole clips at once."""
        self.vae.disable_tiling()

    # protocol --------------------------------------------------------------------------------------
    def check_video(self, video: torch.Tensor) -> None:
        """Raise ``ValueError`` unless ``video`` is ``B x 3 x (4k+1) x 8m x 8n``."""
        if video.dim() != 5 or video.shape[1] != 3:
            raise ValueError(f"WF-VAE encode expects a video B x 3 x T x H x W, got shape {tuple(video.shape)}.")
        frames, height, width = video.shape[2:]
        if (frames - 1) % self.temporal_stride:
            raise ValueError(f"WF-VAE encode: num_frames {frames} is not 4k+1; use {frames - (frames - 1) % 4} "
                             f"or {frames - (frames - 1) % 4 + 4}.")
        for name, size in (("height", height), ("width", width)):
            if size % self.spatial_stride or size == 0:
                raise ValueError(f"WF-VAE encode: {name} {size} is not a multiple of {self.spatial_stride}.")

    def posterior(self, video: torch.Tensor) -> Any:
        """The VAE posterior (``DiagonalGaussianDistribution`` over unnormalised latents) of ``video``."""
        self.check_video(video)
        return self.vae.encode(video.to(device=self.device, dtype=self.dtype))

    def encode(self, video: torch.Tensor, *, sample: bool = True, generator: torch.Generator | None = None,
               noise: torch.Tensor | None = None) -> torch.Tensor:
        """Normalised latents ``B x 8 x (T-1)/4+1 x H/8 x W/8`` of ``video`` (``B x 3 x T x H x W`` in [-1, 1]).

        ``sample=True`` draws from the posterior (with ``generator`` or the given standard-normal
        ``noise``, else the global RNG); ``sample=False`` takes its mean.
        """
        return self.latent_moments(video).latents(sample=sample, generator=generator, noise=noise)

    def latent_moments(self, video: torch.Tensor) -> LatentMoments:
        """The posterior of ``video`` and the normalisation: ``encode`` is ``latent_moments(video).latents(...)``,
        so latents drawn later from stored moments (``osctl data cache``) equal the on-the-fly ones."""
        posterior = self.posterior(video)
        return LatentMoments(mean=posterior.mean, std=posterior.std, shift=self.shift, scale=self.scale)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Video ``B x 3 x 4(t-1)+1 x 8h x 8w`` (channel-first, about [-1, 1], not clamped) from normalised latents."""
        if latents.dim() != 5 or latents.shape[1] != self.latent_channels:
            raise ValueError(f"WF-VAE decode expects latents B x {self.latent_channels} x t x h x w, "
                             f"got shape {tuple(latents.shape)}.")
        z = latents.to(device=self.device, dtype=self.dtype)
        z = z / self.scale.to(z.dtype) + self.shift.to(z.dtype)
        return self.vae.decode(z)

    def forward(self, video: torch.Tensor, sample: bool = False) -> torch.Tensor:
        """Reconstruction ``decode(encode(video))`` (posterior mean unless ``sample``)."""
        return self.decode(self.encode(video, sample=sample))


def check_vae_folder(path: str | os.PathLike | None) -> Path:
    """The VAE folder, or a ``ConfigError`` naming the missing/wrong file with a hint."""
    hint = FETCH_HINT + "."
    if path is None or str(path).strip() == "":
        raise ConfigError("autoencoder.path is not set; the WF-VAE needs its weights folder.", hint=hint)
    folder = Path(path).expanduser()
    if not folder.exists():
        raise ConfigError(f"autoencoder.path: {folder} does not exist.", hint=hint)
    if folder.is_file():
        raise ConfigError(f"autoencoder.path: {folder} is a file; give the folder that holds config.json.", hint=hint)
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise ConfigError(f"autoencoder.path: {config_file} not found (is {folder} the VAE folder?).", hint=hint)
    try:
        config = json.loads(config_file.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"autoencoder.path: {config_file} is not valid JSON ({exc}).", hint=hint) from None
    class_name = config.get("_class_name", "WFVAEModel") if isinstance(config, dict) else None
    if class_name != "WFVAEModel":
        raise ConfigError(
            f"autoencoder.path: {config_file} describes a {class_name}, not a WFVAEModel; "
            "point it at the VAE folder, not the transformer's.", hint=hint)
    if not any((folder / name).is_file() for name in WEIGHT_FILES) and not list(folder.glob("*.ckpt")):
        raise ConfigError(
            f"autoencoder.path: no weights in {folder} (expected diffusion_pytorch_model.safetensors or a *.ckpt).",
            hint=hint)
    return folder
