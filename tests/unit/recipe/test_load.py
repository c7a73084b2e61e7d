"""Recipe loading: extends, overrides, and one-line errors that name the key or line."""

from __future__ import annotations

from pathlib import Path

import pytest

from osctl.errors import ConfigError
from osctl.recipe.load import load_recipe, parse_override


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_defaults_and_reference_values():
    recipe = load_recipe(None).recipe
    assert recipe.train.adam_epsilon == 1e-15
    assert recipe.sample.sample_method == "EulerAncestralDiscrete"
    assert recipe.sample.num_sampling_steps == 100 and recipe.sample.guidance_scale == 7.5
    assert recipe.data.min_frames == 29 and recipe.data.hw_stride == 32


def test_extends_is_relative_to_the_file_and_merges(tmp_path):
    write(tmp_path / "base" / "common.yaml", "train:\n  learning_rate: 1.0e-5\n  max_steps: 10\ndata:\n  num_frames: 29\n")
    child = write(tmp_path / "exp" / "child.yaml", "extends: ../base/common.yaml\ntrain:\n  max_steps: 20\n")
    loaded = load_recipe(child)
    assert loaded.recipe.train.learning_rate == 1e-5
    assert loaded.recipe.train.max_steps == 20
    assert loaded.recipe.data.num_frames == 29
    assert loaded.origin(("train", "max_steps")).endswith("child.yaml:3")
    assert loaded.origin(("train", "learning_rate")).endswith("common.yaml:2")


def test_component_section_switching_plugin_drops_parent_options(tmp_path):
    write(tmp_path / "a.yaml", "refiner:\n  name: llm\n  path: /models/refiner\n")
    child = write(tmp_path / "b.yaml", "extends: a.yaml\nrefiner:\n  name: template\n")
    assert load_recipe(child).recipe.refiner.options == {}


def test_set_overrides_coerce_types_and_win(tmp_path):
    path = write(tmp_path / "r.yaml", "train:\n  learning_rate: 1.0e-4\n")
    loaded = load_recipe(path, ["train.learning_rate=2e-5", "data.group_data=true", "data.num_frames=61"])
    assert loaded.recipe.train.learning_rate == pytest.approx(2e-5)
    assert loaded.recipe.data.group_data is True and loaded.recipe.data.num_frames == 61
    assert loaded.origin(("train", "learning_rate")) == "--set train.learning_rate=2e-5"


def test_parse_override_forms():
    assert parse_override("a.b=3") == (("a", "b"), 3)
    assert parse_override("a.b=[1, 2]") == (("a", "b"), [1, 2])
    assert parse_override("a=") == (("a",), "")
    with pytest.raises(ConfigError, match=r"must look like section\.key=value"):
        parse_override("novalue")


@pytest.mark.parametrize(
    ("text", "overrides", "expected"),
    [
        ("train:\n  learnin_rate: 1\n", [], r"r.yaml:2: train.learnin_rate: unknown key; did you mean 'learning_rate'\?"),
        ("train:\n  learning_rate: fast\n", [], r"r.yaml:2: train.learning_rate: input should be a valid number.*'fast'"),
        ("train:\n  lr: [\n", [], r"r.yaml:3:1: YAML syntax error"),
        ("extends: nowhere.yaml\n", [], r"`extends: nowhere.yaml` points to .*nowhere.yaml, which does not exist"),
        ("{}\n", ["train.learnig_rate=1"], r"--set train.learnig_rate=1: train has no key 'learnig_rate'; did you mean 'train.learning_rate'\?"),
        ("{}\n", ["trian.x=1"], r"--set trian.x=1: the recipe has no key 'trian'; did you mean 'train'\?"),
        ("data:\n  drop_short_ratio: 1.5\n", [], r"data.drop_short_ratio: input should be less than or equal to 1, got 1.5"),
        ("data:\n  speed_factor: 0.5\n", [], r"data.speed_factor: input should be greater than or equal to 1"),
        ("data:\n  max_hxw: 1000\n  min_hxw: 2000\n", [], r"r.yaml:2: data.max_hxw: must be >= min_hxw \(2000\), got 1000"),
        ("- a\n- b\n", [], r"a recipe must be a mapping of sections, got list"),
    ],
)
def test_bad_recipes_give_one_clear_sentence(tmp_path, text, overrides, expected):
    path = write(tmp_path / "r.yaml", text)
    with pytest.raises(ConfigError, match=expected) as err:
        load_recipe(path, overrides)
    assert "\n" not in err.value.message
    assert err.value.exit_code == 2


def test_extends_cycle_is_reported(tmp_path):
    write(tmp_path / "a.yaml", "extends: b.yaml\n")
    write(tmp_path / "b.yaml", "extends: a.yaml\n")
    with pytest.raises(ConfigError, match="forms a cycle"):
        load_recipe(tmp_path / "a.yaml")


def test_missing_recipe_file(tmp_path):
    with pytest.raises(ConfigError, match=r"recipe file .*nope.yaml does not exist"):
        load_recipe(tmp_path / "nope.yaml")


def test_min_hxw_defaults_to_a_quarter_and_mode_rule():
    data = load_recipe(None, ["data.max_hxw=262144"]).recipe.data
    assert data.effective_min_hxw == 65536 and data.effective_resolution_mode == "area"
    data = load_recipe(None, ["data.force_resolution=true", "data.max_height=480", "data.max_width=640"]).recipe.data
    assert data.effective_resolution_mode == "force"
    assert load_recipe(None).recipe.data.effective_resolution_mode == "absolute"


def test_fingerprint_is_stable_and_sensitive():
    a = load_recipe(None).fingerprint()
    assert a == load_recipe(None).fingerprint()
    assert a != load_recipe(None, ["train.learning_rate=3e-5"]).fingerprint()


def test_seed_shortcut_sets_train_seed():
    assert load_recipe(None, ["seed=7"]).recipe.train.seed == 7


@pytest.mark.parametrize("recipe_text", [None, "train:\n  max_steps: 3\n"])
def test_set_into_a_missing_component_section_keeps_its_default_name(tmp_path, recipe_text):
    """The README's `osctl sample --model-path M --ae-path V --text-encoder-name-1 T` sets keys of sections the
    recipe does not have; each section starts from its schema default (its plugin name), not from nothing."""
    path = None if recipe_text is None else write(tmp_path / "r.yaml", recipe_text)
    loaded = load_recipe(path, ["model.path=M", "autoencoder.path=V", "text_encoder.name_or_path=T"])
    recipe = loaded.recipe
    assert (recipe.model.name, recipe.autoencoder.name, recipe.text_encoder.name) == ("opensora_v1_3", "wfvae", "t5")
    assert recipe.model.options == {"path": "M"} and recipe.text_encoder.options == {"name_or_path": "T"}
    assert load_recipe(path, ["model.name=other", "model.path=M"]).recipe.model.name == "other"


def test_extends_naming_a_folder_says_so(tmp_path):
    (tmp_path / "base").mkdir()
    child = write(tmp_path / "child.yaml", "extends: base\n")
    with pytest.raises(ConfigError, match=r"`extends: base` points to .*/base, which is a folder; name a recipe file"):
        load_recipe(child)


def test_list_items_have_their_own_line(tmp_path):
    path = write(tmp_path / "r.yaml", "train:\n  trackers:\n  - name: tensorboard\n\n    flush_secs: 3\n")
    loaded = load_recipe(path)
    assert loaded.origin(("train", "trackers", "0")).endswith("r.yaml:3")
    assert loaded.origin(("train", "trackers", "0", "flush_secs")).endswith("r.yaml:5")
