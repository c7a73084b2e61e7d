"""The twelve samplers Open-Sora-Plan offers through ``--sample_method``, built on diffusers' schedulers, and
the flow-matching ones (Euler; UniPC on flow sigmas, as Wan samples).

Construction follows the reference's ``get_scheduler`` rules: every scheduler gets the training
``prediction_type`` and ``rescale_betas_zero_snr``, with ``trailing`` timestep spacing under zero
terminal SNR and ``leading`` otherwise; DDIM and DDPM turn ``clip_sample`` off; PNDM and DEIS do not
support zero-SNR rescaling and ignore it; FlowMatchEulerDiscrete takes no DDPM arguments at all.
Options a diffusers class does not accept (zero-SNR rescaling on Heun/KDPM2/DPM-Solver singlestep,
timestep spacing on DPM-Solver singlestep) are dropped and listed in ``osctl_ignored_options``.
Betas are passed only when they differ from diffusers' linear 1e-4..0.02 default, so the built
scheduler equals the reference's (CogVideoX keeps its own schedule unless told otherwise).
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any, Literal

from pydantic import Field

import osctl
from osctl.registry import ComponentConfig

DEFAULT_BETAS = {"num_train_timesteps": 1000, "beta_schedule": "linear", "beta_start": 1e-4, "beta_end": 0.02}


class SamplerConfig(ComponentConfig):
    """Options shared by every diffusers-backed sampler (normally inherited from ``diffusion``)."""

    prediction_type: Literal["epsilon", "v_prediction", "sample", "flow"] = "epsilon"
    rescale_betas_zero_snr: bool = False
    timestep_spacing: Literal["auto", "leading", "trailing", "linspace"] = Field(
        "auto", description="auto: trailing under zero-SNR, else leading (the reference rule)"
    )
    num_train_timesteps: int = Field(1000, gt=0)
    beta_schedule: Literal["linear", "scaled_linear", "squaredcos_cap_v2"] = "linear"
    beta_start: float = Field(1e-4, gt=0)
    beta_end: float = Field(0.02, gt=0)
    v1_5_betas: bool = Field(False, description="Stable Diffusion 1.5 betas (scaled_linear 0.00085..0.012)")
    snr_shift_scale: float | None = Field(
        None, gt=0, description="CogVideoX samplers: the SNR shift of their noise table (CogVideoX 2B/5B: 3.0, 1.5: "
        "1.0); inherited from diffusion.snr_shift_scale"
    )
    flow_shift: float | None = Field(
        None, gt=0, description="flow-matching samplers: the noise-level shift (Wan: 3.0 at 480p, 5.0 at 720p, 12.0 "
        "for Wan 2.2 A14B); default: the scheduler's 1.0"
    )
    extra: dict[str, Any] = Field(default_factory=dict, description="passed unchanged to the diffusers class")


# name -> (diffusers class, kwargs added, whether zero-SNR/spacing kwargs are dropped)
_TABLE: dict[str, tuple[str, dict[str, Any], bool, str]] = {
    "DDIM": ("DDIMScheduler", {"clip_sample": False}, False, "DDIM, deterministic (eta 0)"),
    "EulerDiscrete": ("EulerDiscreteScheduler", {}, False, "Euler, deterministic"),
    "DDPM": ("DDPMScheduler", {"clip_sample": False}, False, "DDPM ancestral sampling"),
    "DPMSolverMultistep": ("DPMSolverMultistepScheduler", {}, False, "DPM-Solver++ multistep"),
    "DPMSolverSinglestep": ("DPMSolverSinglestepScheduler", {}, False, "DPM-Solver singlestep"),
    "PNDM": ("PNDMScheduler", {}, True, "PNDM (ignores zero-SNR rescaling)"),
    "HeunDiscrete": ("HeunDiscreteScheduler", {}, False, "Heun, second order"),
    "EulerAncestralDiscrete": (
        "EulerAncestralDiscreteScheduler", {}, False, "Euler ancestral (the reference default, 100 steps)"
    ),
    "DEISMultistep": ("DEISMultistepScheduler", {}, True, "DEIS multistep (ignores zero-SNR rescaling)"),
    "KDPM2AncestralDiscrete": ("KDPM2AncestralDiscreteScheduler", {}, False, "KDPM2 ancestral"),
    "CogVideoX": ("CogVideoXDDIMScheduler", {"clip_sample": False}, False,
                  "CogVideoX DDIM (CogVideoX-2b's released sampler)"),
    "CogVideoXDPM": ("CogVideoXDPMScheduler", {"clip_sample": False}, False,
                     "CogVideoX DPM-Solver++ (stochastic; CogVideoX-5b's and 1.5's released sampler)"),
}
#: samplers whose ``step`` also takes the previous step's prediction and timestep (wrapped: see TwoStepScheduler)
TWO_STEP = {"CogVideoXDPM"}
FLOW_MATCH = "FlowMatchEulerDiscrete"
#: UniPC on flow sigmas: the sampler Wan's released pipelines ship (their scheduler/scheduler_config.json)
FLOW_UNIPC = "UniPCMultistep"


def scheduler_kwargs(name: str, config: SamplerConfig) -> tuple[str, dict[str, Any]]:
    """The diffusers class name and constructor kwargs the reference would use for ``name``."""
    if name == FLOW_MATCH:
        shift = {} if config.flow_shift is None else {"shift": config.flow_shift}
        return "FlowMatchEulerDiscreteScheduler", {"num_train_timesteps": config.num_train_timesteps, **shift,
                                                   **config.extra}
    if name == FLOW_UNIPC:
        return "UniPCMultistepScheduler", {"num_train_timesteps": config.num_train_timesteps,
                                           "prediction_type": "flow_prediction", "use_flow_sigmas": True,
                                           "flow_shift": config.flow_shift or 1.0, **config.extra}
    class_name, added, drops_zero_snr, _ = _TABLE[name]
    kwargs: dict[str, Any] = {"prediction_type": config.prediction_type}
    if not drops_zero_snr:
        kwargs["rescale_betas_zero_snr"] = config.rescale_betas_zero_snr
    spacing = config.timestep_spacing
    if spacing == "auto":
        spacing = "trailing" if config.rescale_betas_zero_snr else "leading"
    kwargs["timestep_spacing"] = spacing
    if config.v1_5_betas:
        kwargs.update(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    else:
        betas = {k: getattr(config, k) for k in DEFAULT_BETAS}
        if betas != DEFAULT_BETAS:
            kwargs.update(betas)
    if config.snr_shift_scale is not None:
        kwargs["snr_shift_scale"] = config.snr_shift_scale
    kwargs.update(added)
    kwargs.update(config.extra)
    return class_name, kwargs


class TwoStepScheduler:
    """A scheduler whose ``step`` needs the previous step's clean-sample prediction and timestep
    (``CogVideoXDPMScheduler.step(model_output, old_pred_original_sample, timestep, timestep_back, sample)``)
    behind the usual ``step(model_output, timestep, sample)``: it keeps both between steps, as
    ``CogVideoXPipeline``'s loop does, and forgets them at ``set_timesteps``. Everything else (timesteps,
    ``init_noise_sigma``, ``save_pretrained``, ``config``) is the wrapped scheduler's.

    The step is stochastic and works element by element: video latents (``B x C x T x H x W``) are stepped
    frames-first (``B x T x C x H x W``, CogVideoX's own layout), so the step noise drawn from a seeded
    generator is laid out as ``CogVideoXPipeline`` draws it and a seed gives the pipeline's video."""

    def __init__(self, scheduler: Any) -> None:
        self.scheduler = scheduler
        self._previous_prediction: Any = None
        self._previous_timestep: Any = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["scheduler"], name)

    def set_timesteps(self, *args: Any, **kwargs: Any) -> Any:
        self._previous_prediction = self._previous_timestep = None
        return self.scheduler.set_timesteps(*args, **kwargs)

    def step(self, model_output: Any, timestep: Any, sample: Any, eta: float = 0.0, generator: Any = None,
             return_dict: bool = False) -> tuple[Any]:
        """The previous sample (a tuple, like diffusers' ``return_dict=False``)."""
        video = sample.ndim == 5
        if video:
            model_output, sample = model_output.transpose(1, 2), sample.transpose(1, 2)
        prev_sample, prediction = self.scheduler.step(model_output, self._previous_prediction, timestep,
                                                      self._previous_timestep, sample, eta=eta, generator=generator,
                                                      return_dict=False)
        self._previous_prediction, self._previous_timestep = prediction, timestep
        return (prev_sample.transpose(1, 2) if video else prev_sample,)


