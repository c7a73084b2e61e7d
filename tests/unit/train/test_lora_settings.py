"""Recipe keys of LoRA and memory: adapter references, sizes, and what needs a LoRA run."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from osctl.errors import UsageError
from osctl.recipe.schema import Recipe, SampleSection, TrainSection, parse_lora_ref
from osctl.train.memory import parse_size


@pytest.mark.parametrize(("text", "expected"), [
    ("out/checkpoint-5", {"path": "out/checkpoint-5"}),
    ("out/checkpoint-5:0.5", {"path": "out/checkpoint-5", "scale": 0.5}),
    ("style.safetensors:-1", {"path": "style.safetensors", "scale": -1.0}),
    ("weird:name/adapter", {"path": "weird:name/adapter"}),  # a colon that is not followed by a number
])
def test_lora_references(text, expected):
    assert parse_lora_ref(text) == expected


def test_sample_loras_accept_strings_and_mappings():
    section = SampleSection(loras=["a.safetensors:0.3", {"path": "b", "scale": 2}])
    assert [(str(r.path), r.scale) for r in section.loras] == [("a.safetensors", 0.3), ("b", 2.0)]


@pytest.mark.parametrize(("text", "expected"), [("24GB", 24 * 1024**3), ("80GiB", 80 * 1024**3),
                                                ("512MB", 512 * 1024**2), ("1.5T", int(1.5 * 1024**4)),
                                                ("16", 16 * 1024**3)])
def test_sizes(text, expected):
    assert parse_size(text) == expected


def test_a_bad_size_is_a_usage_error():
    with pytest.raises(UsageError, match="is not a size"):
        parse_size("lots")


@pytest.mark.parametrize("key", [{"base_dtype": "fp8_e4m3"}, {"offload": {"blocks": 2}}])
def test_frozen_base_options_need_lora(key):
    with pytest.raises(ValidationError, match="applies to the frozen base of a LoRA run"):
        TrainSection(**key)
    TrainSection(lora={"rank": 4}, **key)


def test_lora_defaults_and_bounds():
    lora = Recipe(train={"lora": {}}).train.lora
    assert (lora.rank, lora.alpha, lora.dropout, lora.target_modules, lora.init) == (16, 16.0, 0.0, None, "default")
    with pytest.raises(ValidationError):
        TrainSection(lora={"rank": 0})
    with pytest.raises(ValidationError):
        TrainSection(lora={"rank": 4}, offload={"blocks": -1})


def test_resuming_a_lora_run_does_not_warn_that_pretrained_is_ignored(tmp_path):
    from osctl.plugin_manager import default_registry
    from osctl.recipe.load import load_recipe
    from osctl.recipe.validate import check_recipe
    from tests.train_helpers import write_tiny_recipe

    recipe = write_tiny_recipe(tmp_path, tmp_path / "out", tmp_path / "cache")
    sets = ["train.pretrained=base.safetensors", "train.resume_from_checkpoint=latest"]
    full = check_recipe(load_recipe(recipe, sets), default_registry())
    lora = check_recipe(load_recipe(recipe, [*sets, "train.lora={rank: 4}"]), default_registry())
    assert any("pretrained is ignored" in w for w in full.warnings)
    assert not any("pretrained is ignored" in w for w in lora.warnings)
