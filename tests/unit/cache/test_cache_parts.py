"""The cache's small parts: caption variants cover every training text, view choice draws nothing, the
posterior split reproduces the autoencoder's encode bit for bit, identities and spec differences."""

from __future__ import annotations

import os
import random

import numpy as np
import pytest
import torch

from osctl.cache.identity import component_identity
from osctl.cache.spec import TEXT_TRIMMED, TEXT_WHOLE, VERSION, differences, make_spec, text_storage
from osctl.cache.views import RecordingRandom, frames_are_random, view_choice, view_rng
from osctl.data.records import KIND_IMAGE, KIND_VIDEO
from osctl.data.stream.captions import CaptionPolicy, caption_variants, training_text
from osctl.latent_moments import LatentMoments


@pytest.mark.parametrize(("score", "kind", "count"), [(9.0, KIND_VIDEO, 40), (1.0, KIND_IMAGE, 40), (5.0, KIND_VIDEO, 2),
                                                      (None, KIND_VIDEO, 2)])
def test_caption_variants_hold_every_text_training_can_draw(score, kind, count):
    policy = CaptionPolicy(cfg=0.3, clean=True)
    captions = ["A red <b>circle</b> moves left.", "a red circle, moving to the left"]
    variants = caption_variants(captions, score, kind, policy)
    assert len(variants) == len(set(variants)) == count
    drawn = {training_text(captions, score, kind, policy, random.Random(seed)) for seed in range(3000)}
    assert "" in drawn and drawn - {""} == set(variants)


def test_the_view_choice_draws_nothing_from_the_tickets_generator():
    rng = random.Random(5)
    before = rng.getstate()
    picks = [view_choice(random.Random(seed), 4) for seed in range(400)]
    assert view_choice(rng, 4) == view_choice(random.Random(5), 4) and rng.getstate() == before
    assert set(picks) == {0, 1, 2, 3} and view_choice(rng, 1) == 0
    assert view_rng(1, 2, 3).random() == view_rng(1, 2, 3).random() != view_rng(1, 2, 4).random()


def test_frames_are_random_when_the_loader_draws_a_temporal_crop():
    class Stub:
        def frame_indices(self, sample, rng):
            return np.arange(rng.randint(0, 3) if sample else 0, 5)

    recording = RecordingRandom()
    recording.randint(0, 1)
    assert recording.used
    assert frames_are_random(Stub(), 1) and not frames_are_random(Stub(), 0)


def test_the_wfvae_encode_is_its_posterior_draw_bit_for_bit():
    from osctl_builtin.autoencoders.wfvae.wrapper import WFVAEAutoencoder

    ae = WFVAEAutoencoder.from_preset("tiny", dtype=torch.float32)
    video = torch.rand(2, 3, 5, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        encoded = ae.encode(video, sample=True, generator=torch.Generator().manual_seed(9))
        posterior = ae.posterior(video)
        moments = ae.latent_moments(video)
    stored = LatentMoments(mean=moments.mean.clone(), std=moments.std.clone(), shift=torch.tensor(
        moments.shift.tolist()), scale=torch.tensor(moments.scale.tolist()))
    assert torch.equal(stored.latents(generator=torch.Generator().manual_seed(9)), encoded)
    # the formula the wrapper used before the split, written out
    noise = torch.randn(posterior.mean.shape, generator=torch.Generator().manual_seed(9))
    assert torch.equal(((posterior.mean + posterior.std * noise) - ae.shift) * ae.scale, encoded)
    assert torch.equal(stored.latents(sample=False), ae.encode(video, sample=False))


def test_a_components_identity_follows_its_weights_content_not_their_place(tmp_path):
    from pydantic import BaseModel

    class Config(BaseModel):
        path: str
        seed: int = 0
        cache_dir: str | None = None

    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "diffusion_pytorch_model.safetensors").write_bytes(b"weights")
        (tmp_path / name / "config.json").write_text("{}")
    a = component_identity("vae", Config(path=str(tmp_path / "a"), cache_dir="x"))
    b = component_identity("vae", Config(path=str(tmp_path / "b"), cache_dir="y"))
    assert (a["config_sha256"], a["weights_sha256"]) == (b["config_sha256"], b["weights_sha256"]) != \
        (a["config_sha256"], "none")
    assert component_identity("vae", Config(path=str(tmp_path / "a"), seed=1))["config_sha256"] != a["config_sha256"]
    (tmp_path / "b" / "diffusion_pytorch_model.safetensors").write_bytes(b"other!!")
    assert component_identity("vae", Config(path=str(tmp_path / "b")))["weights_sha256"] != a["weights_sha256"]
    # an unchanged file (size and time) keeps its recorded digest: no re-hashing
    recorded = {"files": [{**entry, "sha256": "f" * 64} for entry in a["files"]]}
    again = component_identity("vae", Config(path=str(tmp_path / "a")), recorded=recorded)
    assert {e["sha256"] for e in again["files"]} == {"f" * 64}
    os.utime(tmp_path / "a" / "config.json", ns=(1, 1))
    assert "f" * 64 not in {e["sha256"] for e in component_identity(
        "vae", Config(path=str(tmp_path / "a")), recorded=recorded)["files"] if e["path"].endswith("config.json")}