def _factory(name: str):
    def build(config: SamplerConfig, **_: Any) -> Any:
        class_name, kwargs = scheduler_kwargs(name, config)
        cls = getattr(importlib.import_module("diffusers"), class_name)
        accepted = inspect.signature(cls.__init__).parameters
        ignored = sorted(k for k in kwargs if k not in accepted and k not in config.extra)
        scheduler = cls(**{k: v for k, v in kwargs.items() if k not in ignored})
        if name in TWO_STEP:
            scheduler = TwoStepScheduler(scheduler)
        # options this scheduler cannot honour (e.g. zero-SNR on Heun); `osctl sample` warns about them
        scheduler.osctl_ignored_options = {k: kwargs[k] for k in ignored}
        return scheduler

    build.__doc__ = f"Build the {name} sampler from its config."
    return build


@osctl.hookimpl
def register_samplers(register: Any) -> None:
    """Register the twelve reference samplers, CogVideoX's DPM-Solver and the flow-matching ones."""
    for name, (class_name, _, _, summary) in _TABLE.items():
        register(osctl.ComponentSpec(name=name, summary=f"{summary} [diffusers {class_name}]",
                                     factory=_factory(name), config=SamplerConfig))
    register(osctl.ComponentSpec(name=FLOW_MATCH, summary="flow-matching Euler [diffusers FlowMatchEulerDiscreteScheduler]",
                                 factory=_factory(FLOW_MATCH), config=SamplerConfig,
                                 metadata={"objective": "flow_matching"}))
    register(osctl.ComponentSpec(name=FLOW_UNIPC, summary="UniPC multistep on flow sigmas with flow_shift (Wan's "
                                 "released sampler) [diffusers UniPCMultistepScheduler]",
                                 factory=_factory(FLOW_UNIPC), config=SamplerConfig,
                                 metadata={"objective": "flow_matching"}))
