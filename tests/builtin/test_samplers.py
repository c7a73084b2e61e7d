"""The twelve reference samplers: construction rules, one real denoising step each, golden replays."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from osctl.plugin_manager import build_registry, new_plugin_manager
from osctl.sample import scheduling

SAMPLERS = [
    "DDIM", "EulerDiscrete", "DDPM", "DPMSolverMultistep", "DPMSolverSinglestep", "PNDM", "HeunDiscrete",
    "EulerAncestralDiscrete", "DEISMultistep", "KDPM2AncestralDiscrete", "CogVideoX", "FlowMatchEulerDiscrete",
]


@pytest.fixture(scope="module")
def registry():
    return build_registry(new_plugin_manager())


def test_all_twelve_are_registered(registry):
    assert set(SAMPLERS) <= set(registry.names("sampler"))


@pytest.mark.parametrize("name", SAMPLERS)
@pytest.mark.parametrize("zero_snr", [False, True])
def test_each_sampler_steps(registry, name, zero_snr):
    options = {"prediction_type": "v_prediction" if zero_snr else "epsilon", "rescale_betas_zero_snr": zero_snr}
    scheduler = registry.build("sampler", name, options)
    scheduler.set_timesteps(4)
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(1, 4, 2, 4, 4, generator=generator) * scheduling.init_noise_sigma(scheduler)
    for t in scheduler.timesteps:
        model_input = scheduling.scale_model_input(scheduler, latents, t)
        fake_prediction = 0.1 * model_input
        latents = scheduling.step(scheduler, fake_prediction, t, latents, generator=generator)
    assert torch.isfinite(latents).all()
    assert latents.shape == (1, 4, 2, 4, 4)


@pytest.mark.parametrize("name", ["DDIM", "EulerAncestralDiscrete", "EulerDiscrete"])
def test_construction_matches_the_reference_config(registry, golden, name):
    reference = json.loads((golden / "pipeline" / f"scheduler_{name}" / "scheduler_config.json").read_text())
    scheduler = registry.build("sampler", name, {"prediction_type": "v_prediction", "rescale_betas_zero_snr": True})
    for key, value in reference.items():
        if not key.startswith("_"):
            assert scheduler.config[key] == value, key


def test_reference_construction_rules(registry):
    plain = registry.build("sampler", "EulerDiscrete", {})
    assert plain.config.timestep_spacing == "leading" and plain.config.prediction_type == "epsilon"
    pndm = registry.build("sampler", "PNDM", {"rescale_betas_zero_snr": True})
    assert pndm.config.timestep_spacing == "trailing"
    assert "rescale_betas_zero_snr" not in pndm.config  # PNDM ignores zero-SNR, as in the reference
    heun = registry.build("sampler", "HeunDiscrete", {"rescale_betas_zero_snr": True})
    assert heun.osctl_ignored_options == {"rescale_betas_zero_snr": True}
    deis = registry.build("sampler", "DEISMultistep", {"rescale_betas_zero_snr": True})
    assert not deis.config.get("rescale_betas_zero_snr", False)
    ddpm = registry.build("sampler", "DDPM", {})
    assert ddpm.config.clip_sample is False
    flow = registry.build("sampler", "FlowMatchEulerDiscrete", {"rescale_betas_zero_snr": True})
    assert type(flow).__name__ == "FlowMatchEulerDiscreteScheduler"
    sd15 = registry.build("sampler", "DDIM", {"v1_5_betas": True})
    assert sd15.config.beta_schedule == "scaled_linear" and sd15.config.beta_end == 0.012


@pytest.mark.parametrize("name", ["EulerDiscrete", "DDIM", "EulerAncestralDiscrete"])
def test_golden_pipeline_scheduler_replay(registry, golden, name):
    """Feeding the recorded transformer outputs through our sampler reproduces the reference latents."""
    run = load_file(golden / "pipeline" / f"run_{name}.safetensors")
    common = load_file(golden / "pipeline" / "common.safetensors")
    scheduler = registry.build("sampler", name, {"prediction_type": "v_prediction", "rescale_betas_zero_snr": True})
    scheduler.set_timesteps(4)
    assert scheduler.timesteps.tolist() == [999.0, 749.0, 499.0, 249.0]
    latents = common["initial_latents"] * scheduler.init_noise_sigma
    generator = torch.Generator().manual_seed(42) if name == "EulerAncestralDiscrete" else None
    for k, t in enumerate(scheduler.timesteps):
        model_input = scheduler.scale_model_input(torch.cat([latents, latents]), t)
        torch.testing.assert_close(model_input, run[f"step{k}/latent_model_input"], rtol=0, atol=0)
        uncond, cond = run[f"step{k}/noise_pred_cfg_batch"].chunk(2)
        guided = uncond + 7.5 * (cond - uncond)
        extra = {"eta": 0.0} if name == "DDIM" else {"generator": generator}
        latents = scheduler.step(guided, t, latents, **extra).prev_sample
        torch.testing.assert_close(latents, run[f"step{k}/latents_after_step"], rtol=0, atol=0)
    torch.testing.assert_close(latents, run["final_latents"], rtol=0, atol=0)


@pytest.mark.parametrize("sampler", ["DDIM", "EulerDiscrete", "DPMSolverMultistep"])
@pytest.mark.parametrize("prediction_type, zero_snr", [
    ("epsilon", False), ("v_prediction", False), ("v_prediction", True), ("sample", False), ("sample", True),
])
def test_the_prediction_training_rewards_is_what_the_sampler_needs(registry, sampler, prediction_type, zero_snr):
    """An oracle that returns exactly the training target (zero loss) must lead the sampler to the data."""
    from osctl.train.objective import DDPMObjective

    objective = DDPMObjective(prediction_type=prediction_type, rescale_betas_zero_snr=zero_snr)
    scheduler = registry.build("sampler", sampler, {"prediction_type": prediction_type,
                                                    "rescale_betas_zero_snr": zero_snr})
    scheduler.set_timesteps(25)
    x0 = torch.randn(1, 4, 2, 3, 3, generator=torch.Generator().manual_seed(1))
    z = torch.randn(x0.shape, generator=torch.Generator().manual_seed(2)) * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        model_input = scheduler.scale_model_input(z, t)
        a = objective.scheduler.alphas_cumprod[int(t)]
        noise = (model_input - a.sqrt() * x0) / (1 - a).sqrt()  # the noise that makes model_input x_t
        batch = objective.add_noise(x0, noise, torch.tensor([int(t)]))
        assert torch.allclose(batch.noisy, model_input, atol=1e-4)
        assert objective.loss(batch.target, batch).item() < 1e-10
        z = scheduler.step(batch.target, t, z).prev_sample
    assert torch.allclose(z, x0, atol=2e-3), (z - x0).abs().max()


def test_flow_matching_velocity_leads_the_flow_sampler_to_the_data(registry):
    from osctl.train.objective import FlowMatchingObjective

    objective = FlowMatchingObjective()
    scheduler = registry.build("sampler", "FlowMatchEulerDiscrete", {"prediction_type": "flow"})
    scheduler.set_timesteps(25)
    x0 = torch.randn(1, 4, 2, 3, 3, generator=torch.Generator().manual_seed(1))
    z = torch.randn(x0.shape, generator=torch.Generator().manual_seed(2))
    for i, t in enumerate(scheduler.timesteps):
        sigma = scheduler.sigmas[i]
        noise = (z - (1 - sigma) * x0) / sigma
        index = torch.tensor([round(float(t))]).clamp(max=999)
        target = objective.add_noise(x0, noise, objective.num_train_timesteps - 1 - index).target
        z = scheduler.step(target, t, z).prev_sample
    assert torch.allclose(z, x0, atol=1e-4), (z - x0).abs().max()


@pytest.mark.parametrize("name", SAMPLERS)
def test_a_batch_with_one_generator_per_video_equals_the_videos_sampled_alone(registry, name):
    """`sample.batch_size` must not change what a seed gives: every sampler draws each video's noise from its own generator."""
    options = ({"prediction_type": "flow"} if name == "FlowMatchEulerDiscrete"
               else {"prediction_type": "v_prediction", "rescale_betas_zero_snr": True})

    def run(seeds: list[int]) -> torch.Tensor:
        scheduler = registry.build("sampler", name, options)
        scheduler.set_timesteps(5)
        generators = [torch.Generator().manual_seed(s) for s in seeds]
        latents = torch.cat([torch.randn(1, 4, 2, 3, 3, generator=g) for g in generators])
        latents = latents * scheduling.init_noise_sigma(scheduler)
        for t in scheduler.timesteps:
            prediction = 0.1 * scheduling.scale_model_input(scheduler, latents, t)
            latents = scheduling.step(scheduler, prediction, t, latents,
                                      generator=generators if len(generators) > 1 else generators[0], eta=0.5)
        return latents

    alone = torch.cat([run([seed]) for seed in (3, 4, 5)])
    torch.testing.assert_close(run([3, 4, 5]), alone, rtol=0, atol=1e-5)