def test_differences_name_the_recipe_key_and_both_values():
    part = {"name": "wfvae", "config_sha256": "c", "weights_sha256": "w", "dtype": "float32"}
    base = make_spec(index={"samples": 3, "content_sha256": "i"}, recipe={"data.captions.cfg": 0.1},
                     autoencoder=part, text_encoder={**part, "name": "t5"}, shard_samples=4)
    other = make_spec(index={"samples": 3, "content_sha256": "i"}, recipe={"data.captions.cfg": 0.2},
                      autoencoder={**part, "weights_sha256": "v"}, text_encoder={**part, "name": "tiny_t5"},
                      shard_samples=8)
    lines = differences(base, other)
    assert lines == ["data.captions.cfg is 0.1 in the cache and 0.2 in the recipe",
                     "the autoencoder's weight files differ from the ones the cache was built with",
                     "text_encoder.name is 't5' in the cache and 'tiny_t5' in the recipe"]
    assert differences(base, base) == [] and "shard_samples is 4" in differences(base, other, storage=True)[-1]
    assert "format" in differences({"format": "x"}, base)[0]


def test_text_states_are_trimmed_for_the_models_that_declare_they_ignore_the_padding():
    from pydantic import BaseModel

    from osctl_builtin.models.cogvideox.register import CogVideoXConfig
    from osctl_builtin.models.hunyuan_video.register import HunyuanVideoConfig
    from osctl_builtin.models.ltx_video.register import LTXVideoConfig
    from osctl_builtin.models.osp_v13.register import OSPv13Config
    from osctl_builtin.models.wan.register import WanConfig

    trimmed = [OSPv13Config(preset="tiny"), WanConfig(preset="tiny"), LTXVideoConfig(preset="tiny"),
               HunyuanVideoConfig(preset="tiny")]
    assert {text_storage(config) for config in trimmed} == {TEXT_TRIMMED}
    class Undeclared(BaseModel):
        preset: str = "mine"

    # CogVideoX attends to its padding; a model that declares nothing keeps them whole too
    assert text_storage(CogVideoXConfig(preset="tiny-rope")) == text_storage(Undeclared()) == TEXT_WHOLE
    assert text_storage(None) == TEXT_WHOLE


def test_a_trimmed_cache_serves_only_a_model_that_ignores_padding_and_an_old_format_is_refused():
    part = {"name": "wfvae", "config_sha256": "c", "weights_sha256": "w", "dtype": "float32"}

    def spec(text_states: str) -> dict:
        return make_spec(index={"samples": 3, "content_sha256": "i"}, recipe={}, autoencoder=part, text_encoder=part,
                         shard_samples=4, text_states=text_states)

    trimmed, whole = spec(TEXT_TRIMMED), spec(TEXT_WHOLE)
    assert differences(whole, trimmed) == []  # whole states serve any model
    assert differences(trimmed, whole) == ["the cache stores text states trimmed to each prompt but the recipe's "
                                           "model reads the padding tokens' states too (its config's "
                                           "ignores_text_padding() is not true)"]
    assert "stores them trimmed" in differences(whole, trimmed, storage=True)[0]  # a build does not mix the two
    assert differences({**trimmed, "version": 1}, trimmed) == [
        f"the cache has format 'osctl.data-cache' version 1 and this osctl reads 'osctl.data-cache' version {VERSION}"]


@pytest.mark.parametrize(("value", "mode"), [("require", "require"), (False, "off"), ({"mode": False}, "off"),
                                             ({"views": 2}, "auto")])
def test_data_cache_takes_a_mode_word_or_a_section(value, mode):
    from osctl.recipe.schema import DataSection

    assert DataSection(cache=value).cache.mode == mode
