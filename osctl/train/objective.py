"""Diffusion training objectives: DDPM (the reference's) and rectified-flow matching.

DDPM follows the reference (§5.4): diffusers' ``DDPMScheduler`` supplies the noise table (never
re-implemented; with ``snr_shift_scale``, CogVideoX's ``CogVideoXDDIMScheduler``, whose table divides the SNR by
that factor before the zero-SNR rescale, exactly the table CogVideoX trains with), noise gets an optional per-(sample, channel) offset, timesteps are drawn uniformly
or stratified per rank, the target is epsilon, velocity or the clean sample, and the per-element
MSE is optionally min-SNR weighted and averaged over valid latent positions.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import torch

from osctl.errors import ConfigError


@dataclass
class NoisedBatch:
    """Model input and what the loss compares against."""

    noisy: torch.Tensor
    target: torch.Tensor
    timesteps: torch.Tensor
    noise: torch.Tensor


def stratified_timesteps(rng: random.Random, batch: int, rank: int, world: int, num_steps: int = 1000) -> list[int]:
    """Per-rank stratified draws: rank r of n covers ``[r*T/n, (r+1)*T/n)`` (reference v1.3.1).

    The reference evaluates its draw twice and keeps the second list, consuming ``2 * batch``
    uniforms per call; the same stream is reproduced here so runs can be compared draw for draw.
    """
    low = rank * num_steps / world - 0.5
    high = (rank + 1) * num_steps / world - 0.5
    for _ in range(batch):
        rng.uniform(low, high)
    draws = [round(rng.uniform(low, high)) for _ in range(batch)]
    return [min(max(t, 0), num_steps - 1) for t in draws]


def offset_noise(latents: torch.Tensor, generator: torch.Generator | None, offset: float) -> torch.Tensor:
    """Gaussian noise like ``latents`` drawn on the CPU generator, plus ``offset`` times one normal draw
    per (sample, channel) broadcast over time and space (the reference's ``noise_offset``)."""
    noise = torch.randn(latents.shape, generator=generator, dtype=torch.float32).to(latents.device)
    if offset:
        shift = torch.randn((*latents.shape[:2], *([1] * (latents.ndim - 2))), generator=generator)
        noise = noise + offset * shift.to(latents.device)
    return noise


class DDPMObjective:
    """The reference's noise-prediction objective on a DDPM schedule."""

    def __init__(self, *, num_train_timesteps: int = 1000, beta_schedule: str = "linear", beta_start: float = 1e-4,
                 beta_end: float = 0.02, prediction_type: str = "epsilon", rescale_betas_zero_snr: bool = False,
                 snr_gamma: float | None = None, noise_offset: float = 0.0, stratified: bool = True,
                 snr_shift_scale: float | None = None) -> None:
        from diffusers import CogVideoXDDIMScheduler, DDPMScheduler

        if snr_gamma is not None and prediction_type not in ("epsilon", "v_prediction"):
            raise ConfigError(
                f"diffusion.snr_gamma works with prediction_type epsilon or v_prediction, got {prediction_type!r}; "
                "unset snr_gamma or change the prediction type."
            )
        table = dict(num_train_timesteps=num_train_timesteps, beta_schedule=beta_schedule, beta_start=beta_start,
                     beta_end=beta_end, prediction_type=prediction_type, rescale_betas_zero_snr=rescale_betas_zero_snr)
        if snr_shift_scale is None:
            self.scheduler = DDPMScheduler(**table)
        else:
            self.scheduler = CogVideoXDDIMScheduler(**table, snr_shift_scale=snr_shift_scale)
        self.prediction_type = prediction_type
        self.snr_gamma = snr_gamma
        self.noise_offset = noise_offset
        self.stratified = stratified
        self.num_train_timesteps = num_train_timesteps

    @classmethod
    def from_recipe(cls, diffusion: Any) -> DDPMObjective:
        """Build from a recipe's ``diffusion`` section."""
        return cls(num_train_timesteps=diffusion.num_train_timesteps, beta_schedule=diffusion.beta_schedule,
                   beta_start=diffusion.beta_start, beta_end=diffusion.beta_end,
                   prediction_type=diffusion.prediction_type, rescale_betas_zero_snr=diffusion.rescale_betas_zero_snr,
                   snr_gamma=diffusion.snr_gamma, noise_offset=diffusion.noise_offset,
                   stratified=diffusion.stratified_timesteps, snr_shift_scale=getattr(diffusion, "snr_shift_scale", None))

    def sample_timesteps(self, batch: int, rng: random.Random, rank: int = 0, world: int = 1, *,
                         latent_shape: tuple[int, ...] | None = None) -> torch.Tensor:
        """Integer timesteps for ``batch`` samples of this rank (``latent_shape`` is not used)."""
        if self.stratified:
            values = stratified_timesteps(rng, batch, rank, world, self.num_train_timesteps)
        else:
            values = [rng.randrange(self.num_train_timesteps) for _ in range(batch)]
        return torch.tensor(values, dtype=torch.long)

    def sample_noise(self, latents: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Gaussian noise like ``latents``, plus the optional per-(sample, channel) offset."""
        return offset_noise(latents, generator, self.noise_offset)

    def add_noise(self, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> NoisedBatch:
        """Noisy latents and the training target for ``timesteps``."""
        noisy = self.scheduler.add_noise(latents, noise, timesteps)
        if self.prediction_type == "epsilon":
            target = noise
        elif self.prediction_type == "v_prediction":
            target = self.scheduler.get_velocity(latents, noise, timesteps)
        else:
            target = latents
        return NoisedBatch(noisy=noisy, target=target, timesteps=timesteps, noise=noise)

    def snr(self, timesteps: torch.Tensor) -> torch.Tensor:
        """Signal-to-noise ratio ``a_t / (1 - a_t)`` per timestep."""
        from diffusers.training_utils import compute_snr

        return compute_snr(self.scheduler, timesteps)

    def loss(self, prediction: torch.Tensor, batch: NoisedBatch, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Scalar loss: (min-SNR weighted) MSE over valid latent positions, in fp32."""
        # prediction_type "sample": the prediction itself is compared with the clean latents, which is what
        # every sampler assumes. The reference subtracts the noise first (pred - noise vs latents), so its
        # model learns latents + noise and samples from it stay noise; that trap is designed out here.
        pred = prediction.float()
        mse = (pred - batch.target.float()) ** 2
        b = mse.shape[0]
        mse = mse.reshape(b, -1)
        weights = None
        if self.snr_gamma is not None:
            snr = self.snr(batch.timesteps).float()
            clipped = torch.minimum(snr, torch.full_like(snr, self.snr_gamma))
            weights = clipped / snr if self.prediction_type == "epsilon" else clipped / (snr + 1)
            weights = weights.to(mse.device)[:, None]
        if mask is not None:
            # latent mask B x T x H x W, repeated over channels
            full = mask.float().unsqueeze(1).expand(prediction.shape).reshape(b, -1)
            weighted = mse * full if weights is None else mse * full * weights
            return weighted.sum() / full.sum()
        return (mse if weights is None else mse * weights).mean()


class FlowMatchingObjective:
    """Rectified flow: ``z_t = (1 - s) z + s n``, target ``n - z`` (the reference's ``--rf_scheduler``).

    The noise level ``s`` of timestep index ``i`` is diffusers' ``FlowMatchEulerDiscreteScheduler(shift=...)``
    table (``s -> shift*s / (1 + (shift-1)*s)``: a shift above 1 trains more at high noise, as Wan's trainers
    do); indices are drawn from ``weighting_scheme``'s density. :meth:`restrict_timesteps` limits the draws to
    the model timesteps one expert of a two-expert model (Wan 2.2) handles: the density truncated to that
    range, so each expert sees exactly the timesteps it would see in a joint run. ``token_shift`` moves the
    logit-normal mean with the sample's token count (:meth:`logit_mean_for`), as LTX-Video's trainer does.
    """

    #: draws per round when sampling in a restricted range (rounds repeat until the batch is full)
    _ROUND = 256
    _MAX_ROUNDS = 1000

    def __init__(self, *, num_train_timesteps: int = 1000, weighting_scheme: str = "logit_normal",
                 logit_mean: float = 0.0, logit_std: float = 1.0, mode_scale: float = 1.29,
                 noise_offset: float = 0.0, shift: float = 1.0,
                 token_shift: tuple[float, float, float, float] | None = None, tokens_per_position: float = 1.0) -> None:
        from diffusers import FlowMatchEulerDiscreteScheduler

        self.scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=num_train_timesteps, shift=shift)
        self.weighting_scheme = weighting_scheme
        self.logit_mean, self.logit_std, self.mode_scale = logit_mean, logit_std, mode_scale
        self.noise_offset = noise_offset
        self.num_train_timesteps = num_train_timesteps
        self.shift = shift
        self.prediction_type = "flow"
        self.window: tuple[float, float] | None = None
        self.token_shift = token_shift
        self.tokens_per_position = tokens_per_position

    @classmethod
    def from_recipe(cls, diffusion: Any, geometry: Any = None) -> FlowMatchingObjective:
        """Build from a recipe's ``diffusion`` section; ``geometry`` (the checked recipe's latent geometry) turns
        latent positions into transformer tokens for ``diffusion.token_shift``."""
        token_shift = getattr(diffusion, "token_shift", None)
        per_position = 1.0 if geometry is None else 1.0 / (geometry.patch_t * geometry.patch_hw ** 2)
        return cls(num_train_timesteps=diffusion.num_train_timesteps, weighting_scheme=diffusion.weighting_scheme,
                   logit_mean=diffusion.logit_mean, logit_std=diffusion.logit_std, mode_scale=diffusion.mode_scale,
                   noise_offset=diffusion.noise_offset, shift=getattr(diffusion, "flow_shift", 1.0),
                   token_shift=tuple(token_shift) if token_shift else None,  # type: ignore[arg-type]
                   tokens_per_position=per_position)

    def logit_mean_for(self, latent_shape: tuple[int, ...] | None) -> float:
        """The mean of the logit-normal draw for latents of ``latent_shape`` (``T x H x W``): ``logit_mean``, or
        with ``token_shift = (base_tokens, max_tokens, base_shift, max_shift)`` the line through
        ``(base_tokens, base_shift)`` and ``(max_tokens, max_shift)`` at the sample's transformer tokens
        (LTX-Video's trainer: longer sequences train at higher noise)."""
        if self.token_shift is None or latent_shape is None:
            return self.logit_mean
        base_tokens, max_tokens, base_shift, max_shift = self.token_shift
        tokens = float(torch.tensor(latent_shape[-3:]).prod()) * self.tokens_per_position
        slope = (max_shift - base_shift) / (max_tokens - base_tokens)
        return base_shift + slope * (tokens - base_tokens)

    def restrict_timesteps(self, low: float, high: float) -> None:
        """Draw only indices whose model timestep ``t`` has ``low <= t < high``; ``ConfigError`` when none has."""
        table = self.model_timesteps()
        if not bool(((table >= low) & (table < high)).any()):
            raise ConfigError(f"no training timestep lies in [{low:g}, {high:g}) with diffusion.flow_shift "
                              f"{self.shift:g}; check the model's boundary_ratio.")
        self.window = (low, high)

    def model_timesteps(self) -> torch.Tensor:
        """The model timestep of every index, ascending (index 0: least noise)."""
        return self.scheduler.timesteps.flip(0)

    def _draw(self, count: int, generator: torch.Generator, logit_mean: float) -> torch.Tensor:
        from diffusers.training_utils import compute_density_for_timestep_sampling

        scheme = "none" if self.weighting_scheme == "none" else self.weighting_scheme
        u = compute_density_for_timestep_sampling(scheme, count, logit_mean, self.logit_std, self.mode_scale,
                                                  generator=generator)
        return (u * self.num_train_timesteps).long().clamp(0, self.num_train_timesteps - 1)

    def sample_timesteps(self, batch: int, rng: random.Random, rank: int = 0, world: int = 1, *,
                         latent_shape: tuple[int, ...] | None = None) -> torch.Tensor:
        """Timestep indices drawn from the configured density (seeded by ``rng``), within the restricted range;
        ``latent_shape`` (``T x H x W``) sets the density's mean under ``token_shift``."""
        generator = torch.Generator().manual_seed(rng.getrandbits(63))
        mean = self.logit_mean_for(latent_shape)
        if self.window is None:
            return self._draw(batch, generator, mean)
        low, high = self.window
        table = self.model_timesteps()
        kept: list[torch.Tensor] = []
        found = 0
        for _ in range(self._MAX_ROUNDS):
            draws = self._draw(self._ROUND, generator, mean)
            chosen = draws[(table[draws] >= low) & (table[draws] < high)]
            kept.append(chosen)
            found += chosen.numel()
            if found >= batch:
                return torch.cat(kept)[:batch]
        raise ConfigError(f"the timestep density ({self.weighting_scheme}) almost never draws timesteps in "
                          f"[{low:g}, {high:g}); use another diffusion.weighting_scheme or boundary_ratio.")

    def sample_noise(self, latents: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Gaussian noise like ``latents``, plus the optional per-(sample, channel) offset."""
        return offset_noise(latents, generator, self.noise_offset)

    def add_noise(self, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> NoisedBatch:
        """Interpolate towards noise at the sigma of each timestep index."""
        sigmas = self.scheduler.sigmas.flip(0)[timesteps.cpu()].to(latents.device, torch.float32)
        sigmas = sigmas.view(-1, *([1] * (latents.ndim - 1)))
        noisy = (1 - sigmas) * latents + sigmas * noise
        model_t = self.scheduler.timesteps.flip(0)[timesteps.cpu()].to(latents.device)
        batch = NoisedBatch(noisy=noisy, target=noise - latents, timesteps=model_t, noise=noise)
        batch.sigmas = sigmas  # type: ignore[attr-defined]
        return batch

    def loss(self, prediction: torch.Tensor, batch: NoisedBatch, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Weighted MSE between the predicted and true velocity over valid positions."""
        from diffusers.training_utils import compute_loss_weighting_for_sd3

        scheme = "none" if self.weighting_scheme == "none" else self.weighting_scheme
        weights = compute_loss_weighting_for_sd3(scheme, batch.sigmas)  # type: ignore[attr-defined]
        mse = weights.float() * (prediction.float() - batch.target.float()) ** 2
        if mask is None:
            return mse.mean()
        full = mask.float().unsqueeze(1).expand(prediction.shape)
        return (mse * full).sum() / full.sum()


def build_objective(diffusion: Any, geometry: Any = None) -> DDPMObjective | FlowMatchingObjective:
    """The objective named by ``diffusion.objective`` (``geometry``: the checked recipe's latent geometry)."""
    if diffusion.objective == "flow_matching":
        return FlowMatchingObjective.from_recipe(diffusion, geometry)
    return DDPMObjective.from_recipe(diffusion)
