"""WF-VAE plugin: golden parity with OSP v1.3.1 (moments, posterior, latents, decode, tiling), loading
paths (diffusers folder, training *.ckpt, save/load round trip), errors, and a meta-device build."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import osctl
from osctl.geometry import AutoencoderGeometry
from osctl.plugin_manager import build_registry, new_plugin_manager
from osctl.protocols import Autoencoder
from osctl_builtin.autoencoders.wfvae.model import WFVAEModel
from osctl_builtin.autoencoders.wfvae.register import WFVAEConfig
from osctl_builtin.autoencoders.wfvae.wrapper import PRESETS

ATOL = 2e-5


@pytest.fixture(scope="module")
def registry():
    return build_registry(new_plugin_manager())


@pytest.fixture
def fixtures(golden: Path) -> dict[str, dict[str, torch.Tensor]]:
    root = golden / "vae"
    return {name: load_file(root / f"{name}.safetensors") for name in ("inputs", "outputs", "outputs_long")}


@pytest.fixture
def vae_dir(golden: Path) -> Path:
    return golden / "vae" / "vae"


def build(registry, **options):
    return registry.build("autoencoder", "wfvae", options)


def close(actual: torch.Tensor, expected: torch.Tensor, atol: float = ATOL) -> None:
    assert actual.shape == expected.shape
    torch.testing.assert_close(actual, expected, atol=atol, rtol=0)


def test_registered_with_alias_and_its_latent_geometry(registry):
    assert registry.get("autoencoder", "WFVAEModel_D8_4x8x8").name == "wfvae"
    config = registry.make_config("autoencoder", "wfvae", {}, where="autoencoder")
    assert isinstance(config, WFVAEConfig)
    assert config.autoencoder_geometry() == AutoencoderGeometry(stride_t=4, stride_hw=8, latent_channels=8)
    assert config.path is None and config.enable_tiling is False and (config.t_chunk_enc, config.t_chunk_dec) == (16, 4)


def test_encoder_moments_and_posterior(registry, vae_dir, fixtures):
    ae = build(registry, path=str(vae_dir))
    inputs, outputs = fixtures["inputs"], fixtures["outputs"]
    with torch.no_grad():
        posterior = ae.vae.encode(inputs["video"])
    close(posterior.parameters, outputs["encoder_moments"])
    close(posterior.mean, outputs["posterior_mean"])
    close(posterior.logvar, outputs["posterior_logvar"])
    close(posterior.std, outputs["posterior_std"])
    close(posterior.sample(noise=inputs["posterior_noise"]), outputs["posterior_sample"])


def test_wrapper_encode_normalises_with_config_shift_and_scale(registry, vae_dir, fixtures):
    ae = build(registry, path=str(vae_dir))
    inputs, outputs = fixtures["inputs"], fixtures["outputs"]
    config = json.loads((vae_dir / "config.json").read_text())
    shift = torch.tensor(config["shift"]).view(1, -1, 1, 1, 1)
    scale = torch.tensor(config["scale"]).view(1, -1, 1, 1, 1)
    with torch.no_grad():
        latent = ae.encode(inputs["video"], noise=inputs["posterior_noise"])
        mean_latent = ae.encode(inputs["video"], sample=False)
    close(latent, outputs["wrapper_encode_latent"])
    close(mean_latent, (outputs["posterior_mean"] - shift) * scale)
    assert (ae.latent_channels, ae.temporal_stride, ae.spatial_stride) == (8, 4, 8)
    assert isinstance(ae, Autoencoder) and isinstance(ae, torch.nn.Module)


def test_decode_and_wrapper_decode(registry, vae_dir, fixtures):
    ae = build(registry, path=str(vae_dir))
    outputs = fixtures["outputs"]
    with torch.no_grad():
        close(ae.vae.decode(outputs["posterior_mean"]), outputs["decode_of_mean"])
        video = ae.decode(outputs["wrapper_encode_latent"])  # B C T H W (the reference returns B T C H W)
    close(video.permute(0, 2, 1, 3, 4), outputs["wrapper_decode_of_wrapper_latent"])


def test_long_clip_plain_and_tiled(registry, vae_dir, fixtures):
    video, long = fixtures["inputs"]["video_long"], fixtures["outputs_long"]
    plain = build(registry, path=str(vae_dir))
    tiled = build(registry, path=str(vae_dir), enable_tiling=True)
    assert tiled.tiling and not plain.tiling
    assert WFVAEModel.chunk_bounds(25, 16) == [(0, 1), (1, 17), (17, 25)]
    assert WFVAEModel.chunk_bounds(13, 4) == [(0, 1), (1, 5), (5, 9), (9, 13)]
    with torch.no_grad():
        moments_plain = plain.vae.encode(video).parameters
        moments_tiled = tiled.vae.encode(video).parameters
        decoded_plain = plain.vae.decode(long["posterior_mean_plain"])
        decoded_tiled = tiled.vae.decode(long["posterior_mean_plain"])
    close(moments_plain, long["encoder_moments_plain"])
    close(moments_plain[:, :8], long["posterior_mean_plain"])
    close(decoded_plain, long["decode_of_plain_mean_plain"])
    close(moments_tiled, long["encoder_moments_tiled"])
    close(moments_tiled[:, :8], long["posterior_mean_tiled"])
    close(decoded_tiled, long["decode_of_plain_mean_tiled"])
    close(moments_tiled, moments_plain)
    close(decoded_tiled, decoded_plain)


def test_short_clip_tiled(registry, vae_dir, fixtures):
    ae = build(registry, path=str(vae_dir), enable_tiling=True)
    with torch.no_grad():
        close(ae.vae.encode(fixtures["inputs"]["video"]).parameters, fixtures["outputs_long"]["short_encoder_moments_tiled"])
        close(ae.vae.decode(fixtures["outputs"]["posterior_mean"]), fixtures["outputs_long"]["short_decode_of_mean_tiled"])


@pytest.mark.parametrize("frames", [5, 13])
def test_tiling_is_lossless_for_any_chunk_sizes(registry, frames):
    ae = build(registry, preset="tiny", seed=3)
    generator = torch.Generator().manual_seed(0)
    video = torch.rand(1, 3, frames, 16, 16, generator=generator) * 2 - 1
    latents = torch.randn(1, 8, (frames - 1) // 4 + 1, 2, 2, generator=generator)
    with torch.no_grad():
        ref_z, ref_x = ae.encode(video, sample=False), ae.decode(latents)
        for t_enc, t_dec in [(2, 1), (4, 2), (6, 3)]:
            ae.enable_tiling(t_chunk_enc=t_enc, t_chunk_dec=t_dec)
            close(ae.encode(video, sample=False), ref_z)
            close(ae.decode(latents), ref_x)
    ae.disable_tiling()
    assert not ae.tiling
    with pytest.raises(ValueError, match="even"):
        ae.enable_tiling(t_chunk_enc=3)


def test_encode_uses_rng_only_for_sampling(registry):
    ae = build(registry, preset="tiny")
    video = torch.zeros(1, 3, 5, 16, 16)
    torch.manual_seed(123)
    with torch.no_grad():
        ae.encode(video, sample=False)
    assert torch.equal(torch.randn(4), torch.manual_seed(123) and torch.randn(4))
    with torch.no_grad():
        a = ae.encode(video, generator=torch.Generator().manual_seed(7))
        b = ae.encode(video, generator=torch.Generator().manual_seed(7))
        torch.manual_seed(5)
        c = ae.encode(video)
        posterior = ae.posterior(video)
    assert torch.equal(a, b)
    torch.manual_seed(5)
    noise = torch.randn(posterior.mean.shape)
    close(c, (posterior.sample(noise=noise) - ae.shift) * ae.scale, atol=0)


def test_save_load_round_trip_is_exact(registry, vae_dir, tmp_path):
    ae = build(registry, path=str(vae_dir))
    ae.vae.save_pretrained(tmp_path / "saved")
    again = build(registry, path=str(tmp_path / "saved"))
    def public(config):
        return {k: v for k, v in dict(config).items() if not k.startswith("_")}

    assert public(again.vae.config) == public(ae.vae.config)
    original, loaded = ae.vae.state_dict(), again.vae.state_dict()
    assert original.keys() == loaded.keys()
    assert all(torch.equal(original[k], loaded[k]) for k in original)
    video = torch.rand(1, 3, 5, 16, 16) * 2 - 1
    with torch.no_grad():
        assert torch.equal(ae.encode(video, sample=False), again.encode(video, sample=False))


def test_state_dict_names_equal_the_reference(vae_dir):
    from safetensors import safe_open

    with safe_open(str(vae_dir / "diffusion_pytorch_model.safetensors"), "pt") as f:
        reference = set(f.keys())
    model, info = WFVAEModel.from_pretrained(str(vae_dir), output_loading_info=True)  # low_cpu_mem_usage=True
    assert set(model.state_dict()) == reference
    assert not info["missing_keys"] and not info["unexpected_keys"]
    # A fresh build carries the same fixed Haar filters (literal 0.3536 for 3-D, 0.5 for 2-D) as the file.
    fresh = WFVAEModel.from_config(WFVAEModel.load_config(str(vae_dir))).state_dict()
    stored = load_file(vae_dir / "diffusion_pytorch_model.safetensors")
    fixed = [k for k in reference if "wavelet_tranform" in k]
    assert len(fixed) == 24 and all(torch.equal(fresh[k], stored[k]) for k in fixed)
    assert fresh["encoder.wavelet_tranform_l2.h_conv.conv.weight"].flatten()[0].item() == torch.tensor(0.3536).item()


@pytest.mark.parametrize("layout", ["ema_state_dict", "state_dict"])
def test_loads_a_training_ckpt_folder(registry, vae_dir, tmp_path, layout):
    reference = load_file(vae_dir / "diffusion_pytorch_model.safetensors")
    folder = tmp_path / "ckpt_vae"
    folder.mkdir()
    (folder / "config.json").write_text((vae_dir / "config.json").read_text())
    weights = {k: v for k, v in reference.items() if "wavelet_tranform" not in k}  # fixed filters may be absent
    if layout == "ema_state_dict":
        payload = {"ema_state_dict": {f"module.{k}": v for k, v in weights.items()}, "state_dict": {}}
    else:
        payload = {"state_dict": weights}
    torch.save(payload, folder / "checkpoint-100.ckpt")
    ae = build(registry, path=str(folder))
    loaded = ae.vae.state_dict()
    assert all(torch.equal(loaded[k], reference[k]) for k in reference)


def test_meta_device_build_counts_parameters_without_allocating(golden):
    manifest = json.loads((golden / "vae" / "manifest.json").read_text())
    kwargs = {k: v for k, v in manifest["constructor_kwargs"].items()}
    with torch.device("meta"):
        tiny = WFVAEModel(**kwargs)
        released = WFVAEModel(**PRESETS["released"])
    for model in (tiny, released):
        assert all(t.is_meta for t in [*model.parameters(), *model.buffers()])
    assert sum(p.numel() for p in tiny.parameters()) == manifest["num_parameters"] == 604_884
    # base_channels 128, energy flow 64 (encoder) / 128 (decoder); 64 of them are the frozen Haar filters.
    assert sum(p.numel() for p in released.parameters()) == 147_347_724
    assert sum(p.numel() for p in released.parameters() if not p.requires_grad) == 64


def test_dtype_and_shapes(registry):
    ae = build(registry, preset="tiny")
    ae_bf16 = registry.build("autoencoder", "wfvae", {"preset": "tiny"}, dtype="bf16")
    video = torch.rand(2, 3, 5, 24, 16) * 2 - 1
    with torch.no_grad():
        z = ae.encode(video)
        z16 = ae_bf16.encode(video, sample=False)
        x = ae.decode(z)
    assert z.shape == (2, 8, 2, 3, 2) and z16.dtype == torch.bfloat16
    assert x.shape == video.shape and x.dtype == torch.float32


@pytest.mark.parametrize("shape, match", [((1, 3, 8, 16, 16), "4k\\+1"), ((1, 3, 9, 20, 16), "multiple of 8"),
                                          ((1, 4, 9, 16, 16), "B x 3 x T")])
def test_bad_video_shapes_raise(registry, shape, match):
    ae = build(registry, preset="tiny")
    with pytest.raises(ValueError, match=match):
        ae.encode(torch.zeros(shape))


def test_path_errors_name_the_file(registry, tmp_path, vae_dir):
    def error_for(path):
        with pytest.raises(osctl.ConfigError) as info:
            build(registry, **({} if path is None else {"path": str(path)}))
        assert info.value.hint
        return str(info.value)

    assert "autoencoder.path is not set" in error_for(None)
    assert "does not exist" in error_for(tmp_path / "nowhere")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert str(empty / "config.json") in error_for(empty)
    dit = tmp_path / "dit"
    dit.mkdir()
    (dit / "config.json").write_text(json.dumps({"_class_name": "OpenSoraT2V_v1_3"}))
    assert "not a WFVAEModel" in error_for(dit)
    no_weights = tmp_path / "no_weights"
    no_weights.mkdir()
    (no_weights / "config.json").write_text((vae_dir / "config.json").read_text())
    assert "no weights" in error_for(no_weights)
    with pytest.raises(osctl.ConfigError, match="not both"):
        registry.make_config("autoencoder", "wfvae", {"path": str(vae_dir), "preset": "tiny"}, where="autoencoder")
    with pytest.raises(osctl.ConfigError, match="t_chunk_enc"):
        registry.make_config("autoencoder", "wfvae", {"t_chunk_enc": 7}, where="autoencoder")
