"""`osctl data cache` with the diffusers families: text states are stored trimmed to each prompt exactly where the
model declares that it ignores the padding (``ignores_text_padding``). CogVideoX (T5 without a mask, no text mask
in the transformer) keeps them whole and refuses a trimmed cache; LTX-Video (the same unmasked T5, but a -10000
cross-attention bias), Wan (states zeroed past the prompt) and HunyuanVideo (boolean masks) store them trimmed,
and their training steps from the trimmed cache equal, bit for bit in fp32, the steps from a cache of the same
samples holding the encoder's whole padded states. Every family's training from its cache equals training that
encodes on the fly (within float32 rounding of batched vs one-sample encoding): the families' autoencoders give the
cache their posterior (``latent_moments``), and training draws the same latents from it as ``encode`` draws."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from osctl.cache.build import BuildOptions, build_cache
from osctl.cache.inspect import inspect_cache
from osctl.cache.reader import CacheReader
from osctl.errors import ConfigError
from osctl.recipe.load import load_recipe
from osctl.recipe.validate import check_recipe
from osctl.synth.shapes import synth_shapes
from osctl.train.loop import train
from osctl.train.run import TrainOptions, setup_training
from tests.family_helpers import (
    family_registry,
    tiny_cogvideox_pipeline,
    tiny_hunyuan_pipeline,
    tiny_ltx_pipeline,
)
from tests.wan_helpers import tiny_pipeline as tiny_wan_pipeline

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
DATA = """
data:
  data: {data}
  num_frames: 9
  train_fps: 4
  min_frames: 5
  drop_short_ratio: 0.0
  force_resolution: true
  max_height: {size}
  max_width: {size}
  hw_stride: {size}
  group_data: true
  min_bucket_batches: 0
  num_workers: 0
  captions: {{cfg: 0.2, clean: false}}
  cache: {{dtype: fp32, shard_samples: 4}}
train: {{output_dir: {out}, max_steps: 2, train_batch_size: 2, learning_rate: 1.0e-3, mixed_precision: fp32,
        checkpointing_steps: 100, log_interval: 1, seed: 5, use_ema: false}}
