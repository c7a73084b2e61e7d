"""The training objective reproduces the reference's loss fixture and timestep sampler."""

from __future__ import annotations

import json
import random

import pytest
import torch
from safetensors.torch import load_file

from osctl.train.objective import DDPMObjective, FlowMatchingObjective, NoisedBatch, stratified_timesteps


@pytest.fixture(scope="module")
def fixture(golden):
    return load_file(golden / "loss" / "loss.safetensors"), json.loads((golden / "loss" / "manifest.json").read_text())


def objective(snr_gamma=None):
    return DDPMObjective(prediction_type="v_prediction", rescale_betas_zero_snr=True, snr_gamma=snr_gamma)


def test_schedule_tables_match(fixture):
    tensors, _ = fixture
    obj = objective()
    torch.testing.assert_close(obj.scheduler.alphas_cumprod, tensors["alphas_cumprod"], rtol=0, atol=0)
    torch.testing.assert_close(obj.scheduler.betas, tensors["betas"], rtol=0, atol=0)


@pytest.mark.parametrize("offset", ["0.0", "0.1"])
@pytest.mark.parametrize("mask_name", ["mask_all_ones", "mask_partial", "no_mask"])
@pytest.mark.parametrize("gamma", ["5.0", "None"])
def test_loss_matches_the_reference(fixture, offset, mask_name, gamma):
    tensors, manifest = fixture
    obj = objective(None if gamma == "None" else float(gamma))
    timesteps = tensors["timesteps"]
    noise = tensors["base_noise"] + float(offset) * tensors["noise_offset_draw"] if offset != "0.0" else tensors["base_noise"]
    torch.testing.assert_close(noise, tensors[f"offset{offset}/noise"], rtol=1e-6, atol=1e-7)
    batch = obj.add_noise(tensors["latents"], noise, timesteps)
    torch.testing.assert_close(batch.noisy, tensors[f"offset{offset}/noisy_latents"], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(batch.target, tensors[f"offset{offset}/target_v"], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(obj.snr(timesteps), tensors[f"offset{offset}/snr"], rtol=1e-6, atol=0)
    mask = None if mask_name == "no_mask" else tensors[mask_name]
    loss = obj.loss(tensors["model_pred"], batch, mask)
    expected = manifest["losses"][f"offset{offset}/{mask_name}/snr_gamma{gamma}"]
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_noise_offset_draw_shape():
    obj = DDPMObjective(noise_offset=0.1)
    latents = torch.zeros(2, 8, 3, 4, 4)
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    base = torch.randn(latents.shape, generator=g2)
    offset = torch.randn(2, 8, 1, 1, 1, generator=g2)
    torch.testing.assert_close(obj.sample_noise(latents, g1), base + 0.1 * offset)


def test_stratified_sampler_reproduces_the_reference_stream(fixture):
    _, manifest = fixture
    spec = manifest["timestep_sampler"]
    rng = random.Random(spec["python_random_seed"])
    for call in spec["calls"]:
        assert stratified_timesteps(rng, call["bsz"], call["rank"], call["n"]) == call["timesteps"]


def test_epsilon_and_sample_targets():
    latents, noise = torch.randn(2, 4, 1, 2, 2), torch.randn(2, 4, 1, 2, 2)
    t = torch.tensor([10, 500])
    eps = DDPMObjective(prediction_type="epsilon", snr_gamma=5.0)
    assert torch.equal(eps.add_noise(latents, noise, t).target, noise)
    sample = DDPMObjective(prediction_type="sample")
    batch = sample.add_noise(latents, noise, t)
    assert torch.equal(batch.target, latents)
    # the model predicts the clean latents, as samplers with prediction_type "sample" assume (the
    # reference's loss compared pred - noise instead, so its "sample" models could not be sampled)
    assert sample.loss(latents, batch).item() == 0.0
    assert sample.loss(latents + noise, batch).item() == pytest.approx(noise.pow(2).mean().item())


def test_flow_matching_objective_runs_and_is_zero_at_the_target():
    obj = FlowMatchingObjective()
    latents, noise = torch.randn(3, 4, 2, 2, 2), torch.randn(3, 4, 2, 2, 2)
    t = obj.sample_timesteps(3, random.Random(0))
    assert t.shape == (3,) and (t >= 0).all() and (t < 1000).all()
    batch: NoisedBatch = obj.add_noise(latents, noise, t)
    assert obj.loss(noise - latents, batch).item() == pytest.approx(0.0, abs=1e-7)
