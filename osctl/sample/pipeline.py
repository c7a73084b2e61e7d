"""The text-to-video denoising pipeline, with diffusers' vocabulary.

``check_inputs`` -> ``encode_prompt`` -> ``prepare_latents`` -> the denoising loop with
classifier-free guidance in one batched forward ([negative; positive], as the reference) ->
``decode_latents`` -> uint8 frames. The same object serves `osctl sample` and validation during
training, so both see identical numbers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from osctl.errors import UsageError
from osctl.geometry import LatentGeometry
from osctl.sample import scheduling
from osctl.sample.sizes import check_size


@dataclass
class PipelineOutput:
    """What one pipeline call returns: uint8 videos ``B x T x H x W x 3`` and the final latents."""

    videos: torch.Tensor | None
    latents: torch.Tensor


class VideoPipeline:
    """Text-to-video sampling over any model, autoencoder, text encoder and scheduler plugin.

    ``geometry`` is the checked recipe's latent geometry (``CheckedRecipe.geometry``): the sizes it can
    sample and the shape of its latents.
    """

    def __init__(self, model: Any, autoencoder: Any, text_encoder: Any, scheduler: Any, *,
                 geometry: LatentGeometry, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                 sequence_parallel: Any = None, offload: bool = False) -> None:
        self.model = model
        self.autoencoder = autoencoder
        self.geometry = geometry
        self.text_encoder = text_encoder
        self.scheduler = scheduler
        self.device = torch.device(device)
        self.dtype = dtype
        self.sequence_parallel = sequence_parallel
        self.offload = offload

    # 1. inputs -----------------------------------------------------------------------------------
    def check_inputs(self, num_frames: int, height: int, width: int) -> None:
        """Refuse sizes the autoencoder and the model cannot represent, naming the value and a fix."""
        check_size(self.geometry, num_frames=num_frames, height=height, width=width)

    # 2. text ---------------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_prompt(self, prompts: list[str], max_length: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Text states ``B x L x D`` and masks ``B x L`` for ``prompts``."""
        tokens = self.text_encoder.tokenize(prompts, max_length=max_length)
        where = getattr(self.text_encoder, "device", self.device)  # stays on the CPU under offload
        states = self.text_encoder.encode(tokens["input_ids"].to(where), tokens["attention_mask"].to(where))
        return states.to(self.device, self.dtype), tokens["attention_mask"].to(self.device)

    # 3. latents ------------------------------------------------------------------------------------
    def latent_shape(self, batch: int, num_frames: int, height: int, width: int) -> tuple[int, ...]:
        """Latent shape for a video of ``num_frames x height x width``."""
        return (batch, self.geometry.latent_channels, *self.geometry.latent_shape(num_frames, height, width))

    def prepare_latents(self, shape: tuple[int, ...], generator: torch.Generator | list[torch.Generator] | None,
                        latents: torch.Tensor | None = None) -> torch.Tensor:
        """Initial latents (drawn on CPU from ``generator`` so every device gives the same numbers).

        A list holds one generator per batch item: item ``i`` then gets exactly the numbers a batch of one
        drawn from ``generator[i]`` would, so batching never changes which video a seed gives. A model with an
        ``initial_noise(shape, generator)`` method draws them (CogVideoX: frames-first, as its pipeline does).
        """
        draw = getattr(self.model, "initial_noise", None)  # a model whose family draws its noise in another layout
        if not callable(draw):
            draw = _standard_normal
        if latents is None and isinstance(generator, list):
            if len(generator) != shape[0]:
                raise UsageError(f"{len(generator)} generators for a batch of {shape[0]}; pass one per video.")
            latents = torch.cat([draw((1, *shape[1:]), g) for g in generator])
        elif latents is None:
            latents = draw(shape, generator)
        elif tuple(latents.shape) != tuple(shape):
            raise UsageError(f"given latents have shape {tuple(latents.shape)}, expected {tuple(shape)}.")
        return latents.to(self.device, torch.float32) * scheduling.init_noise_sigma(self.scheduler)

    # 4. loop ---------------------------------------------------------------------------------------
    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str],
        negative_prompt: str | list[str] = "",
        *,
        num_frames: int,
        height: int,
        width: int,
        num_inference_steps: int = 100,
        guidance_scale: float = 7.5,
        guidance_scale_2: float | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        max_sequence_length: int | None = None,
        eta: float = 0.0,
        output_type: str = "uint8",
        callback: Callable[[int, int], None] | None = None,
    ) -> PipelineOutput:
        """Sample videos for ``prompt``; ``output_type`` is ``uint8``, ``float`` or ``latent``.

        ``generator`` may be a list with one generator per prompt (see :meth:`prepare_latents`); the
        scheduler then draws each video's step noise from its own generator too. ``guidance_scale_2`` is the
        guidance of the steps a two-expert model (``model.expert_index(t)``: Wan 2.2 A14B) gives its second,
        low-noise expert (default ``guidance_scale``); whether guidance runs at all follows ``guidance_scale``,
        as in ``WanPipeline``.
        """
        self.check_inputs(num_frames, height, width)
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        negatives = [negative_prompt] * len(prompts) if isinstance(negative_prompt, str) else list(negative_prompt)
        do_cfg = guidance_scale > 1.0
        states, mask = self.encode_prompt(prompts, max_sequence_length)
        if do_cfg:
            neg_states, neg_mask = self.encode_prompt(negatives, max_sequence_length)
            states = torch.cat([neg_states, states])
            mask = torch.cat([neg_mask, mask])
        shape = self.latent_shape(len(prompts), num_frames, height, width)
        scheduling.set_timesteps(self.scheduler, num_inference_steps, self.device,
                                 self._schedule(num_inference_steps, shape))
        x = self.prepare_latents(shape, generator, latents)
        text_states = states.unsqueeze(1)  # B x 1 x L x D, as the model expects
        text_mask = mask.unsqueeze(1)
        batch_cfg = text_states.shape[0]
        latent_mask = torch.ones((batch_cfg, *x.shape[2:]), device=self.device, dtype=self.dtype)
        timesteps = self.scheduler.timesteps
        for i, t in enumerate(timesteps):
            model_input = torch.cat([x, x]) if do_cfg else x
            model_input = scheduling.scale_model_input(self.scheduler, model_input, t)
            t_batch = t.expand(batch_cfg).to(self.device, model_input.dtype)
            prediction = self._predict(model_input.to(self.dtype), t_batch, text_states, latent_mask, text_mask)
            if do_cfg:
                uncond, cond = prediction.chunk(2)
                prediction = uncond + self._guidance_at(t, guidance_scale, guidance_scale_2) * (cond - uncond)
            x = scheduling.step(self.scheduler, prediction, t, x, generator=generator, eta=eta)
            if callback is not None:
                callback(i + 1, len(timesteps))
        if output_type == "latent":
            return PipelineOutput(videos=None, latents=x)
        video = self.decode_latents(x)
        if output_type == "float":
            return PipelineOutput(videos=video, latents=x)
        return PipelineOutput(videos=to_uint8(video)[:, :num_frames, :height, :width], latents=x)

    def _schedule(self, num_inference_steps: int, shape: tuple[int, ...]) -> dict[str, Any]:
        """The family's options for ``scheduler.set_timesteps`` (``model.sampling_schedule``: e.g. LTX-Video's
        sigmas and token-dependent shift), else none."""
        schedule = getattr(self.model, "sampling_schedule", None)
        return schedule(self.scheduler, num_inference_steps, shape) if callable(schedule) else {}

    def _guidance_at(self, t: torch.Tensor, scale: float, scale_2: float | None) -> float:
        """``scale_2`` at the steps the model's second expert takes, else ``scale``."""
        expert_index = getattr(self.model, "expert_index", None)
        if scale_2 is None or expert_index is None:
            return scale
        return scale_2 if int(expert_index(t.reshape(1))[0]) == 1 else scale

    def _predict(self, x: torch.Tensor, t: torch.Tensor, text: torch.Tensor, latent_mask: torch.Tensor,
                 text_mask: torch.Tensor) -> torch.Tensor:
        """One model call; under sequence parallelism each rank runs its time and text slice and the
        full prediction is gathered, so the scheduler sees exactly what a single process would."""
        group = self.sequence_parallel
        if group is None:
            return self.model(x, t, text, attention_mask=latent_mask, encoder_attention_mask=text_mask,
                              return_dict=False)[0].float()
        from osctl.parallel import ulysses

        world = ulysses.group_size(group)
        t_sizes = ulysses.shard_sizes(x.shape[2], world)
        l_sizes = ulysses.shard_sizes(text.shape[2], world)
        local = self.model(
            ulysses.split_along_dim(x, 2, group, t_sizes), t, ulysses.split_along_dim(text, 2, group, l_sizes),
            attention_mask=ulysses.split_along_dim(latent_mask, 1, group, t_sizes),
            encoder_attention_mask=ulysses.split_along_dim(text_mask, 2, group, l_sizes), return_dict=False,
        )[0].float()
        return ulysses.gather_along_dim(local.contiguous(), 2, group, t_sizes)

    # 5. pixels -------------------------------------------------------------------------------------
    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Pixel video ``B x C x T x H x W`` (about [-1, 1]) from final latents.

        Under ``offload`` the autoencoder lives on the CPU and visits the device only for this call.
        """
        if not (self.offload and isinstance(self.autoencoder, torch.nn.Module)):
            return self.autoencoder.decode(latents.to(self.device)).float()
        self.autoencoder.to(self.device)
        try:
            return self.autoencoder.decode(latents.to(self.device)).float()
        finally:
            self.autoencoder.to("cpu")


def _standard_normal(shape: tuple[int, ...], generator: torch.Generator | None) -> torch.Tensor:
    return torch.randn(shape, generator=generator, dtype=torch.float32)


def to_uint8(video: torch.Tensor) -> torch.Tensor:
    """``B x C x T x H x W`` in [-1, 1] -> ``B x T x H x W x C`` uint8, truncating like the reference."""
    frames = ((video / 2 + 0.5).clamp(0, 1) * 255).to(torch.uint8)
    return frames.permute(0, 2, 3, 4, 1).contiguous()