parallel: {{strategy: single}}
"""
#: family -> (its recipe head, the frame size its autoencoder and patch take, how text states are stored)
FAMILIES = {
    "cogvideox": ("extends: {base}/cogvideox.yaml\nmodel: {{gradient_checkpointing: false}}\n"
                  "text_encoder: {{max_length: 80}}\n", 32, "whole"),
    "ltx_video": ("extends: {base}/ltx-video.yaml\nmodel: {{gradient_checkpointing: false, frame_rate: 24}}\n"
                  "text_encoder: {{max_length: 80}}\n", 64, "trimmed"),
    "wan": ("model: {{name: wan}}\nautoencoder: {{name: wan_vae}}\n"
            "text_encoder: {{name: t5, max_length: 80, prompt_clean: wan}}\n"
            "diffusion: {{objective: flow_matching, flow_shift: 3.0}}\nsample: {{sample_method: UniPCMultistep}}\n",
            32, "trimmed"),
    "hunyuan_video": ("model: {{name: hunyuan_video}}\nautoencoder: {{name: hunyuan_vae}}\n"
                      "text_encoder: {{name: hunyuan_text, crop_start: {crop}, max_length: 24}}\n"
                      "diffusion: {{objective: flow_matching, flow_shift: 7.0}}\n"
                      "sample: {{sample_method: FlowMatchEulerDiscrete}}\n", 32, "trimmed"),
}


def _pipeline(family: str, folder: Path) -> tuple[Path, int]:
    """The family's tiny pipeline and, for HunyuanVideo, its template's token count."""
    if family == "cogvideox":
        return tiny_cogvideox_pipeline(folder), 0
    if family == "ltx_video":
        return tiny_ltx_pipeline(folder), 0
    if family == "wan":
        return tiny_wan_pipeline(folder), 0
    from transformers import AutoTokenizer

    from osctl_builtin.text_encoders.hunyuan import TEMPLATE

    pipe = tiny_hunyuan_pipeline(folder)
    return pipe, len(AutoTokenizer.from_pretrained(pipe / "tokenizer")(TEMPLATE)["input_ids"]) - 2


@pytest.mark.parametrize("family", list(FAMILIES))
def test_text_states_are_trimmed_only_where_the_model_ignores_padding(tmp_path, monkeypatch, family):
    head, size, storage = FAMILIES[family]
    pipe, crop = _pipeline(family, tmp_path / "pipe")
    synth_shapes(tmp_path / "shapes", videos=4, images=2, seed=0)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"pipeline_path: {pipe}\n" + head.format(base=REPO / "recipes" / "base", crop=crop)
                      + DATA.format(data=tmp_path / "shapes" / "data.txt", size=size, out=tmp_path / "out"))
    registry = family_registry()

    def checked(out: str, cache: str, *overrides: str):
        return check_recipe(load_recipe(recipe, [f"train.output_dir={tmp_path / out}",
                                                 f"data.cache.dir={tmp_path / cache}", *overrides]), registry)

    build_cache(checked("build", "declared"), registry, BuildOptions())
    assert CacheReader(tmp_path / "declared").manifest["latents"]["exact"] is True  # the posterior, not its mean
    # from the cache == encoding on the fly (the same samples, noise and timesteps)
    runs = {}
    for out, mode in (("fly", "off"), ("cached", "require")):
        parts = setup_training(checked(out, "declared", f"data.cache.mode={mode}"), registry, TrainOptions())
        runs[out] = (parts, train(parts))
    # (within float32 rounding: the cache encodes one sample at a time, training a batch, and the CPU's matmul and
    # convolution kernels round differently for other batch sizes; before the families' autoencoders gave their
    # posterior, the cache held its mean and the first loss was 0.94 against 2.03)
    cached, fly = runs["cached"][1].losses, runs["fly"][1].losses
    # (the second loss is after an AdamW step, which magnifies rounding in gradients near zero: losses only)
    assert len(fly) == 2 and all(abs(a - b) <= 1e-5 * abs(b) for a, b in zip(cached, fly, strict=True)), (cached, fly)
    other = "whole" if storage == "trimmed" else "trimmed"
    with monkeypatch.context() as patch:  # the same data stored the other way
        patch.setattr("osctl.cache.build.text_storage", lambda model_config: other)
        build_cache(checked("build", "other"), registry, BuildOptions())
    report = inspect_cache(tmp_path / "declared")["text_states"]
    reader = CacheReader(tmp_path / "declared")
    lengths, padded = reader.texts["length"], reader.text_shape[0]
    assert report["storage"] == storage
    if storage == "whole":  # CogVideoX: the padding is part of the condition; a trimmed cache is refused
        assert (lengths == padded).all() and report["bytes"]["stored"] == report["bytes"]["padded"]
        with pytest.raises(ConfigError, match="trimmed to each prompt but the recipe's model reads the padding"):
            setup_training(checked("refused", "other", "data.cache.mode=require"), registry, TrainOptions())
        return
    assert lengths.min() < padded and report["bytes"]["stored"] < report["bytes"]["padded"]
    whole = CacheReader(tmp_path / "other")
    assert (whole.texts["length"] == padded).all()
    for sample in range(len(reader)):  # the restored padding is zeros; the prompt's tokens are the encoder's
        start, count = int(reader.samples["text_start"][sample]), int(reader.samples["text_count"][sample])
        for row in range(start, start + count):
            n = int(lengths[row])
            states, mask = reader.shards.text(int(reader.samples["shard"][sample]), int(reader.texts["offset"][row]),
                                              n, reader.text_shape, reader.dtype)
            full, full_mask = whole.shards.text(int(whole.samples["shard"][sample]), int(whole.texts["offset"][row]),
                                                padded, whole.text_shape, whole.dtype)
            assert torch.equal(mask, full_mask) and not mask[n:].any() and mask[n - 1] == 1
            assert torch.equal(states[:n], full[:n]) and not states[n:].any()
    # a whole cache also serves the model; both give the same steps, bit for bit
    runs = []
    for out, cache in (("trimmed", "declared"), ("whole", "other")):
        parts = setup_training(checked(out, cache, "data.cache.mode=require"), registry, TrainOptions())
        runs.append((parts, train(parts)))
    (trimmed, from_trimmed), (whole_parts, from_whole) = runs
    assert from_trimmed.losses == from_whole.losses and len(from_whole.losses) == 2
    for (name, a), (_, b) in zip(trimmed.strategy.module.state_dict().items(),
                                 whole_parts.strategy.module.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
